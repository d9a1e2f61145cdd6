"""The `memstream` command line frame: every command listed, errors as one line with exit code 2."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from memstream.pipelines.cli import COMMANDS, main


def test_help_lists_every_command_with_examples(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "eval", "train", "export", "bench", "demo", "data"):
        assert command in COMMANDS
        assert f"  {command} " in out
    assert "examples:" in out


def test_every_task_help_shows_examples_of_that_task(capsys):
    for command, (_, tasks) in COMMANDS.items():
        for task in tasks:
            argv = [command, task, "--help"] if task else [command, "--help"]
            assert main(argv) == 0, argv
            out = capsys.readouterr().out
            assert "usage:" in out and "examples:" in out, argv
            examples = out.split("examples:", 1)[1]
            assert f"memstream {command} {task}".strip() in examples, argv


@pytest.mark.parametrize("argv, needle", [
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["eval", "nothing"], "unknown task 'nothing'"),
    (["data", "inspect", "/no/such/file.wav"], "/no/such/file.wav"),
    (["export", "core", "--config", "/no/such.json", "--out", "x.onnx"], "/no/such.json"),
])
def test_user_errors_are_one_line_with_exit_code_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("memstream: error:") and needle in err
    assert len(err.splitlines()) == 1


def test_data_inspect_reports_rate_channels_and_duration(tmp_path, capsys):
    rate, seconds = 22050, 1.5
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, (int(rate * seconds), 2)).astype(np.float32)
    path = tmp_path / "clip.flac"
    sf.write(path, samples, rate)
    assert main(["data", "inspect", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "audio" and report["rate"] == rate and report["channels"] == 2
    assert report["items"] == len(samples)
    assert report["decoded_seconds"] == pytest.approx(seconds, abs=1e-3)
    assert report["errors"] == [] and report["skipped"] == 0


def test_eval_recall_on_the_bundled_checkpoint(capsys):
    assert main(["eval", "recall", "--sequences", "32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["memory"] == "queue"
    assert report["recall"]["16x"] > 0.9 > 3 * report["chance"]


def test_export_core_from_a_checkpoint_runs_in_onnx_runtime_like_pytorch(tmp_path, capsys, make_core, stream):
    """`memstream export core --checkpoint DIR --out F`: the graph alone (metadata, no config) steps like the core."""
    import torch
    from memstream.export import OnnxBackend
    from memstream.models import save_checkpoint

    core = make_core("tokens")
    save_checkpoint(tmp_path / "ckpt", core, {"core": core.cfg.to_dict()})
    out = tmp_path / "onnx" / "core.onnx"
    assert main(["export", "core", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(out), "--opset", "18"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["opset"] == 18 and report["memory"] == "tokens" and out.is_file()
    assert report["inputs"] == ["x", "state.memory", "state.step", "reset", "mask"]
    assert report["outputs"] == ["y", "state_out.memory", "state_out.step"]

    backend = OnnxBackend(out, providers=["CPUExecutionProvider"])
    t = core.cfg.segment
    x = stream(2, 3, t, core.cfg.dim)
    mask = torch.ones(2, 3 * t, dtype=torch.bool)
    mask[1, -1] = False
    state_pt, state_ort = core.init_state(2), backend.init_state(2)
    reset = torch.tensor([False, True])
    with torch.no_grad():
        for i in range(3):
            part = slice(i * t, (i + 1) * t)
            y_pt, state_pt = core.step(x[:, part], state_pt, reset, mask[:, part])
            y_ort, state_ort = backend.step(x[:, part], state_ort, reset, mask[:, part])
            torch.testing.assert_close(torch.as_tensor(y_ort)[mask[:, part]], y_pt[mask[:, part]], atol=1e-4, rtol=0)


def test_bench_core_prints_every_figure_of_the_issue(capsys):
    """A short `memstream bench core` (core-tiny, 150 segments): one JSON object with the named figures."""
    argv = ["bench", "core", "--preset", "core-tiny", "--memory", "queue,knn", "--steps", "150", "--early", "20",
            "--repeats", "10", "--threads", "1", "--no-recall"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("latency_ratio", "speedup_vs_emformer", "speedup_vs_emformer_relu", "onnx_speedup",
                "growing_kv_latency_ratio"):
        assert isinstance(report[key], float) and report[key] > 0, key
    assert isinstance(report["rss_growth_mb"], float)  # may be <= 0: the allocator can give memory back
    assert set(report["state_bytes"]) == {"queue", "knn"} and all(v > 0 for v in report["state_bytes"].values())
    for memory in ("queue", "knn"):
        rss = report["per_memory"][memory]["rss_mb"]
        assert set(rss) == {"before", "step_150", "after"} and all(v > 0 for v in rss.values())
        assert report["per_memory"][memory]["state_bytes"] == report["per_memory"][memory]["state_bytes_early"]
    contenders = {"eager", "emformer", "emformer_relu", "onnx", "growing_kv_early", "growing_kv_late"}
    assert contenders <= set(report["latency"])


def test_run_retry_open_waits_then_reports_the_cause(capsys):
    """--retry-open: a URL nobody answers is retried per the reconnect options, then the run fails with the cause
    (exit 2), the stream's own line naming the URL."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/live"
    t0 = time.monotonic()
    assert main(["run", "core", "--preset", "core-tiny", "--kind", "video", "--source", url, "--retry-open",
                 "--reconnect-attempts", "2", "--reconnect-interval", "0.2"]) == 2
    assert time.monotonic() - t0 >= 0.2 + 0.4  # it did wait: 0.2 s, then 0.4 s
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if url in x)
    assert "gave up after 2 attempts to open" in line and "connection refused" in line and "Traceback" not in err


