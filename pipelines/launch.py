"""Launching runs: source specs and ``.streams`` files, task/backend resolution, the ``stream()``
generator behind :func:`memstream.pipelines.stream`, and the shared code of the ``memstream run`` commands.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from memstream.pipelines.runner import StreamResult, StreamRunner, is_open
from memstream.pipelines.segmenter import Segment
from memstream.pipelines.streams import FailedSource, Source, SourceError

log = logging.getLogger(__name__)


AUDIO_EXT = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aiff", ".aif", ".au", ".pcm", ".raw"}


def read_streams_file(path: str | Path) -> list[str]:
    """A ``.streams`` file: one source per line (path, URL, camera index), ``#`` starts a comment line.
    Relative paths are taken relative to the file's folder when they exist there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"streams file {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"streams file {path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise ValueError(f"streams file {path}: cannot read it: {e.strerror or e}") from e
    specs = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if " #" in line:
            line = line.split(" #", 1)[0].strip()
        if "://" not in line and not line.isdigit() and not Path(line).is_absolute() and (path.parent / line).exists():
            line = str(path.parent / line)
        specs.append(line)
    if not specs:
        raise ValueError(f"streams file {path}: no sources in it")
    return specs


def expand_specs(source) -> list:
    """A source, a spec string, a ``.streams`` file or a list of them -> a flat list of sources/specs."""
    if isinstance(source, str | Path) and str(source).endswith(".streams"):
        return read_streams_file(source)
    if isinstance(source, list | tuple):
        return [s for item in source for s in expand_specs(item)]
    return [str(source) if isinstance(source, Path) else source]


def guess_kind(spec) -> str | None:
    """``audio``/``video`` from an opened source's info or a spec's look, None when it cannot tell."""
    if isinstance(spec, Source):
        return spec.info.kind if is_open(spec) else None
    text = str(spec).strip().lower()
    if text in ("-", "stdin", "mic", "microphone") or text.startswith(("mic:", "microphone:")):
        return "audio"
    if text.isdigit() or "://" in text or text.startswith("camera"):
        return "video"
    path = Path(text)
    if path.suffix in AUDIO_EXT:
        return "audio"
    return "video" if path.suffix or Path(str(spec)).is_dir() else None


def waits_at_open(source: Source) -> bool:
    """A source its reader thread opens, not the caller: a live source that retries its first connection, or one
    whose opening waits for data that may never come (``opens_in_reader``: raw PCM on stdin)."""
    return bool(getattr(source, "opens_in_reader", False)
                or getattr(getattr(source, "reconnect", None), "at_open", False))


def open_specs(specs: Iterable, kind: str, *, keep_going: bool = False, all_may_fail: bool = False,
               **options) -> list[Source]:
    """Specs -> opened sources via :func:`memstream.pipelines.sources.make_source` (Source objects pass through).

    A spec that cannot be opened raises its :class:`SourceError`, after closing the sources already opened. With
    ``keep_going`` and more than one spec it is logged and comes back as a :class:`FailedSource` instead (the
    runner records it as a stream that ended with that error), so one dead camera does not keep the others from
    running; only when every spec fails is the first error raised, unless ``all_may_fail`` (the CLI: a run of
    several sources records each failure in its events and summary, then exits 2). A live source whose reconnect
    policy waits for it at open (``Reconnect(at_open=True)``), and raw PCM on stdin, come back unopened
    (:func:`waits_at_open`): the reader thread opens them, so a camera that is down does not hold back the start of
    the others, and a signal stops a run whose stdin has not delivered yet.
    """
    from memstream.pipelines.sources import make_source

    out: list[Source] = []
    failures: list[SourceError] = []
    specs = list(specs)
    try:
        for spec in specs:
            if isinstance(spec, Source):
                out.append(spec)
                continue
            try:
                source = make_source(str(spec), kind, **options)
                if not waits_at_open(source):
                    source.open()
                out.append(source)
            except SourceError as e:
                if not keep_going or len(specs) == 1:
                    raise
                log.error("%s; the other streams go on", e)
                failures.append(e)
                out.append(FailedSource(e))
        if failures and len(failures) == len(specs) and not all_may_fail:
            raise failures[0]
    except BaseException:
        for source in out:
            source.close()
        raise
    return out


