"""Tracking metrics: equal to TrackEval's full pipeline (Evaluator + MotChallenge2DBox on a folder) on real MOT15
sequences and on synthetic MOT16/17/20 ground truth with distractors and zero-marked boxes; hand cases; bad input."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from memstream.pipelines.mot_data import read_mot_file, write_results
from memstream.pipelines.track_metrics import combine, evaluate, evaluate_sequence

MOT = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "mot"
REAL = {"TUD-Campus": 71, "TUD-Stadtmitte": 179}


def _trackeval(root: Path, files: dict[str, tuple[Path, Path, int]], benchmark: str) -> dict:
    """TrackEval's own results (``{seq or "COMBINED_SEQ": {metric: fields}}``) for ``files[seq] = (gt file, result
    file, frames)``, laid out as MotChallenge2DBox expects: GT_FOLDER/<BENCHMARK>-train/<seq>/{gt/gt.txt,
    seqinfo.ini}, TRACKERS_FOLDER/<BENCHMARK>-train/<tracker>/data/<seq>.txt and a seqmap file."""
    trackeval = pytest.importorskip("trackeval")
    split = f"{benchmark}-train"
    for seq, (gt, result, frames) in files.items():
        (root / "gt" / split / seq / "gt").mkdir(parents=True)
        shutil.copy(gt, root / "gt" / split / seq / "gt" / "gt.txt")
        (root / "gt" / split / seq / "seqinfo.ini").write_text(f"[Sequence]\nname={seq}\nseqLength={frames}\n")
        (root / "trackers" / split / "ref" / "data").mkdir(parents=True, exist_ok=True)
        shutil.copy(result, root / "trackers" / split / "ref" / "data" / f"{seq}.txt")
    (root / "seqmap.txt").write_text("name\n" + "".join(f"{seq}\n" for seq in files))
    evaluator = trackeval.Evaluator({"PRINT_RESULTS": False, "PRINT_CONFIG": False, "TIME_PROGRESS": False,
                                     "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False, "PLOT_CURVES": False,
                                     "LOG_ON_ERROR": None})
    dataset = trackeval.datasets.MotChallenge2DBox({
        "GT_FOLDER": str(root / "gt"), "TRACKERS_FOLDER": str(root / "trackers"), "BENCHMARK": benchmark,
        "SPLIT_TO_EVAL": "train", "SEQMAP_FILE": str(root / "seqmap.txt"), "TRACKERS_TO_EVAL": ["ref"],
        "PRINT_CONFIG": False})
    quiet = {"THRESHOLD": 0.5, "PRINT_CONFIG": False}
    metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR(quiet), trackeval.metrics.Identity(quiet)]
    with contextlib.redirect_stdout(io.StringIO()):  # the Evaluator prints a header whatever its config says
        results, messages = evaluator.evaluate([dataset], metrics)
    assert messages["MotChallenge2DBox"]["ref"] == "Success"
    return {seq: r["pedestrian"] for seq, r in results["MotChallenge2DBox"]["ref"].items()}


def _assert_same(ours: dict[str, dict], reference: dict[str, dict]) -> None:
    assert set(ours) == set(reference)
    for metric, fields in reference.items():
        for field, value in fields.items():
            np.testing.assert_allclose(np.asarray(ours[metric][field], float), np.asarray(value, float),
                                       rtol=0, atol=1e-6, err_msg=f"{metric} {field}")


@pytest.fixture(scope="module")
def real_files() -> dict[str, tuple[Path, Path, int]]:
    files = {s: (MOT / "MOT15" / s / "gt" / "gt.txt", MOT / "results_reference" / f"{s}.txt", n)
             for s, n in REAL.items()}
    if not all(gt.is_file() and res.is_file() for gt, res, _ in files.values()):
        pytest.skip(f"MOT15 ground truth and reference results not found in {MOT} (shared/realdata/mot, see "
                    "shared/realdata/README.md)")
    return files


def test_real_mot15_equals_trackeval(tmp_path, real_files):
    reference = _trackeval(tmp_path, real_files, "MOT15")
    scores = {s: evaluate_sequence(read_mot_file(gt), read_mot_file(res), n, "MOT15", s)
              for s, (gt, res, n) in real_files.items()}
    for seq, score in scores.items():
        _assert_same(score.results, reference[seq])
    _assert_same(combine(scores).results, reference["COMBINED_SEQ"])
    summary = evaluate({s: (read_mot_file(gt), read_mot_file(res), n) for s, (gt, res, n) in real_files.items()},
                       "MOT15")
    combined = summary["combined"]
    assert combined["HOTA"] == pytest.approx(np.mean(reference["COMBINED_SEQ"]["HOTA"]["HOTA"]), abs=1e-12)
    assert combined["MOTA"] == pytest.approx(reference["COMBINED_SEQ"]["CLEAR"]["MOTA"], abs=1e-12)
    assert (combined["IDSW"], combined["GT_IDs"]) == (14, 18) and isinstance(combined["FP"], int)
    assert 0 < combined["HOTA"] < combined["MOTA"] < combined["IDF1"] < 1
    assert list(summary["sequences"]) == list(REAL)


def _synthetic(seed: int, frames: int = 25, objects: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """MOT17-style ground truth (conf 0/1, classes 1/2/7/8/12/6, visibility) and a noisy tracker that also follows
    the distractors, swaps ids, misses boxes and adds false ones."""
    rng = np.random.default_rng(seed)
    classes = np.array([1, 1, 1, 1, 2, 7, 8, 12, 6])[rng.permutation(objects) % 9]
    start = rng.uniform(0, 400, (objects, 2))
    velocity = rng.normal(0, 4, (objects, 2))
    size = rng.uniform(20, 60, (objects, 2))
    gt, res = [], []
    for f in range(1, frames + 1):
        for k in range(objects):
            if rng.random() < 0.1:
                continue  # not annotated in this frame
            x, y = start[k] + velocity[k] * f
            conf = 0 if rng.random() < 0.1 else 1
            gt.append([f, k + 1, x, y, *size[k], conf, classes[k], rng.random()])
            if rng.random() < 0.85:
                jitter = rng.normal(0, 0.08, 4) * np.r_[size[k], size[k]]
                tid = k + 1 + (100 if (k == 0 and f > frames // 2) else 0)  # a late id switch on object 1
                res.append([f, tid, x + jitter[0], y + jitter[1], size[k][0] + jitter[2], size[k][1] + jitter[3], 1])
        for j in range(rng.integers(0, 3)):
            res.append([f, 200 + j, *rng.uniform(0, 400, 2), *rng.uniform(20, 60, 2), 1])
    gt, res = np.round(np.array(gt), 2), np.array(res)
    return gt[np.lexsort((gt[:, 1], gt[:, 0]))], res


@pytest.mark.parametrize("benchmark", ["MOT17", "MOT16", "MOT20"])
def test_synthetic_mot17_with_distractors_equals_trackeval(tmp_path, benchmark):
    files, arrays = {}, {}
    for i, seq in enumerate(("SYN-01", "SYN-02")):
        gt, res = _synthetic(i)
        np.savetxt(tmp_path / f"{seq}-gt.txt", gt, fmt=["%d", "%d", "%.2f", "%.2f", "%.2f", "%.2f", "%d", "%d", "%.2f"],
                   delimiter=",")
        write_results(tmp_path / f"{seq}.txt", res)
        files[seq] = (tmp_path / f"{seq}-gt.txt", tmp_path / f"{seq}.txt", 25)
        arrays[seq] = (read_mot_file(tmp_path / f"{seq}-gt.txt"), read_mot_file(tmp_path / f"{seq}.txt"), 25)
    reference = _trackeval(tmp_path / "trackeval", files, benchmark)
    scores = {s: evaluate_sequence(*arrays[s], benchmark, s) for s in files}
    for seq, score in scores.items():
        _assert_same(score.results, reference[seq])
    _assert_same(combine(scores).results, reference["COMBINED_SEQ"])
    # The preprocessing mattered: scored as MOT15 (no classes) the distractors count as misses.
    mot15 = evaluate_sequence(*arrays["SYN-01"], "MOT15").summary()
    assert mot15["GT_IDs"] > scores["SYN-01"].summary()["GT_IDs"]
    assert mot15["FP"] != scores["SYN-01"].summary()["FP"]


def _track(tid: int, frames, x: float = 0.0) -> list[list[float]]:
    return [[f, tid, x, 10.0, 40.0, 80.0, 1, 1, 1] for f in frames]


def test_perfect_tracker_and_one_id_switch():
    gt = np.array(_track(1, range(1, 11)) + _track(2, range(1, 11), x=200.0), float)
    perfect = evaluate_sequence(gt, gt, 10).summary()
    assert perfect["HOTA"] == perfect["MOTA"] == perfect["IDF1"] == perfect["DetA"] == perfect["AssA"] == 1.0
    assert (perfect["IDSW"], perfect["FP"], perfect["FN"], perfect["TP"], perfect["MT"]) == (0, 0, 0, 20, 2)
    switched = np.array(_track(1, range(1, 6)) + _track(3, range(6, 11)) + _track(2, range(1, 11), x=200.0), float)
    score = evaluate_sequence(gt, switched, 10)
    summary = score.summary()
    assert (summary["IDSW"], summary["FP"], summary["FN"]) == (1, 0, 0)
    assert summary["MOTA"] == pytest.approx(19 / 20) and summary["DetA"] == 1.0 and summary["AssA"] < 1.0
    assert summary["IDF1"] == pytest.approx(15 / 20)  # object 1 keeps 5 of its 10 boxes under one id
    curve = score.hota_alpha_curve()
    assert curve["alpha"].shape == curve["HOTA"].shape == (19,)
    assert curve["alpha"][0] == pytest.approx(0.05) and np.mean(curve["HOTA"]) == pytest.approx(summary["HOTA"])
    empty = evaluate_sequence(gt, np.zeros((0, 10)), 10).summary()
    assert (empty["HOTA"], empty["MOTA"], empty["FN"], empty["TP"]) == (0.0, 0.0, 20, 0)


def test_bad_input_is_named():
    gt = np.array(_track(1, range(1, 6)), float)
    twice = np.array(_track(1, range(1, 6)) + _track(1, [3]), float)
    with pytest.raises(ValueError, match=r"sequence S: results has the same id more than once in frame 3: ids \[1\]"):
        evaluate_sequence(gt, twice, 5, name="S")
    nan = gt.copy()
    nan[2, 3] = np.nan
    with pytest.raises(ValueError, match="sequence S: results: NaN or infinite value in frame 3"):
        evaluate_sequence(gt, nan, 5, name="S")
    with pytest.raises(ValueError, match=r"sequence S: ground truth: frame 5 is outside 1..4"):
        evaluate_sequence(gt, gt, 4, name="S")
    with pytest.raises(ValueError, match="negative id -1"):
        evaluate_sequence(gt, np.c_[gt[:, :1], -np.ones(5), gt[:, 2:]], 5)
    with pytest.raises(ValueError, match=r"classes \[-1\].*use MOT15"):
        evaluate_sequence(np.c_[gt[:, :7], -np.ones(5)], gt, 5, "MOT17")
    assert evaluate_sequence(np.c_[gt[:, :7], -np.ones(5)], gt, 5, "MOT15").summary()["MOTA"] == 1.0
    with pytest.raises(ValueError, match="only pedestrians"):
        evaluate_sequence(gt, np.c_[gt[:, :7], np.full(5, 3.0)], 5)
    with pytest.raises(ValueError, match="benchmark must be one of"):
        evaluate_sequence(gt, gt, 5, "KITTI")
    with pytest.raises(ValueError, match="no sequence scores"):
        combine({})
