"""`memstream data inspect`: what memstream's sources see in a file, folder, device or URL.

Like ffprobe through the same sources the runtime uses: kind, native rate, channels, frame size, the
packets and items actually decoded, timestamps, drops and skips. Task issues add their data generators
and converters next to it (`memstream data synth-*`).
"""

from __future__ import annotations

import argparse
import json
import time


def cli_inspect(argv: list[str]) -> int:
    from memstream.pipelines.launch import guess_kind
    from memstream.pipelines.sources import open_source

    p = argparse.ArgumentParser(prog="memstream data inspect",
                                description="Decode a source with memstream's own sources and report what it holds.")
    p.add_argument("source", help="file, image folder, URL, camera index, mic, or - (raw PCM on stdin)")
    p.add_argument("--kind", choices=("audio", "video"), help="media to read (default: guessed from the source)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this much stream time (live sources)")
    p.add_argument("--rate", type=float, help="stdin/mic sample rate, or an image folder's frame rate")
    p.add_argument("--channels", type=int, help="stdin/mic channels")
    p.add_argument("--format", help="stdin sample format: s16le, s32le, f32le, u8")
    args = p.parse_args(argv)
    kind = args.kind or guess_kind(args.source)
    if kind is None:
        raise ValueError(f"{args.source}: cannot tell audio from video; pass --kind audio|video")
    options = {k: v for k, v in (("rate", args.rate), ("channels", args.channels), ("format", args.format)) if v}
    source = open_source(args.source, kind, **options)
    start = time.perf_counter()
    first = last = None
    with source:
        info = source.info
        for packet in source:
            first = packet.time if first is None else first
            last = packet.time
            if args.seconds is not None and packet.time - first >= args.seconds:
                break
    stats = source.stats
    items_per_second = info.rate if info.rate else None
    print(json.dumps({
        "source": str(args.source), "kind": info.kind, "rate": info.rate, "channels": info.channels,
        "size": list(info.size) if info.size else None, "live": info.live, "duration": info.duration,
        "packets": stats.packets, "items": stats.items,
        "decoded_seconds": round(stats.items / items_per_second, 4) if items_per_second else None,
        "first_time": first, "last_time": last, "dropped": stats.dropped, "duplicated": stats.duplicated,
        "reconnects": stats.reconnects, "skipped": stats.skipped, "errors": stats.errors,
        "wall_seconds": round(time.perf_counter() - start, 3),
    }))
    return 0


def cli_longform(argv: list[str]) -> int:
    """``memstream data longform``: a corpus' chapters concatenated into long recordings (LibriSpeech layout)."""
    from pathlib import Path

    from memstream.pipelines.speech_data import longform_recordings, read_corpus, write_longform

    p = argparse.ArgumentParser(prog="memstream data longform", description=(
        "Concatenate the utterances of each chapter of a corpus (LibriSpeech layout, e.g. test-clean) into "
        "long-form recordings with their joined transcripts, written in the same layout plus segments.tsv."))
    p.add_argument("--data", required=True, help="corpus folder (LibriSpeech layout or audio + transcripts.tsv)")
    p.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    p.add_argument("--minutes", type=float, nargs=2, default=(5.0, 20.0), metavar=("MIN", "MAX"),
                   help="recording length range (default 5 20)")
    p.add_argument("--gap", type=float, default=0.25, help="silence between utterances, seconds (default 0.25)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty folder")
    recordings = longform_recordings(read_corpus(args.data), args.minutes[0] * 60, args.minutes[1] * 60, args.gap)
    if not recordings:
        raise ValueError(f"{args.data}: no chapter holds {args.minutes[0]:g}+ minutes of speech; lower --minutes")
    written = write_longform(recordings, out)
    print(json.dumps({"recordings": len(written), "minutes": round(sum(u.duration for u in written) / 60, 1),
                      "out": str(out)}))
    return 0