def default_backend(task, device: str = "cpu"):
    from memstream.export import TorchBackend

    model = getattr(task, "model", None)
    if model is None:
        raise ValueError(f"task {task.name!r} has no .model: pass a backend")
    return TorchBackend(model, device)


def as_task(task_or_model, kind: str | None):
    """A task, a core module, a core preset name or checkpoint folder -> a task."""
    if hasattr(task_or_model, "encode") and hasattr(task_or_model, "new_decoder"):
        return task_or_model
    from memstream.pipelines.core_task import CoreProbeTask

    kind = kind or "audio"
    if isinstance(task_or_model, str | Path):
        text = str(task_or_model)
        return CoreProbeTask(kind, checkpoint=text) if Path(text).is_dir() else CoreProbeTask(kind, preset=text)
    return CoreProbeTask(kind, core=task_or_model)


def stream(task_or_model, source, *, backend=None, kind: str | None = None, device: str = "cpu",
           sinks: Sequence = (), max_streams: int | None = None, batch_timeout: float = 0.02,
           max_batch: int | None = None, decoder: str | None = None, **source_options) -> Iterator[StreamResult]:
    """``for result in stream(model, "clip.wav"): ...``; see :func:`memstream.pipelines.stream`."""
    if decoder is not None:  # the sources call it `backend`, which here names the model's backend
        source_options["backend"] = decoder
    specs = expand_specs(source)
    if not specs:
        raise ValueError("stream(): no source given")
    if kind is None:
        kind = getattr(task_or_model, "kind", None) if hasattr(task_or_model, "new_decoder") else None
        kind = kind or guess_kind(specs[0])
    task = as_task(task_or_model, kind)
    sources = open_specs(specs, task.kind, keep_going=True, **source_options)
    runner = StreamRunner(task, backend if backend is not None else default_backend(task, device), sinks,
                          max_streams=max_streams or len(sources), batch_timeout=batch_timeout, max_batch=max_batch)
    for s in sources:
        runner.add(s)  # opened is guessed from its info: a FailedSource has none, its reader records the error
    yield from runner.results()


def _dummy_segment(task) -> Segment:
    t = task.segment_size
    if task.kind == "audio":
        return Segment(np.zeros(t, np.float32), np.ones(t, bool), 0.0, float(task.rate), 0)
    h, w = task.frame_size or (32, 32)
    return Segment(np.zeros((t, h, w, 3), np.uint8), np.ones(t, bool), 0.0, float(task.rate), 0, np.zeros(t))


def onnx_backend(task, path: str | Path, device: str = "cpu", export: bool = True):
    """Export ``task.model``'s step to ``path`` (unless ``export`` is False) and run it with ONNX Runtime."""
    from memstream.export import OnnxBackend, export_step

    path = Path(path)
    if export:
        path.parent.mkdir(parents=True, exist_ok=True)
        x, _ = task.encode([_dummy_segment(task)] * 2)
        metadata = {"task": task.name, "kind": task.kind, "rate": task.rate, "segment_size": task.segment_size}
        if hasattr(task, "export_metadata"):
            metadata.update(task.export_metadata())
        extra = task.export_inputs(x.shape[0]) if hasattr(task, "export_inputs") else None
        export_step(task.model, path, x, metadata=metadata, extra=extra)
    providers = ["CPUExecutionProvider"] if str(device) == "cpu" else None
    backend = OnnxBackend(path, providers=providers)
    if hasattr(task, "check_backend"):
        task.check_backend(backend, path)
    return backend


def model_backend(model, kind: str, *, export, check, onnx_path: str | None = None, threads: int | None = None,
                  device: str = "cpu"):
    """``torch`` or ``onnx`` for evaluation: ``export(model, path)`` to a temporary file unless ``onnx_path`` is
    given, then ``check(backend, model, path)`` (a given graph must match the checkpoint the decoder uses).
    ``device``: the torch device, or for ONNX Runtime ``cpu`` (the CPU provider) or anything else (the best
    provider the installed build has: TensorRT, CUDA, then CPU)."""
    from memstream.export import OnnxBackend, TorchBackend

    if kind == "torch":
        return TorchBackend(model, device)
    if kind != "onnx":
        raise ValueError(f"backend {kind!r}: choose torch or onnx")
    providers = ["CPUExecutionProvider"] if str(device) == "cpu" else None
    if onnx_path is not None:
        backend = OnnxBackend(onnx_path, providers=providers, threads=threads)
        check(backend, model, onnx_path)
        return backend
    import tempfile

    # the session holds the graph in memory once created, so the exported file need not outlive this call
    with tempfile.TemporaryDirectory(prefix="memstream-") as folder:
        path = str(Path(folder) / "model.onnx")
        export(model, path)
        backend = OnnxBackend(path, providers=providers, threads=threads)
        check(backend, model, path)
    return backend


