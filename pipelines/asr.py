"""Speech recognition commands: ``memstream train asr``, ``export asr`` and ``run asr``.

Training (:class:`AsrObjective` for :func:`memstream.pipelines.train.train`): whole utterances through
``forward_sequence`` (numerically the streaming path, segment size as at inference), optional vocal tract
length perturbation (VTLP: each utterance's filterbank frequencies scaled by a random factor, so formants
move as between speakers), SpecAugment on the normalised features (torchaudio's iid masks), CTC loss. The
feature normalisation statistics are measured on the training corpus before the first step and saved with
the weights. Evaluation lives in :mod:`memstream.pipelines.asr_eval`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from memstream.memory import MEMORY_TYPES
from memstream.models import build, list_models
from memstream.models.asr import SUBSAMPLING, AsrModel
from memstream.models.checkpoint import load_weights, read_config
from memstream.pipelines.asr_lm import add_lm_arguments, lm_from_args
from memstream.pipelines.asr_task import (
    DEFAULT_ENDPOINT,
    MODEL_KIND,
    AsrTask,
    TranscriptLineSink,
    bundled_asr_dir,
    export_metadata,
    load_asr_model,
)
from memstream.pipelines.speech_data import (
    BucketBatchSampler,
    Utterance,
    collate,
    encode_text,
    load_audio,
    normalize_text,
    read_corpus,
)
from torch import Tensor

log = logging.getLogger(__name__)


def warped_mel_filters(model: AsrModel, alphas: Tensor) -> Tensor:
    """The model's HTK mel filters with every frequency scaled by ``alpha``: (A,) -> (A, bins, n_mels).

    Filter ``m`` evaluated at ``alpha * f`` (its corners move to ``corner / alpha``), so a spectrum whose
    formants sit ``alpha`` times higher gives the features the unwarped filters give the original: the warp of
    Jaitly & Hinton's VTLP, applied to the filterbank instead of resampling the spectrum. ``alpha = 1`` gives
    torchaudio's ``melscale_fbanks`` (what the model uses).
    """
    cfg = model.cfg
    freqs = torch.linspace(0, cfg.sample_rate // 2, cfg.n_fft // 2 + 1, dtype=torch.float64)
    mel_lo, mel_hi = (2595.0 * math.log10(1.0 + f / 700.0) for f in (cfg.f_min, cfg.f_max))
    corners = 700.0 * (10 ** (torch.linspace(mel_lo, mel_hi, cfg.n_mels + 2, dtype=torch.float64) / 2595.0) - 1.0)
    corners = corners / alphas.double().cpu().unsqueeze(1)  # (A, n_mels + 2)
    lo, mid, hi = corners[:, None, :-2], corners[:, None, 1:-1], corners[:, None, 2:]
    f = freqs[None, :, None]
    rising, falling = (f - lo) / (mid - lo), (hi - f) / (hi - mid)
    return torch.minimum(rising, falling).clamp(min=0.0).float()


def warped_features(model: AsrModel, audio: Tensor, alphas: Tensor) -> Tensor:
    """audio: (B, N) (a whole number of segments), alphas: (B,) -> normalised log-mel (B, N / hop, n_mels) with
    each utterance's filterbank warped by its alpha (see :func:`warped_mel_filters`)."""
    logmel = model.features
    re, im = (model.frames(audio) @ logmel.basis).chunk(2, dim=-1)
    mel = warped_mel_filters(model, alphas).to(audio.device)
    return (torch.log(torch.bmm(re * re + im * im, mel) + 1e-6) - logmel.mean) / logmel.std


def ctc_frames_needed(ids: Sequence[int]) -> int:
    """Output frames a CTC alignment of ``ids`` needs: one per label plus a blank between repeats."""
    return len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))


