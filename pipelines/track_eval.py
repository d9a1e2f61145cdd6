"""``memstream eval track``: HOTA, MOTA, IDF1 (TrackEval's definitions) of a tracker on MOTChallenge sequences.

Two ways to get the tracks of each sequence with ground truth under ``--data``:

- ``--results DIR``: any tracker's MOTChallenge result files, ``DIR/<seq>.txt`` (or TrackEval's
  ``DIR/data/<seq>.txt``); a sequence without its file is an error, never a silent skip;
- otherwise a tracker is run on the sequence (``--tracker memstream|iou|bytetrack``) through :func:`run_tracker`,
  the one place that calls :func:`memstream.pipelines.track_task.track_sequence`; ``--out`` keeps its result files.

Sequences without ground truth (MOT15's ETH-Sunnyday in the sample data has detections only) are skipped with a
logged warning. The benchmark decides the preprocessing (:mod:`memstream.pipelines.track_metrics`); by default it
is taken from the path (``MOT15``, ``MOT16``, ``MOT20`` when the path names one, else ``MOT17``).
Output: a table (percentages with one decimal as TrackEval prints them, counts as integers), or with ``--json``
one JSON object ``{"benchmark", "sequences": {seq: summary}, "combined": summary}`` and nothing else on stdout;
``--plot`` writes a PNG. A progress bar over sequences goes to stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from memstream.pipelines.mot_data import MotSequence, find_sequences, read_mot_file, read_sequence, write_results
from memstream.pipelines.track_metrics import BENCHMARKS, SequenceScore, combine, evaluate_sequence

log = logging.getLogger(__name__)

TRACKERS = ("memstream", "iou", "bytetrack")
# Table columns: (header, summary key); fractions are printed as percentages.
_PERCENT = (("HOTA", "HOTA"), ("DetA", "DetA"), ("AssA", "AssA"), ("LocA", "LocA"), ("MOTA", "MOTA"),
            ("MOTP", "MOTP"), ("IDF1", "IDF1"), ("IDP", "IDP"), ("IDR", "IDR"), ("Rcll", "Recall"),
            ("Prcn", "Precision"))
_COUNT = (("IDSW", "IDSW"), ("FP", "FP"), ("FN", "FN"), ("Frag", "Frag"), ("MT", "MT"), ("PT", "PT"), ("ML", "ML"),
          ("GT_IDs", "GT_IDs"))


def default_benchmark(path) -> str:
    """The benchmark a data path names (``MOT15``, ``MOT16``, ``MOT20``), else ``MOT17``."""
    text = f"{path} {Path(path).resolve()}".upper()  # the path as given and without links
    return next((b for b in ("MOT15", "MOT16", "MOT20") if b in text), "MOT17")


def load_sequences(data) -> list[MotSequence]:
    """The sequences with ground truth under ``data`` (one sequence folder or a folder of them), sorted."""
    sequences = []
    for folder in find_sequences(data):
        seq = read_sequence(folder)
        if seq.gt is None:
            log.warning("sequence %s has no gt/gt.txt: not evaluated", folder.name)
        else:
            sequences.append(seq)
    if not sequences:
        raise FileNotFoundError(f"no sequence under {data} has ground truth (gt/gt.txt)")
    return sequences


def result_files(folder, sequences: list[MotSequence]) -> dict[str, Path]:
    """``{seq: result file}`` for every sequence: ``folder/<seq>.txt`` or ``folder/data/<seq>.txt``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"results folder not found: {folder}")
    files, missing = {}, []
    for seq in sequences:
        name = seq.path.name
        found = [p for p in (folder / f"{name}.txt", folder / "data" / f"{name}.txt") if p.is_file()]
        if found:
            files[name] = found[0]
        else:
            missing.append(name)
    if missing:
        raise FileNotFoundError(f"no result file for sequence {', '.join(missing)} in {folder} "
                                f"(expected {folder / (missing[0] + '.txt')})")
    return files


def run_tracker(seq: MotSequence, args) -> np.ndarray:
    """Track ``seq`` with ``args.tracker`` (``args.checkpoint``, ``args.backend``, ``args.threads``) -> ``(N, >= 7)``
    rows ``frame, id, x, y, w, h, conf``."""
    try:
        from memstream.pipelines.track_task import track_sequence
    except ImportError as e:
        raise RuntimeError(f"cannot run the {args.tracker} tracker ({e}); evaluate result files with --results") \
            from None
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    return np.asarray(track_sequence(seq, tracker=args.tracker, checkpoint=args.checkpoint, backend=args.backend))