def add_run_arguments(p) -> None:
    """The options every ``memstream run <task>`` shares."""
    p.add_argument("--source", action="append", default=[], metavar="SPEC",
                   help="file, folder of images, URL (rtsp/http/udp), camera index, 'mic', or '-' for raw PCM on "
                        "stdin; repeat for several streams")
    p.add_argument("--streams", metavar="FILE", help="a .streams file: one source per line, '#' comments")
    p.add_argument("--kind", choices=("audio", "video"), help="media kind (default: guessed from the source)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="model runtime (default torch)")
    p.add_argument("--onnx", metavar="FILE", help="with --backend onnx: an exported step to run instead of exporting")
    p.add_argument("--device", default="cpu", help="torch device, or cpu/cuda for ONNX Runtime (default cpu)")
    p.add_argument("--out", metavar="DIR", help="write DIR/events.jsonl and DIR/summary.json (default: events "
                                                "as JSON Lines on stdout)")
    p.add_argument("--mode", choices=("latest", "all"), help="live sources: drop stale frames (latest) or keep all")
    p.add_argument("--reconnect-attempts", type=int, metavar="N",
                   help="live sources: failed reconnect attempts in a row before the stream ends (default 5; 0: never)")
    p.add_argument("--reconnect-interval", type=float, metavar="S",
                   help="live sources: seconds before the first reconnect attempt, doubling up to 10 (default 1)")
    p.add_argument("--decoder", choices=("opencv", "pyav"),
                   help="video files and URLs: FFmpeg through OpenCV (default) or PyAV (keeps each frame's own size); "
                        "audio files: pyav instead of soundfile")
    p.add_argument("--retry-open", action="store_true",
                   help="live sources that cannot be reached at start are retried like a reconnect (the others "
                        "start meanwhile), instead of failing at once")
    p.add_argument("--rate", type=float, help="stdin PCM or microphone: sample rate; an image folder: frame rate")
    p.add_argument("--channels", type=int, help="stdin PCM: channels")
    p.add_argument("--format", help="stdin PCM: sample format (e.g. s16le, f32le)")
    p.add_argument("--max-streams", type=int, help="state slots, streams running at once (default: all sources)")
    p.add_argument("--batch-timeout", type=float, default=0.02,
                   help="seconds to wait for more streams to batch once one is ready (default 0.02)")
    p.add_argument("--view", action="store_true", help="live terminal view on stderr (plain status lines when not a "
                                                        "TTY); events still go to stdout when it is piped")
    p.add_argument("--overlay", metavar="FILE", help="video: write the frames with the task's overlay drawn")


def specs_from_args(args) -> list[str]:
    specs = list(args.source) + (read_streams_file(args.streams) if args.streams else [])
    if not specs:
        raise ValueError("no source: give --source SPEC (repeatable) or --streams FILE")
    return specs


def reconnect_from_args(args):
    """--reconnect-attempts / --reconnect-interval / --retry-open -> a Reconnect policy (None: the sources'
    default)."""
    from memstream.pipelines.sources import Reconnect

    attempts, interval = getattr(args, "reconnect_attempts", None), getattr(args, "reconnect_interval", None)
    at_open = bool(getattr(args, "retry_open", False))
    if attempts is None and interval is None and not at_open:
        return None
    default = Reconnect()
    interval = default.interval if interval is None else interval
    return Reconnect(interval=interval, max_interval=max(default.max_interval, interval),
                     attempts=default.attempts if attempts is None else attempts, at_open=at_open)


class _SignalStop:
    """SIGINT/SIGTERM from the start of a run: a signal while sources open or the model exports marks the run to
    stop as soon as its runner exists (it then ends at once, sinks flushed, exit 0); during the run the step in
    flight finishes and the sinks flush. A second signal gives up at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.runner: StreamRunner | None = None
        self.requested = False

    def handle(self, signum, frame) -> None:
        import signal

        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        when = "finishing the step in flight, then flushing" if self.runner else "stopping before the first step"
        log.warning("%s: %s", signal.Signals(signum).name, when)
        if self.runner is not None:
            self.runner.stop()

    def attach(self, runner: StreamRunner) -> None:
        self.runner = runner
        if self.requested:
            runner.stop()


def run_from_args(task, specs: list[str], args, extra_sinks: Sequence = ()) -> int:
    """Open the sources, build backend and sinks (plus ``extra_sinks``), run until the streams end or
    SIGINT/SIGTERM; exit code. The signal handlers are in place before anything slow starts."""
    import signal

    control = _SignalStop()
    previous = {}
    if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
        previous = {sig: signal.signal(sig, control.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run_from_args(task, specs, args, extra_sinks, control)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_from_args(task, specs: list[str], args, extra_sinks: Sequence, control: _SignalStop) -> int:
    import sys
    import tempfile

    from memstream.pipelines.sinks import JsonlSink, OverlayVideoSink, SummarySink, TerminalSink

    if args.max_streams is not None and args.max_streams < 1:  # before anything opens (0 read as "all" before)
        raise ValueError(f"--max-streams {args.max_streams}: must be at least 1")
    if args.overlay and task.kind != "video":  # it was ignored without a word
        raise ValueError(f"--overlay draws on video frames; this run's sources are {task.kind}")
    if args.overlay:
        OverlayVideoSink.check_container(args.overlay)  # before anything opens, not at the first frame
    options = {k: getattr(args, k) for k in ("mode", "rate", "channels", "format") if getattr(args, k) is not None}
    if getattr(args, "decoder", None):
        options["backend"] = args.decoder
    reconnect = reconnect_from_args(args)
    if reconnect is not None:
        options["reconnect"] = reconnect
    # Opened here, except those the runner's readers open (a FailedSource, a live source that waits at open).
    sources = open_specs(specs, task.kind, keep_going=True, all_may_fail=True, **options)
    try:
        out = Path(args.out) if args.out else None
        if args.backend == "onnx":
            if args.onnx:
                backend = onnx_backend(task, args.onnx, args.device, export=False)
            elif out is not None:
                backend = onnx_backend(task, out / "model.onnx", args.device)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    backend = onnx_backend(task, Path(tmp) / "model.onnx", args.device)
        else:
            backend = default_backend(task, args.device)
    except BaseException:
        for s in sources:
            s.close()
        raise
    sinks: list = []
    if out is not None:
        sinks += [JsonlSink(out / "events.jsonl"), SummarySink(out / "summary.json")]
    elif not args.view or not sys.stdout.isatty():  # the view is on stderr: events piped on stdout still go there
        sinks.append(JsonlSink(sys.stdout))
    if args.view:
        sinks.append(TerminalSink())
    sinks += list(extra_sinks)
    if args.overlay:
        sinks.append(OverlayVideoSink(args.overlay, getattr(task, "draw", None)))
    runner = StreamRunner(task, backend, sinks, max_streams=args.max_streams or len(sources),
                          batch_timeout=args.batch_timeout, backend_name=args.backend)
    for s in sources:
        runner.add(s)  # opened is guessed from its info: a FailedSource has none, its reader records the error

    control.attach(runner)
    summary = runner.run()
    total = summary["total"]
    failed = [f"{sid} ({row['source']}): {row['error']}" for sid, row in summary["streams"].items()
              if row["status"] == "error"]
    for line in failed:
        print(f"memstream: stream {line}", file=sys.stderr)
    if not args.view:
        timing = (f", latency p50 {total['latency_ms']['p50']} ms p99 {total['latency_ms']['p99']} ms, real-time "
                  f"factor {total['real_time_factor']}") if total["segments"] else ""
        print(f"memstream: {total['segments']} segments from {total['streams']} stream(s){timing}"
              + (f", summary in {out / 'summary.json'}" if out else ""), file=sys.stderr)
    return 2 if failed and len(failed) == total["streams"] else 0
