"""``memstream eval track`` end to end: result files of any tracker (real MOT15 and synthetic MOT17 folders), JSON
equal to track_metrics.evaluate, the plot, the tracker path behind run_tracker, and the errors that exit 2."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from memstream.pipelines import track_eval
from memstream.pipelines.cli import main
from memstream.pipelines.mot_data import SeqInfo, read_mot_file, read_sequence, write_results, write_seqinfo
from memstream.pipelines.track_eval import default_benchmark, format_table, load_sequences, score_sequences
from memstream.pipelines.track_metrics import evaluate

MOT = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "mot"
KEYS = {"HOTA", "DetA", "AssA", "LocA", "MOTA", "MOTP", "IDF1", "IDP", "IDR", "Recall", "Precision", "IDSW", "FP",
        "FN", "TP", "Frag", "MT", "PT", "ML", "GT_IDs"}


def _json(capsys) -> dict:
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object and nothing else on stdout
    return json.loads(out)


@pytest.fixture
def mot15_results(tmp_path) -> tuple[Path, Path]:
    if not (MOT / "MOT15" / "TUD-Campus" / "gt" / "gt.txt").is_file():
        pytest.skip(f"MOT15 sample not found in {MOT} (shared/realdata/mot, see shared/realdata/README.md)")
    results = tmp_path / "results"
    shutil.copytree(MOT / "results_reference", results)
    return MOT / "MOT15", results


def test_real_mot15_results_json_and_plot(mot15_results, tmp_path, capsys):
    data, results = mot15_results
    png = tmp_path / "plots" / "mot15.png"
    assert main(["eval", "track", "--data", str(data), "--results", str(results), "--json", "--plot", str(png)]) == 0
    result = _json(capsys)
    assert result["benchmark"] == "MOT15" and result["plot"] == str(png)
    assert list(result["sequences"]) == ["TUD-Campus", "TUD-Stadtmitte"]  # ETH-Sunnyday, KITTI-17: no gt
    assert KEYS <= set(result["combined"]) and all(KEYS <= set(s) for s in result["sequences"].values())
    expected = evaluate({s: (read_sequence(data / s).gt, read_mot_file(results / f"{s}.txt"),
                             read_sequence(data / s).info.length) for s in result["sequences"]}, "MOT15")
    for name, summary in [*expected["sequences"].items(), ("combined", expected["combined"])]:
        got = result["combined"] if name == "combined" else result["sequences"][name]
        assert got.keys() == summary.keys()
        for key, value in summary.items():
            assert got[key] == pytest.approx(value, abs=1e-12), (name, key)
            assert type(got[key]) is type(value)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_result_file_and_bad_data_exit_2(mot15_results, tmp_path, capsys):
    data, results = mot15_results
    (results / "TUD-Stadtmitte.txt").unlink()
    assert main(["eval", "track", "--data", str(data), "--results", str(results), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "no result file for sequence TUD-Stadtmitte" in captured.err
    assert main(["eval", "track", "--data", str(tmp_path / "nowhere"), "--results", str(results)]) == 2
    assert "sequence folder not found" in capsys.readouterr().err
    (tmp_path / "empty" / "a").mkdir(parents=True)
    assert main(["eval", "track", "--data", str(tmp_path / "empty"), "--results", str(results)]) == 2
    assert "no MOTChallenge sequences" in capsys.readouterr().err
    assert main(["eval", "track", "--data", str(data / "ETH-Sunnyday"), "--results", str(results)]) == 2
    assert "has ground truth" in capsys.readouterr().err


def _synthetic_folder(root: Path) -> dict[str, np.ndarray]:
    """Two MOT17-style sequences (3 pedestrians, one distractor, one zero-marked box) under root/MOTX/train."""
    gts = {}
    for i, name in enumerate(("SYN-02", "SYN-01")):
        folder = root / "MOTX" / "train" / name
        write_seqinfo(folder, SeqInfo(name, 30.0, 12, 640, 480))
        rows = [[f, k, 50.0 * k + 3 * f, 100.0, 30.0, 60.0, 0 if (k, f) == (1, 4) else 1, 8 if k == 3 else 1, 1.0]
                for f in range(1, 13) for k in range(1, 5) if not (k == 2 and f > 9 + i)]
        (folder / "gt").mkdir()
        np.savetxt(folder / "gt" / "gt.txt", rows, fmt="%g", delimiter=",")
        gts[name] = read_mot_file(folder / "gt" / "gt.txt")
    return gts


def test_synthetic_mot17_table_and_tracker_path(tmp_path, capsys, monkeypatch):
    gts = _synthetic_folder(tmp_path)
    data = tmp_path / "MOTX"
    assert default_benchmark(data) == "MOT17" and default_benchmark("/d/MOT20/train") == "MOT20"
    results = tmp_path / "tracker" / "data"
    for name, gt in gts.items():
        tracks = gt[gt[:, 7] == 1].copy()
        tracks[tracks[:, 0] > 6, 1] += 10  # every track changes id once
        write_results(results / f"{name}.txt", tracks)
    assert main(["eval", "track", "--data", str(data), "--results", str(results.parent)]) == 0
    table = capsys.readouterr().out
    assert "benchmark MOT17" in table and table.index("SYN-01") < table.index("SYN-02") < table.index("COMBINED")
    combined = [line.split() for line in table.splitlines() if line.startswith("COMBINED")][0]
    header = [line.split() for line in table.splitlines() if line.startswith("sequence")][0]
    # 3 pedestrians switch once in each sequence; the tracked zero-marked box is a false positive (TrackEval drops
    # zero-marked gt, and only tracker boxes on distractor classes).
    assert combined[header.index("IDSW")] == "6" and combined[header.index("FP")] == "2"

    calls = []

    def fake_tracker(seq, args):  # the ground truth as tracks: a perfect tracker
        calls.append((seq.path.name, args.tracker, args.backend))
        return seq.gt[(seq.gt[:, 7] == 1) & (seq.gt[:, 6] != 0), :7]

    monkeypatch.setattr(track_eval, "run_tracker", fake_tracker)
    out = tmp_path / "out"
    assert main(["eval", "track", "--data", str(data), "--tracker", "iou", "--out", str(out), "--json"]) == 0
    result = _json(capsys)
    assert calls == [("SYN-01", "iou", "torch"), ("SYN-02", "iou", "torch")]
    assert result["tracker"] == "iou" and result["combined"]["HOTA"] == 1.0 and result["combined"]["MOTA"] == 1.0
    assert sorted(p.name for p in out.iterdir()) == ["SYN-01.txt", "SYN-02.txt"]
    assert "COMBINED" in format_table(result)


def test_tracker_module_missing_and_progress(tmp_path, capsys, monkeypatch):
    _synthetic_folder(tmp_path)
    monkeypatch.setitem(sys.modules, "memstream.pipelines.track_task", None)  # as if not written yet
    assert main(["eval", "track", "--data", str(tmp_path / "MOTX" / "train" / "SYN-01")]) == 2
    assert "cannot run the memstream tracker" in capsys.readouterr().err
    sequences = load_sequences(tmp_path / "MOTX")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    scores = score_sequences(sequences, lambda seq: seq.gt[seq.gt[:, 6] != 0, :7], "MOT15", progress=True)
    assert list(scores) == ["SYN-01", "SYN-02"] and scores["SYN-01"].summary()["MOTA"] == 1.0
