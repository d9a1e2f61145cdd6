"""`memstream data synth-tracks`: MOTChallenge layout, visibility, re-entries, detections, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from memstream.pipelines.synth_tracks import VERSION, cli_synth_tracks

TINY = ["--frames", "50", "--size", "160x120", "--gap", "1", "2", "--speed", "1.5", "2.5", "--objects", "5", "6"]


def _mot(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", ndmin=2)


def test_cli_writes_a_mot_layout(tmp_path, capsys):
    out = tmp_path / "set"
    assert cli_synth_tracks(["--out", str(out), "--train", "1", "--val", "0", "--test", "1", "--jobs", "1", *TINY]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sequences"] == {"train": 1, "val": 0, "test": 1}
    doc = json.loads((out / "scenes.json").read_text())
    assert doc["version"] == VERSION and list(doc["sequences"]) == ["synth-train-0000", "synth-test-0000"]
    for name, seq in doc["sequences"].items():
        root = out / seq["split"] / name
        assert len(list((root / "img1").glob("*.jpg"))) == 50
        gt = _mot(root / "gt" / "gt.txt")
        assert gt.shape[1] == 9 and (gt[:, 2] >= 0).all() and (gt[:, 2] + gt[:, 4] <= 160 + 1e-6).all()
        assert _mot(root / "det" / "det.txt").shape[1] == 10
        assert sum(r["gap_frames"] >= 10 for r in seq["reentries"]) >= 2
