"""``memstream eval asr``: WER/CER (jiwer, normalised text), WER by utterance length, real-time factor, memory.

Every recording is streamed through the backend's step segment by segment, exactly as ``memstream run asr``
does (endpointing included: a long recording is decoded as the utterances the endpointer cuts, joined).
References and hypotheses both go through :func:`memstream.pipelines.speech_data.normalize_text`.
``evaluate_sequences`` is the fast offline variant for the trainer's validation (whole utterances through
``forward_sequence``, greedy decoding; the same numbers as streaming without endpointing).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jiwer
import torch
from memstream.pipelines.asr_lm import add_lm_arguments, lm_from_args
from memstream.pipelines.asr_task import DEFAULT_ENDPOINT, AsrTask, check_onnx_matches, load_asr_model, transcribe
from memstream.pipelines.ctc import greedy_decode
from memstream.pipelines.speech_data import Utterance, load_audio, normalize_text, read_corpus

log = logging.getLogger(__name__)

BUCKETS = ((0, 5), (5, 10), (10, 20), (20, 60), (60, 300), (300, 1200), (1200, float("inf")))  # seconds


def bucket_name(low: float, high: float) -> str:
    return f"{low:g}-{high:g}s" if high != float("inf") else f">={low:g}s"


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> dict:
    """Corpus-level WER and CER of normalised texts; empty references are skipped (jiwer rejects them)."""
    pairs = [(normalize_text(r), normalize_text(h)) for r, h in zip(refs, hyps, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return {"wer": None, "cer": None, "num_utterances": 0}
    r, h = [p[0] for p in pairs], [p[1] for p in pairs]
    return {"wer": round(jiwer.wer(r, h), 4), "cer": round(jiwer.cer(r, h), 4), "num_utterances": len(pairs)}


@torch.no_grad()
def evaluate_sequences(model, utterances: Sequence[Utterance], batch: int = 16) -> dict:
    """Greedy WER/CER of whole utterances through ``forward_sequence`` (no endpointing): the trainer's check."""
    was_training = model.training
    model.eval()
    vocab = list(model.cfg.vocab)
    refs, hyps = [], []
    ordered = sorted(utterances, key=lambda u: u.duration or 0.0)
    for i in range(0, len(ordered), batch):
        group = ordered[i:i + batch]
        clips = [load_audio(u.path, model.cfg.sample_rate) for u in group]
        audio = torch.zeros(len(clips), max(len(c) for c in clips))
        for row, c in enumerate(clips):
            audio[row, :len(c)] = torch.from_numpy(c)
        device = next(model.parameters()).device
        lengths = torch.tensor([len(c) for c in clips], device=device)
        log_probs, valid = model.forward_sequence(audio.to(device), lengths)
        log_probs, valid = log_probs.cpu(), valid.cpu()
        for row, u in enumerate(group):
            hyps.append(greedy_decode(log_probs[row, :int(valid[row].sum())].numpy(), vocab))
            refs.append(u.text)
    model.train(was_training)
    return error_rates(refs, hyps)


def evaluate(backend, task: AsrTask, utterances: Sequence[Utterance], *, progress: bool = False,
             keep: bool = False) -> dict:
    """Stream every utterance through ``backend``; WER/CER overall and per length bucket, RTF, peak RSS.

    ``keep``: also return each utterance's reference and hypothesis (``utterances`` entry).
    """
    if not utterances:
        raise ValueError("evaluate: no utterances")
    refs, hyps, durations, rows = [], [], [], []
    compute = 0.0
    bar = _progress(len(utterances)) if progress else None
    for u in utterances:
        audio = load_audio(u.path, int(task.rate))
        start = time.perf_counter()
        result = transcribe(backend, audio, task)
        compute += time.perf_counter() - start
        refs.append(u.text)
        hyps.append(result["text"])
        durations.append(len(audio) / task.rate)
        if keep:
            rows.append({"id": u.id, "seconds": round(durations[-1], 2), "reference": normalize_text(u.text),
                         "hypothesis": normalize_text(result["text"])})
        if bar is not None:
            bar[0].advance(bar[1])
    if bar is not None:
        bar[0].stop()
    audio_seconds = float(sum(durations))
    out = {**error_rates(refs, hyps), "rtf": round(compute / audio_seconds, 5),
           "audio_seconds": round(audio_seconds, 2), "peak_rss_mb": round(_peak_rss_mb(), 1)}
    buckets = {}
    for low, high in BUCKETS:
        picked = [i for i, d in enumerate(durations) if low <= d < high]
        if picked:
            rates = error_rates([refs[i] for i in picked], [hyps[i] for i in picked])
            buckets[bucket_name(low, high)] = {"wer": rates["wer"], "num_utterances": len(picked),
                                               "audio_seconds": round(sum(durations[i] for i in picked), 2)}
    out["wer_by_length"] = buckets
    if keep:
        out["utterances"] = rows
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _progress(total: int):
    from rich.progress import Progress

    bar = Progress(transient=True)
    bar.start()
    return bar, bar.add_task("eval asr", total=total)


