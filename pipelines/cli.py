"""The ``memstream`` command line: ``memstream <command> <task> [options]``.

Each command keeps a table of tasks; a task's handler parses its own options (``argparse``) and
returns an exit code. Errors a user can fix (missing file, bad value) end in one line naming the
problem and exit code 2; ``MEMSTREAM_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Callable

Handler = Callable[[list[str]], int]

EXAMPLES = """\
examples:
  memstream demo                                  # bundled ASR model on bundled speech, then memory recall
  memstream run asr --source talk.flac --out runs/talk        # live transcript; words with times in JSONL
  memstream eval asr --data corpus/test --json --plot wer.png # WER/CER, WER by length, RTF
  memstream train asr --data corpus/train --dev corpus/dev --out runs/asr
  memstream export asr --out asr.onnx                         # samples + state -> CTC log-probs + state
  memstream run core --source talk.wav --out runs/probe      # events.jsonl + summary.json (latency, RTF)
  memstream run core --source 0 --source rtsp://cam/1 --view # two live video streams, batched, live view
  memstream run core --streams cams.streams --backend onnx --max-streams 16 --out runs/cams
  arecord -f S16_LE -r 16000 -c 1 | memstream run core --source - --rate 16000 --channels 1 --format s16le
  memstream export core --preset core-small --memory queue --out core.onnx
  memstream export core --config my_core.json --opset 18 --out core_op18.onnx
  memstream bench core                            # streaming cost vs growing KV cache, Emformer, ONNX Runtime
  memstream bench recall                          # train every memory type on associative recall
  memstream train recall --memory queue --out runs/recall-queue
  memstream eval recall --checkpoint runs/recall-queue
  memstream data inspect clip.mp4                 # what the sources decode: rate, size, frames, drops
  memstream data synth-speech --out data/synth --hours 6 --jobs 8   # espeak-ng corpus, LibriSpeech layout
  memstream data asr-lm --data data/synth/train --out data/lm       # lexicon + 3-gram for `--lm data/lm`
  memstream data synth-actions --out data/actions --jobs 2   # rendered action videos + ActivityNet-style JSON
  memstream run action --source match.mp4 --overlay overlay.mp4   # action events while the video plays
  memstream train action --data data/actions --out runs/action
  memstream eval action --data data/actions --json --plot action.png   # mAP@tIoU, per-frame mAP, latency
  memstream data synth-tracks --out data/tracks        # rendered scenes, MOTChallenge layout, re-entries
  memstream run track --source street.mp4 --overlay tracks.mp4   # boxes with ids that survive occlusions
  memstream train track --data data/tracks --out runs/track
  memstream eval track --data MOT15 --results sort_results/ --json   # HOTA/MOTA/IDF1 of any tracker's files
  memstream data synth-defects --out data/defects   # textures/objects with defects (MVTec layout) + videos
  memstream train anomaly --data data/defects --category nut --out runs/nut   # normal images only
  memstream run anomaly --source cam.mp4 --overlay heat.mp4   # score + heat map per frame, calibrated threshold
  memstream data longform --data LibriSpeech/test-clean --out test-clean-long   # chapters -> 5-20 min recordings

Run `memstream <command> <task> --help` for a task's options.
"""

# Shown under a task's own --help, beside the lines of EXAMPLES that start with the same command and task.
MORE_EXAMPLES = """\
  memstream eval anomaly --data data/defects --checkpoint runs/nut --json --plot roc.png   # AUROC, PRO, F1
  memstream export action --checkpoint runs/action --out action.onnx --opset 18
  memstream export track --checkpoint runs/track --out track.onnx --public   # public detections as an input
  memstream export anomaly --checkpoint runs/nut --out nut.onnx
  memstream bench asr --data data/synth --lm data/lm    # WER short vs long-form, vs no memory, RTF, RSS
  memstream bench action --data data/actions --skip speed
  memstream bench track --data data/tracks --realdata ../shared/realdata   # vs IoU/SORT-style trackers
  memstream bench anomaly --data data/defects --skip video