def _progress(total: int):
    """A rich progress bar on stderr when it is a terminal, else ``None``."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("eval track {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    bar.add_task("", total=total)
    bar.start()
    return bar


def score_sequences(sequences: list[MotSequence], tracks: Callable[[MotSequence], np.ndarray], benchmark: str, *,
                    out=None, progress: bool = False) -> dict[str, SequenceScore]:
    """Score ``tracks(seq)`` (``(N, >= 7)`` rows) of every sequence; ``out``: also write them as ``out/<seq>.txt``."""
    scores = {}
    bar = _progress(len(sequences)) if progress else None
    try:
        for seq in sequences:
            name = seq.path.name
            if bar is not None:
                bar.update(bar.task_ids[0], description=name)
            rows = np.asarray(tracks(seq), dtype=np.float64)
            if out is not None:
                rows = read_mot_file(write_results(Path(out) / f"{name}.txt", rows))  # scored as written
            scores[name] = evaluate_sequence(seq.gt, rows, seq.info.length, benchmark, name)
            if bar is not None:
                bar.advance(bar.task_ids[0])
    finally:
        if bar is not None:
            bar.stop()
    return scores


def plot_scores(scores: dict[str, SequenceScore], combined: SequenceScore, path) -> Path:
    """Two panels: HOTA, MOTA, IDF1 per sequence and combined; HOTA, DetA, AssA against the IoU threshold alpha."""
    from memstream.pipelines.figures import pyplot, save_figure

    plt = pyplot()

    names = [*scores, "COMBINED"]
    summaries = [s.summary() for s in (*scores.values(), combined)]
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(8.0, 4.5 + 0.9 * len(names)), 4))
    x = np.arange(len(names))
    for i, (key, colour) in enumerate((("HOTA", "#3b7dd8"), ("MOTA", "#d8843b"), ("IDF1", "#4caf50"))):
        a.bar(x + (i - 1) * 0.27, [100 * s[key] for s in summaries], 0.27, label=key, color=colour)
    a.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    a.set_ylabel("%")
    a.set_ylim(min(0.0, *(100 * s["MOTA"] for s in summaries)), 100)
    a.legend(fontsize=8)
    a.set_title("per sequence")
    curve = combined.hota_alpha_curve()
    for key, style in (("HOTA", "-"), ("DetA", "--"), ("AssA", ":")):
        b.plot(curve["alpha"], 100 * curve[key], style, label=f"{key} {100 * np.mean(curve[key]):.1f}")
    b.set_xlabel("localisation threshold alpha (IoU)")
    b.set_ylim(0, 100)
    b.legend(fontsize=8)
    b.set_title("combined: HOTA family against alpha")
    return save_figure(fig, path)


def format_table(result: dict) -> str:
    """The result of :func:`cli_eval` as text: one row per sequence and ``COMBINED``."""
    rows = [*result["sequences"].items(), ("COMBINED", result["combined"])]
    width = max(len(n) for n, _ in rows)
    header = [f"{'sequence':<{width}}", *(f"{h:>6}" for h, _ in _PERCENT), *(f"{h:>6}" for h, _ in _COUNT)]
    lines = [f"benchmark {result['benchmark']}", "  ".join(header)]
    for name, s in rows:
        lines.append("  ".join([f"{name:<{width}}", *(f"{100 * s[k]:6.1f}" for _, k in _PERCENT),
                                *(f"{s[k]:6d}" for _, k in _COUNT)]))
    return "\n".join(lines)


def cli_eval(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="memstream eval track", description=(
        "HOTA, MOTA and IDF1 (TrackEval's definitions) of a tracker on MOTChallenge sequences with ground truth: "
        "of result files (--results), or of a tracker run here."))
    p.add_argument("--data", required=True, help="a sequence folder or a folder of sequences (gt/gt.txt, seqinfo.ini)")
    p.add_argument("--results", help="folder of MOTChallenge result files <seq>.txt to evaluate (no tracker is run)")
    p.add_argument("--benchmark", choices=BENCHMARKS, help="preprocessing rules (default: from the --data path: "
                                                             "MOT15/MOT16/MOT20 when named, else MOT17)")
    p.add_argument("--tracker", choices=TRACKERS, default="memstream", help="tracker to run without --results")
    p.add_argument("--checkpoint", help="memstream tracker checkpoint folder (default: the bundled one)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    p.add_argument("--threads", type=int, help="torch / ONNX Runtime threads")
    p.add_argument("--out", help="write the tracker's result files <seq>.txt to this folder")
    p.add_argument("--plot", help="write a PNG: HOTA/MOTA/IDF1 per sequence and the HOTA curves against alpha")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    from memstream.pipelines.sinks import to_json

    benchmark = args.benchmark or default_benchmark(args.data)
    sequences = load_sequences(args.data)
    if args.results:
        files = result_files(args.results, sequences)
        scores = score_sequences(sequences, lambda seq: read_mot_file(files[seq.path.name]), benchmark, progress=True)
    else:
        scores = score_sequences(sequences, lambda seq: run_tracker(seq, args), benchmark, out=args.out,
                                 progress=True)
    combined = combine(scores)
    result = {"benchmark": benchmark, "tracker": f"results:{args.results}" if args.results else args.tracker,
              "sequences": {n: s.summary() for n, s in scores.items()}, "combined": combined.summary()}
    if args.plot:
        result["plot"] = str(plot_scores(scores, combined, args.plot))
    if args.json:
        print(to_json(result))
    else:
        print(format_table(result))
        if args.plot:
            print(f"plot: {result['plot']}")
    return 0