def plot_wer_by_length(result: dict, path: str | Path, title: str = "WER by utterance length") -> Path:
    """A PNG bar chart of ``result["wer_by_length"]`` (WER per bucket, utterance counts on the bars)."""
    from memstream.pipelines.figures import pyplot, save_figure

    plt = pyplot()

    buckets = result["wer_by_length"]
    names = list(buckets)
    wers = [100.0 * (buckets[n]["wer"] or 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    bars = ax.bar(names, wers, color="#4477aa")
    for bar, n in zip(bars, names, strict=True):
        ax.annotate(f"n={buckets[n]['num_utterances']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("utterance length")
    ax.set_ylabel("WER (%)")
    ax.set_title(f"{title} (overall {100.0 * (result['wer'] or 0.0):.1f}%)")
    return save_figure(fig, path, dpi="figure")


def backend_for(model, kind: str, onnx_path: str | None = None, threads: int | None = None, device: str = "cpu"):
    """``torch`` or ``onnx`` (exported to a temporary file unless ``onnx_path`` is given; a given graph must
    match ``model``'s vocabulary, segment and frame timing, which the task decodes with) on ``device``."""
    from memstream.pipelines.asr import export_asr
    from memstream.pipelines.launch import model_backend

    return model_backend(model, kind, export=export_asr, check=check_onnx_matches, onnx_path=onnx_path,
                         threads=threads, device=device)


def cli_eval(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="memstream eval asr", description=(
        "Stream a corpus (LibriSpeech layout or audio + transcripts.tsv) through the ASR model: WER/CER, WER "
        "by utterance length, real-time factor, peak memory."))
    p.add_argument("--data", required=True, help="corpus folder")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the bundled asr-small)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    p.add_argument("--onnx", help="with --backend onnx: an exported step to use instead of exporting")
    p.add_argument("--method", choices=("greedy", "beam"), default="greedy")
    p.add_argument("--beam", type=int, default=8)
    add_lm_arguments(p)
    p.add_argument("--no-endpoint", action="store_true", help="decode each recording as one utterance")
    p.add_argument("--limit", type=int, help="only the first N utterances")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu",
                   help="torch device of the model step, e.g. cuda; with --backend onnx, anything but cpu picks the "
                        "best provider ONNX Runtime has (default cpu). Decoding stays on the CPU")
    p.add_argument("--plot", help="write a PNG of WER against utterance length here")
    p.add_argument("--json", action="store_true", help="print one JSON object (default: a short report)")
    p.add_argument("--details", help="write per-utterance reference/hypothesis JSON Lines here")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit}: must be >= 1")
    if args.threads < 1:
        raise ValueError(f"--threads {args.threads}: must be >= 1")
    if args.onnx and args.backend != "onnx":
        raise ValueError("--onnx FILE needs --backend onnx")
    torch.set_num_threads(args.threads)
    utterances = read_corpus(args.data)[: args.limit]
    model, _ = load_asr_model(args.checkpoint)
    lm = lm_from_args(args)
    method = "lm" if lm else args.method
    task = AsrTask(model, method=method, beam=args.beam, endpoint=None if args.no_endpoint else DEFAULT_ENDPOINT,
                   lm=lm)
    backend = backend_for(model, args.backend, args.onnx, args.threads, args.device)
    result = evaluate(backend, task, utterances, progress=sys.stderr.isatty(), keep=bool(args.details))
    result.update({"backend": args.backend, "method": method, "device": args.device})
    if lm:
        result["lm"] = {"path": lm.path, "weight": lm.weight, "word_score": lm.word_score, "beam": lm.beam}
    if args.details:
        with open(args.details, "w", encoding="utf-8") as f:
            for row in result.pop("utterances"):
                f.write(json.dumps(row) + "\n")
    if args.plot:
        result["plot"] = str(plot_wer_by_length(result, args.plot))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"WER {100 * (result['wer'] or 0):.2f}%  CER {100 * (result['cer'] or 0):.2f}%  on "
              f"{result['num_utterances']} utterances ({result['audio_seconds'] / 60:.1f} min), RTF {result['rtf']}, "
              f"peak RSS {result['peak_rss_mb']} MB")
        for name, row in result["wer_by_length"].items():
            print(f"  {name:>10}: WER {100 * (row['wer'] or 0):6.2f}%  ({row['num_utterances']} utterances)")
    return 0