"""


def _recall(name: str) -> Handler:
    def handler(argv: list[str]) -> int:
        from memstream.pipelines import recall

        return getattr(recall, name)(argv)

    return handler


def _run(module: str, name: str = "cli_run") -> Handler:
    def handler(argv: list[str]) -> int:
        import importlib

        return getattr(importlib.import_module(f"memstream.pipelines.{module}"), name)(argv)

    return handler


def _core(name: str) -> Handler:
    def handler(argv: list[str]) -> int:
        from memstream.pipelines import core_tools

        return getattr(core_tools, name)(argv)

    return handler


COMMANDS: dict[str, tuple[str, dict[str, Handler]]] = {
    "demo": ("run the demo on bundled models and media", {"": _run("demo", "cli_demo")}),
    "run": ("run a task on live or recorded streams",
            {"asr": _run("asr"), "action": _run("action"), "track": _run("track"), "anomaly": _run("anomaly_task"),
             "core": _run("core_task")}),
    "eval": ("evaluate a model, print its metrics",
             {"asr": _run("asr_eval", "cli_eval"), "action": _run("action_eval", "cli_eval"),
              "track": _run("track_eval", "cli_eval"), "anomaly": _run("anomaly_eval", "cli_eval"),
              "recall": _recall("cli_eval")}),
    "train": ("train a model and write a checkpoint",
              {"asr": _run("asr", "cli_train"), "action": _run("action", "cli_train"),
               "track": _run("track", "cli_train"), "anomaly": _run("anomaly", "cli_train"),
               "recall": _recall("cli_train")}),
    "export": ("export a model's streaming step to ONNX",
               {"asr": _run("asr", "cli_export"), "action": _run("action", "cli_export"),
                "track": _run("track", "cli_export"), "anomaly": _run("anomaly_task", "cli_export"),
                "core": _core("cli_export")}),
    "bench": ("measure speed and accuracy, print one JSON object",
              {"asr": _run("asr_bench", "cli_bench"), "action": _run("action_bench", "cli_bench"),
               "track": _run("track_bench", "cli_bench"), "anomaly": _run("anomaly_bench", "cli_bench"),
               "core": _core("cli_bench"), "recall": _recall("cli_bench")}),
    "data": ("make or inspect data", {"inspect": _run("data_tools", "cli_inspect"),
                                      "synth-speech": _run("synth_speech", "cli_synth_speech"),
                                      "asr-lm": _run("asr_lm", "cli_data"),
                                      "synth-actions": _run("synth_actions", "cli_synth_actions"),
                                      "synth-tracks": _run("synth_tracks", "cli_synth_tracks"),
                                      "synth-defects": _run("synth_defects", "cli_synth_defects"),
                                      "longform": _run("data_tools", "cli_longform")}),
}


def _usage() -> str:
    lines = ["usage: memstream <command> <task> [options]", "", "commands:"]
    for name, (text, tasks) in COMMANDS.items():
        named = ", ".join(t for t in tasks if t)
        lines.append(f"  {name:<8} {text}" + (f" (tasks: {named})" if named else ""))
    return "\n".join(lines) + "\n\n" + EXAMPLES


class UsageError(Exception):
    pass


def dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)}")
    _, tasks = COMMANDS[command]
    if "" in tasks:
        if "-h" in rest or "--help" in rest:
            return _task_help(tasks[""], rest, f"memstream {command}")
        return tasks[""](rest)
    if not rest or rest[0] in ("-h", "--help"):
        print(f"usage: memstream {command} <task> [options]\n\ntasks: {', '.join(tasks)}\n\n{EXAMPLES}")
        return 0 if rest else 2
    task, rest = rest[0], rest[1:]
    if task not in tasks:
        raise UsageError(f"unknown task {task!r} for `memstream {command}`; choose one of {', '.join(tasks)}")
    if "-h" in rest or "--help" in rest:
        return _task_help(tasks[task], rest, f"memstream {command} {task} ")
    return tasks[task](rest)


def _task_help(handler: Handler, argv: list[str], prefix: str) -> int:
    """A task's own --help, followed by the examples of that task where its parser shows none."""
    buffer = io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(buffer):
            code = handler(argv)
    except SystemExit as e:  # argparse exits after printing the help
        code = e.code if isinstance(e.code, int) else 0
    text = buffer.getvalue()
    examples = [line for line in (EXAMPLES + MORE_EXAMPLES).splitlines() if line.strip().startswith(prefix)]
    if examples and "examples:" not in text:
        text = text.rstrip("\n") + "\n\nexamples:\n" + "\n".join(examples) + "\n"
    sys.stdout.write(text)
    return code


def main(argv: list[str] | None = None) -> int:
    """The ``memstream`` command; ``argv`` None: the program's own arguments (run as a program, see
    :func:`_leave_past_native_readers`)."""
    code = _main(sys.argv[1:] if argv is None else list(argv))
    if argv is None:
        _leave_past_native_readers(code)
    return code


def _leave_past_native_readers(code: int) -> None:
    """Exit now, skipping the interpreter's finalization, if a daemon thread is still alive: a source's reader left
    inside a native call (OpenCV or FFmpeg opening a UDP stream that is down waits ~20 s). Finalization kills such a
    thread when it comes back to Python, which unwinds its C++ frames and aborts the process (exit 134, 'terminate
    called without an active exception'; seen after SIGINT during a reconnect). Everything the run computed is
    written and closed by now; only stdio and the logs are left to flush. (A program using the library instead
    waits at exit for such readers, up to their timeouts: ``sources.live``'s atexit hook; the CLI need not wait.)"""
    import threading

    if any(t.daemon and t.is_alive() for t in threading.enumerate()):
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _main(argv: list[str]) -> int:
    # FFmpeg/OpenCV print their own warnings (e.g. "Connection refused") next to our one-line errors.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    logging.basicConfig(level=os.environ.get("MEMSTREAM_LOG", "WARNING").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return dispatch(argv)
    except UsageError as e:
        print(f"memstream: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, OSError) as e:
        if os.environ.get("MEMSTREAM_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"memstream: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before a run's own handlers are in place (while starting up), or a second signal
        print("memstream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