class AsrObjective:
    """CTC on whole utterances of ``utterances`` (see the module docstring); audio decoded once and cached.

    Targets are ids in the model's own vocabulary. Utterances whose text cannot be aligned to their frames
    (speech faster than one character per 40 ms frame) are left out with a warning: CTC would give them an
    infinite loss (``skipped_too_fast`` counts them).

    Args:
        max_batch_seconds: padded audio per batch (batch size x longest utterance), seconds.
        freq_masks, freq_width, time_masks, time_width: SpecAugment (masks per utterance, widest mask in mel
            bins / feature frames); 0 masks turn it off.
        vtlp: each training utterance's frequencies are scaled by a factor drawn uniformly from
            [1 - vtlp, 1 + vtlp] (0 turns it off; 0.1 is the usual range).
    """

    def __init__(self, model: AsrModel, utterances: Sequence[Utterance], *, max_batch_seconds: float = 160.0,
                 freq_masks: int = 2, freq_width: int = 15, time_masks: int = 2, time_width: int = 40,
                 extra_config: dict | None = None, cache_audio: bool = True, vtlp: float = 0.0) -> None:
        if not max_batch_seconds > 0:
            raise ValueError(f"AsrObjective: max_batch_seconds={max_batch_seconds} must be positive")
        if not 0.0 <= vtlp < 0.5:
            raise ValueError(f"AsrObjective: vtlp={vtlp} must be in [0, 0.5)")
        self.vtlp = vtlp
        self.model_cfg = cfg = model.cfg
        samples_per_frame = cfg.segment_samples // cfg.core.segment
        kept, self.targets = [], []
        for u in utterances:
            ids = encode_text(normalize_text(u.text), cfg.vocab)
            frames = -(-round((u.duration or 0.0) * cfg.sample_rate) // samples_per_frame)
            if ids and ctc_frames_needed(ids) <= frames:
                kept.append(u)
                self.targets.append(ids)
        self.skipped_too_fast = len(utterances) - len(kept)
        if self.skipped_too_fast:
            log.warning("AsrObjective: %d of %d utterances left out: empty text, or more characters than %d ms "
                        "frames", self.skipped_too_fast, len(utterances), 1000 * samples_per_frame // cfg.sample_rate)
        if not kept:
            raise ValueError("AsrObjective: no training utterances")
        self.utterances = kept
        self.durations = [float(u.duration or 0.0) for u in kept]
        self.max_batch_seconds = max_batch_seconds
        self.spec = (freq_masks, freq_width, time_masks, time_width)
        self.extra_config = extra_config or {}
        self.cache_audio = cache_audio
        self._audio: dict[int, np.ndarray] = {}

    def audio(self, i: int) -> np.ndarray:
        """Utterance ``i`` as int16, kept after the first decode when ``cache_audio`` (0.9 GB for 15 h of
        audio at 16 kHz: turn it off for corpora that do not fit in RAM)."""
        if i in self._audio:
            return self._audio[i]
        x = load_audio(self.utterances[i].path, self.model_cfg.sample_rate)
        x = np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)
        if self.cache_audio:
            self._audio[i] = x
        return x

    def batches(self, rank: int, world: int, seed: int, epoch: int) -> Iterator[tuple[Tensor, ...]]:
        sampler = BucketBatchSampler(self.durations, self.max_batch_seconds, rank=rank, world=world, seed=seed)
        sampler.set_epoch(epoch)
        for indices in sampler:
            yield collate([(torch.from_numpy(self.audio(i).astype(np.float32) / 32768.0),
                            torch.tensor(self.targets[i], dtype=torch.long)) for i in indices])

    def windows(self, batch) -> int:
        return 1

    def init_state(self, model, batch) -> None:
        return None

    def augment(self, feats: Tensor) -> Tensor:
        """SpecAugment: feats (B, F, M) -> same, masked bands set to 0 (the normalised mean)."""
        freq_masks, freq_width, time_masks, time_width = self.spec
        x = feats.transpose(1, 2).unsqueeze(1)  # (B, 1, M, F): torchaudio's (batch, channel, freq, time)
        for _ in range(freq_masks):
            x = torchaudio.functional.mask_along_axis_iid(x, freq_width, 0.0, 2)
        for _ in range(time_masks):
            x = torchaudio.functional.mask_along_axis_iid(x, min(time_width, x.shape[-1] // 5), 0.0, 3, p=0.2)
        return x.squeeze(1).transpose(1, 2)

    def loss(self, model: AsrModel, batch, window: int, state) -> tuple[Tensor, None, dict[str, float]]:
        device = next(model.parameters()).device
        audio, lengths, targets, target_lengths = (t.to(device) for t in batch)
        if model.training and self.vtlp:
            alphas = 1.0 + self.vtlp * (2.0 * torch.rand(len(lengths)) - 1.0)
            feats = warped_features(model, model.pad(audio), alphas)
        else:
            feats = model.features_sequence(model.pad(audio))
        if model.training:
            feats = self.augment(feats)
        mask = model.token_mask(lengths, feats.shape[1] // SUBSAMPLING)
        log_probs = model.encode(feats, mask)
        loss = F.ctc_loss(log_probs.transpose(0, 1), targets, mask.sum(1), target_lengths, blank=0,
                          reduction="mean", zero_infinity=True)
        return loss, None, {"samples": float(len(lengths)),
                            "audio_seconds": float(lengths.sum()) / self.model_cfg.sample_rate}

    def checkpoint_config(self) -> dict:
        return {"model": MODEL_KIND, "config": self.model_cfg.to_dict(), "vocabulary": list(self.model_cfg.vocab),
                **self.extra_config}


def corpus_fingerprint(utterances: Sequence[Utterance]) -> str:
    """SHA-256 of the utterance ids, texts and durations: what a resumed run must see again."""
    import hashlib

    h = hashlib.sha256()
    for u in utterances:
        h.update(f"{u.id}\t{u.text}\t{u.duration or 0.0:.3f}\n".encode())
    return h.hexdigest()


@torch.no_grad()
def feature_stats(model: AsrModel, objective: AsrObjective, utterances: int = 400,
                  seed: int = 0) -> tuple[Tensor, Tensor]:
    """Mean and std of the raw log-mel features over a sample of the training utterances: (n_mels,) each."""
    g = np.random.default_rng(seed)
    picks = g.choice(len(objective.utterances), size=min(utterances, len(objective.utterances)), replace=False)
    total, total_sq, count = 0.0, 0.0, 0
    device = next(model.parameters()).device
    for i in picks.tolist():
        x = torch.from_numpy(objective.audio(i).astype(np.float32) / 32768.0).unsqueeze(0).to(device)
        raw = model.features.raw(model.frames(x))[0].double()
        total, total_sq, count = total + raw.sum(0), total_sq + (raw * raw).sum(0), count + raw.shape[0]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp(min=1e-6).sqrt()
    return mean.float(), std.float()


def init_weights(model: AsrModel, checkpoint: str | Path) -> None:
    """Warm start: load a checkpoint's weights (with its feature statistics) into ``model``, whose configuration
    must be the checkpoint's (dropout may differ)."""
    config = read_config(checkpoint)
    if config.get("model") != MODEL_KIND:
        raise ValueError(f"--init {checkpoint}: model kind {config.get('model')!r} is not {MODEL_KIND!r}")
    ours, theirs = model.cfg.to_dict(), config.get("config", {})
    diff = [f"{k}={theirs.get(k)!r} (here {v!r})" for k, v in ours.items() if k != "core" and theirs.get(k) != v]
    core = theirs.get("core", {})
    diff += [f"core.{k}={core.get(k)!r} (here {v!r})" for k, v in ours["core"].items()
             if k != "dropout" and core.get(k) != v]
    if diff:
        raise ValueError(f"--init {checkpoint}: its configuration differs from this run's: {', '.join(diff)}; "
                         f"pick the checkpoint's --preset and --memory")
    load_weights(checkpoint, model)
    log.info("warm start from %s (preset %s)", checkpoint, config.get("preset"))


def cli_train(argv: list[str]) -> int:
    from memstream.pipelines.asr_eval import evaluate_sequences
    from memstream.pipelines.train import TrainConfig, check_resume_data, train

    p = argparse.ArgumentParser(prog="memstream train asr", description=(
        "Train a streaming CTC speech recogniser on a LibriSpeech-layout corpus (or audio + transcripts.tsv). "
        "Multi-process: torchrun --nproc_per_node N -m memstream.pipelines.cli train asr ..."))
    p.add_argument("--data", required=True, help="training corpus folder (e.g. the train/ split of synth-speech)")
    p.add_argument("--dev", help="validation corpus folder: greedy WER logged at --eval-every and at the end")
    p.add_argument("--preset", default="asr-small", choices=[m for m in list_models() if m.startswith("asr-")])
    p.add_argument("--memory", choices=MEMORY_TYPES, help="memory type, overriding the preset's")
    p.add_argument("--full-context", action="store_true",
                   help="the full-attention baseline: attends over whole utterances, no memory, no streaming")
    p.add_argument("--out", required=True, help="output folder: checkpoint, train_log.jsonl, trainer state")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps (default 3000)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-seconds", type=float, default=160.0, help="padded audio seconds per batch")
    p.add_argument("--max-utterance-seconds", type=float, default=20.0, help="skip longer training utterances")
    p.add_argument("--eval-every", type=int, default=0, help="steps between dev evaluations (needs --dev)")
    p.add_argument("--dev-limit", type=int, default=200, help="dev utterances used for the logged WER")
    p.add_argument("--log-every", type=int, default=50, help="steps per train_log.jsonl record")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (default: torch's)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start afresh even if --out holds a checkpoint")
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="warm start: weights and feature statistics from a checkpoint of the same configuration (a "
                        "fresh optimiser and schedule; to continue an interrupted run, train into its --out instead)")
    p.add_argument("--no-specaugment", action="store_true")
    p.add_argument("--vtlp", type=float, default=0.0,
                   help="vocal tract length perturbation: scale each utterance's frequencies by a random factor in "
                        "[1 - VTLP, 1 + VTLP] (default 0: off; 0.1 is usual)")
    p.add_argument("--no-cache", action="store_true",
                   help="decode the audio for every batch instead of keeping the corpus in RAM (large corpora)")
    args = p.parse_args(argv)
    for flag, value in (("--batch-seconds", args.batch_seconds), ("--max-utterance-seconds",
                                                                   args.max_utterance_seconds),
                        ("--dev-limit", args.dev_limit)):
        if not value > 0:
            raise ValueError(f"{flag} {value}: must be positive")
    if args.eval_every and not args.dev:
        raise ValueError("--eval-every needs --dev (the corpus to evaluate)")
    torch.manual_seed(args.seed)
    overrides = {"memory": args.memory} if args.memory else {}
    if args.full_context:
        if args.memory not in (None, "none"):
            raise ValueError(f"--full-context has no memory; drop --memory {args.memory}")
        overrides = {"memory": "none", "full_context": True}
    model = build(args.preset, **overrides)
    if args.init:
        init_weights(model, args.init)
    model = model.to(args.device)
    corpus = read_corpus(args.data)
    utterances = [u for u in corpus if (u.duration or 0) <= args.max_utterance_seconds]
    if not utterances:
        raise ValueError(f"{args.data}: none of its {len(corpus)} utterances is within --max-utterance-seconds "
                         f"{args.max_utterance_seconds}")
    dev = read_corpus(args.dev)[: args.dev_limit] if args.dev else None
    command = "memstream train asr " + " ".join(argv)
    spec = {"freq_masks": 0, "time_masks": 0} if args.no_specaugment else {}
    fingerprint = corpus_fingerprint(utterances)
    resuming = check_resume_data(args.out, fingerprint, not args.no_resume, "corpus_fingerprint",
                                 "was trained on another corpus (or --max-utterance-seconds); resuming would "
                                 "change the batch order: use a new --out or --no-resume")
    objective = AsrObjective(model, utterances, max_batch_seconds=args.batch_seconds,
                             extra_config={"preset": args.preset, "command": command, "corpus_fingerprint": fingerprint,
                                           "corpus": str(Path(args.data).resolve())},
                             cache_audio=not args.no_cache, vtlp=args.vtlp, **spec)
    if not resuming and not args.init:  # a resumed or warm-started run has the statistics with its weights
        start = time.perf_counter()
        mean, std = feature_stats(model, objective)
        model.features.mean.copy_(mean)
        model.features.std.copy_(std)
        log.info("feature statistics from the corpus in %.1f s", time.perf_counter() - start)
    cfg = TrainConfig(steps=args.steps, lr=args.lr, eval_every=args.eval_every, seed=args.seed, threads=args.threads,
                      log_every=args.log_every, checkpoint_every=max(100, args.steps // 10))
    evaluate = (lambda m: evaluate_sequences(m, dev)) if dev else None
    summary = train(model, objective, cfg, args.out, resume=not args.no_resume, evaluate=evaluate)
    summary.update(utterances=len(objective.utterances), skipped_too_fast=objective.skipped_too_fast,
                   skipped_too_long=len(corpus) - len(utterances),
                   hours=round(sum(objective.durations) / 3600, 3))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary
        print(json.dumps(summary))
    return 0


def cli_export(argv: list[str]) -> int:
    from memstream.export import DEFAULT_OPSET, FALLBACK_OPSET

    p = argparse.ArgumentParser(prog="memstream export asr", description=(
        "Export the ASR step (16 kHz samples + state -> CTC log-probs + state) to one ONNX graph."))
    p.add_argument("--checkpoint", help="checkpoint folder (default: the bundled asr-small)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, choices=(DEFAULT_OPSET, FALLBACK_OPSET))
    args = p.parse_args(argv)
    model, _ = load_asr_model(args.checkpoint)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    proto = export_asr(model, out, opset=args.opset)
    print(json.dumps({"onnx": str(out), "opset": args.opset, "segment_samples": model.cfg.segment_samples,
                      "inputs": [i.name for i in proto.graph.input], "outputs": [o.name for o in proto.graph.output],
                      "bytes": out.stat().st_size}))
    return 0


def export_asr(model: AsrModel, path: str | Path, opset: int | None = None):
    """The ASR step as one ONNX graph (samples + state -> CTC log-probs + state) with the metadata a runtime
    and a decoder need (sample rate, segment, frame timing, vocabulary). Returns the ONNX model proto."""
    from memstream.export import DEFAULT_OPSET, export_step

    return export_step(model, path, torch.zeros(2, model.cfg.segment_samples), opset=opset or DEFAULT_OPSET,
                       metadata=export_metadata(model))


RUN_EXAMPLES = """\
examples:
  memstream run asr                                     # the bundled model on the bundled sample
  memstream run asr --source talk.flac --out runs/talk  # words with times in runs/talk/events.jsonl
  memstream run asr --source mic --method beam          # live microphone, prefix beam search
  arecord -f S16_LE -r 16000 -c 1 | memstream run asr --source - --rate 16000 --channels 1 --format s16le
"""


def bundled_sample() -> Path:
    return bundled_asr_dir() / "sample.flac"


def cli_run(argv: list[str]) -> int:
    from memstream.pipelines.launch import add_run_arguments, run_from_args, specs_from_args

    p = argparse.ArgumentParser(prog="memstream run asr", formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=RUN_EXAMPLES, description=(
                                    "Streaming speech recognition: the live transcript on one rewritten line "
                                    "(stderr), words with times as JSON Lines (stdout or --out)."))
    add_run_arguments(p)
    p.add_argument("--checkpoint", help="checkpoint folder (default: the bundled asr-small)")
    p.add_argument("--method", choices=("greedy", "beam"), default="greedy", help="CTC decoding (default greedy)")
    p.add_argument("--beam", type=int, default=8)
    add_lm_arguments(p)
    p.add_argument("--no-endpoint", action="store_true",
                   help="finalise only at the end of the stream (for files: the open utterance, its memory and "
                        "each partial event grow with the stream, so a live source needs endpointing)")
    p.add_argument("--quiet", action="store_true", help="no live transcript line")
    args = p.parse_args(argv)
    if not args.source and not args.streams:
        args.source = [str(bundled_sample())]
    specs = specs_from_args(args)
    lm = lm_from_args(args)
    task = AsrTask(checkpoint=args.checkpoint, method="lm" if lm else args.method, beam=args.beam,
                   endpoint=None if args.no_endpoint else DEFAULT_ENDPOINT, lm=lm)
    sinks = [] if args.quiet or args.view else [TranscriptLineSink(sys.stderr)]
    return run_from_args(task, specs, args, extra_sinks=sinks)