@pytest.mark.parametrize("case", ["corrupt", "empty", "refused", "format", "fractional-rate", "mic"])
def test_run_bad_input_is_one_line_naming_the_source_with_exit_2(case, tmp_path, capsys, monkeypatch):
    """`memstream run` on each bad input the runtime promises to report: one stderr line naming the source and
    the cause, exit code 2, no traceback."""
    import io
    import socket

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    if case == "corrupt":
        path = tmp_path / "bad.wav"
        path.write_bytes(np.random.default_rng(0).bytes(5000))
        argv, needles = ["--source", str(path)], [str(path), "cannot decode"]
    elif case == "empty":
        path = tmp_path / "empty.wav"
        sf.write(path, np.zeros((0, 1), np.float32), 16000)
        argv, needles = ["--source", str(path)], [str(path), "zero-length"]
    elif case == "refused":
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}/live"
        argv, needles = ["--kind", "video", "--source", url], [url, "connection refused"]
    elif case == "format":
        argv, needles = ["--source", "-", "--rate", "16000", "--format", "s24le"], ["stdin", "'s24le'"]
    elif case == "fractional-rate":
        argv, needles = ["--source", "-", "--rate", "22050.5"], ["stdin", "rate=22050.5"]
    else:
        argv, needles = ["--source", "mic:7"], ["microphone 7"]
    assert main(["run", "core", "--preset", "core-tiny", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("memstream: error:"), err
    assert all(n in err for n in needles), err


def test_run_an_image_folder_at_a_fractional_frame_rate(tmp_path, capsys):
    import cv2

    for i in range(6):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((24, 32, 3), 40 * i, np.uint8))
    out = tmp_path / "run"
    assert main(["run", "core", "--preset", "core-tiny", "--kind", "video", "--source", str(tmp_path),
                 "--rate", "7.5", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["streams"]["0"]["frames_in"] == 6 and summary["total"]["errors"] == 0
    assert summary["streams"]["0"]["media_s"] == pytest.approx(6 / 7.5, abs=1e-6)


def test_run_passes_the_reconnect_policy_to_the_sources(monkeypatch, capsys):
    import memstream.pipelines.launch as launch
    from memstream.pipelines.sources import Reconnect
    from memstream.pipelines.streams import SourceError

    seen = {}

    def fake_open_specs(specs, kind, **options):
        seen.update(options)
        raise SourceError(specs[0], "stop here")

    monkeypatch.setattr(launch, "open_specs", fake_open_specs)
    argv = ["run", "core", "--kind", "video", "--source", "rtsp://cam/1"]
    assert main([*argv, "--reconnect-attempts", "2", "--reconnect-interval", "0.5"]) == 2
    assert seen["reconnect"] == Reconnect(interval=0.5, attempts=2)
    seen.clear()
    assert main(argv) == 2 and "reconnect" not in seen  # the sources' own default
    assert main([*argv, "--reconnect-interval", "30"]) == 2
    assert seen["reconnect"] == Reconnect(interval=30.0, max_interval=30.0)
    capsys.readouterr()
    assert main([*argv, "--reconnect-attempts", "-1"]) == 2
    assert "attempts=-1" in capsys.readouterr().err
    seen.clear()
    assert main([*argv, "--retry-open", "--decoder", "pyav"]) == 2
    assert seen["reconnect"] == Reconnect(at_open=True) and seen["backend"] == "pyav"


@pytest.mark.parametrize("decoder", ["opencv", "pyav"])
def test_run_a_video_file_with_either_decoder(decoder, tmp_path, capsys):
    from sources_media import write_video

    path = tmp_path / "clip.mpg"
    write_video(path, (48, 64), 20)
    out = tmp_path / "run"
    assert main(["run", "core", "--preset", "core-tiny", "--source", str(path), "--decoder", decoder,
                 "--out", str(out)]) == 0
    row = json.loads((out / "summary.json").read_text())["streams"]["0"]
    assert row["frames_in"] == 20 and row["status"] == "ended" and row["segments"] == 3  # 8-frame segments


def test_the_program_leaves_past_a_reader_stuck_in_native_code(monkeypatch):
    """Run as a program (no argv given), memstream exits with os._exit when a daemon thread is still alive: a reader
    left inside OpenCV/FFmpeg would be killed by the interpreter's finalization, which aborted the process (exit 134)
    after SIGINT during a UDP reconnect. Called with argv (in-process, as here and in the tests), it never does."""
    import threading

    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    monkeypatch.setattr(sys, "argv", ["memstream", "run", "core", "--kind", "audio"])  # no source: exit 2
    every_thread = threading.enumerate
    monkeypatch.setattr(threading, "enumerate", lambda: [threading.main_thread()])  # other tests' threads aside
    assert main() == 2 and exits == []  # no daemon thread alive: a normal exit
    monkeypatch.setattr(threading, "enumerate", every_thread)
    release = threading.Event()
    stuck = threading.Thread(target=release.wait, name="memstream-source-0", daemon=True)
    stuck.start()
    try:
        assert main(["run", "core", "--kind", "audio"]) == 2 and exits == []  # in-process: never
        main()
        assert exits == [2]
    finally:
        release.set()
        stuck.join()
