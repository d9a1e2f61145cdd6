"""The `memstream` command line frame: every command listed, errors as one line with exit code 2."""

from __future__ import annotations

import json

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
