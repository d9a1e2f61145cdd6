"""Tracking end to end: training objective, whole-sequence tracking (own/public/boxes-only, PyTorch/ONNX), the
runner task with its MOTChallenge sink, and the track CLI commands on a tiny generated scene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from memstream.models import build, save_checkpoint
from memstream.pipelines.cli import main
from memstream.pipelines.mot_data import find_sequences, read_mot_file, read_sequence

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "mot" / "MOT15"
TINY = {"dim": 32, "heads": 2, "layers": 1, "memory_length": 4, "image_size": (64, 96), "max_tracks": 8,
        "max_detections": 8, "neck_dim": 16, "embed_dim": 16}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from memstream.pipelines.synth_tracks import generate

    out = tmp_path_factory.mktemp("tracks") / "data"
    generate(out, train=1, val=0, test=1, frames=40, size=(160, 120), gap=(1, 2), speed=(1.5, 2.5), reentries=1,
             objects=(3, 5))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build("track-small", **TINY)
    out = tmp_path_factory.mktemp("ckpt") / "track-tiny"
    save_checkpoint(out, model, {"model": "track", "config": model.cfg.to_dict()})
    return out


def test_objective_targets_and_loss(scenes):
    from memstream.pipelines.track import TrackObjective, load_sequences, track_loss

    torch.manual_seed(0)
    model = build("track-small", **TINY)
    sequences = load_sequences(scenes / "train", model.cfg.image_size)
    objective = TrackObjective(model, sequences, clip_frames=6, batch=2, steps_per_epoch=2, miss_rate=0.0,
                               false_positives=0.0)
    batch = next(iter(objective.batches(0, 1, seed=0, epoch=0)))
    target, assign, dets = batch["target"], batch["assign"], batch["dets"]
    valid = dets[..., 5] > 0.5
    assert ((target >= 0) == valid).all()
    n = model.cfg.max_tracks
    continued = 0
    for r in range(2):
        for t in range(6):
            # a detection may continue a slot only once an earlier detection was written into it (assign)
            written = {int(s) for s in np.flatnonzero((assign[r, : t + 1] >= 0).any(0).numpy())}
            for s in target[r, t][valid[r, t]].tolist():
                assert s == n or s in written
                continued += s < n
    assert continued > 0
    # every visible object's centre cell is a heatmap peak of exactly 1 (the focal loss's positives)
    peaks, centres = int((batch["heat"] == 1.0).sum()), int(batch["centre_ok"].sum())
    assert 0 < peaks <= centres and peaks >= 0.9 * centres
    loss, _, stats = track_loss(model, batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.detector.heat[-1].weight.grad is not None and model.associate.pair[-1].weight.grad is not None
    assert 0.0 <= stats["assoc_acc"] <= 1.0


@pytest.mark.parametrize("public", [False, True])
def test_track_sequence_torch_equals_onnx(scenes, checkpoint, public):
    from memstream.pipelines.track_decoder import TrackRules
    from memstream.pipelines.track_task import track_sequence

    seq = read_sequence(find_sequences(scenes / "test")[0])
    rules = TrackRules(det_thresh=0.0, new_track_thresh=0.05, match_thresh=0.1, min_hits=1)
    ours = track_sequence(seq, checkpoint=checkpoint, public=public, rules=rules)
    onnx = track_sequence(seq, checkpoint=checkpoint, public=public, rules=rules, backend="onnx")
    assert ours.shape[1] == 10 and len(ours) > 0
    assert np.array_equal(ours[:, :2], onnx[:, :2])  # identical frames and ids
    assert np.allclose(ours[:, 2:6], onnx[:, 2:6], atol=1e-3 * max(seq.info.width, seq.info.height))
    assert (ours[:, 0] >= 1).all() and (ours[:, 0] <= seq.info.length).all()


def test_baselines_and_bad_tracker(scenes):
    from memstream.pipelines.track_task import track_sequence

    seq = read_sequence(find_sequences(scenes / "test")[0])
    for name in ("iou", "bytetrack"):
        rows = track_sequence(seq, tracker=name)
        assert rows.shape[1] == 10 and len(rows) > 0
    with pytest.raises(ValueError, match="tracker='deepsort'"):
        track_sequence(seq, tracker="deepsort")


@pytest.mark.skipif(not (REALDATA / "TUD-Campus" / "det").is_dir(), reason="../shared/realdata/mot not present")
def test_boxes_only_on_real_mot15(checkpoint):
    from dataclasses import replace

    from memstream.pipelines.track_metrics import evaluate_sequence
    from memstream.pipelines.track_task import track_sequence

    seq = read_sequence(REALDATA / "TUD-Campus")  # no images: public detections, no appearance
    with pytest.raises(ValueError, match="imWidth"):
        track_sequence(seq, checkpoint=checkpoint)
    seq.info = replace(seq.info, width=640, height=480)
    rows = track_sequence(seq, checkpoint=checkpoint)
    assert len(rows) and rows[:, 2:6].max() < 1000
    summary = evaluate_sequence(seq.gt, rows, seq.info.length, "MOT15").summary()
    assert 0.0 <= summary["HOTA"] <= 1.0


def _mp4(scenes: Path, path: Path) -> Path:
    import cv2

    seq = read_sequence(find_sequences(scenes / "test")[0])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), seq.info.frame_rate,
                             (seq.info.width, seq.info.height))
    for _, image in seq.frames():
        writer.write(image)
    writer.release()
    return path


def test_cli_train_export_run_eval(scenes, checkpoint, tmp_path, capsys):
    import onnx

    assert main(["train", "track", "--data", str(scenes / "train"), "--out", str(tmp_path / "run"), "--steps", "2",
                 "--clip-frames", "4", "--log-every", "1", "--threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and (tmp_path / "run" / "model.safetensors").is_file()
    assert main(["export", "track", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "t.onnx"),
                 "--public"]) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "t.onnx")).metadata_props}
    assert json.loads(meta["memstream.detections"]) == "public"
    assert set(json.loads(meta["memstream.extra_inputs"])) == {"assign", "dets"}
    capsys.readouterr()
    video = _mp4(scenes, tmp_path / "clip.mp4")
    rules = tmp_path / "rules.yaml"
    rules.write_text("tracker_type: memstream\ndet_thresh: 0.0\nnew_track_thresh: 0.05\nmin_hits: 1\n")
    out = tmp_path / "out"
    assert main(["run", "track", "--source", str(video), "--checkpoint", str(checkpoint), "--rules", str(rules),
                 "--out", str(out), "--overlay", str(tmp_path / "overlay.mp4")]) == 0
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    frames = [e for e in events if e.get("type") == "tracks"]
    assert len(frames) == 40 and frames[0]["size"] == [160, 120]
    results = read_mot_file(out / "0.txt")
    assert len(results) == sum(len(e["tracks"]) for e in frames) > 0
    assert results[:, 2:6].max() <= 200
    assert (tmp_path / "overlay.mp4").stat().st_size > 0
    rules.write_text("tracker_type: memstream\nmax_age: 3\n")
    assert main(["run", "track", "--source", str(video), "--checkpoint", str(checkpoint), "--rules",
                 str(rules)]) == 2
    assert "max_age" in capsys.readouterr().err
    assert main(["eval", "track", "--data", str(scenes / "test"), "--checkpoint", str(checkpoint), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"HOTA", "AssA", "IDF1", "MOTA", "IDSW"} <= set(result["combined"])


def test_result_sink_writes_frame_by_frame(tmp_path):
    """Rows reach the file as each frame's event arrives (a killed run keeps them, a day-long stream holds none in
    memory), ids sorted within a frame, the same lines write_results gives for the whole run."""
    from memstream.pipelines.mot_data import write_results
    from memstream.pipelines.track import MotResultSink

    sink = MotResultSink(tmp_path / "out")
    events = [{"type": "tracks", "stream": "cam", "frame": f, "size": [200, 100],
               "tracks": [{"id": i, "box": [0.1 * i, 0.2, 0.1 * i + 0.05, 0.6], "score": 0.5 + 0.01 * f}
                          for i in (3, 1)]} for f in (1, 2)]
    sink.write({"type": "segment", "stream": "cam"})  # not a tracks event: ignored
    sink.write(events[0])
    assert (tmp_path / "out" / "cam.txt").read_text().splitlines()[0].startswith("1,1,20.00,20.00,10.00,40.00,0.5100")
    sink.write(events[1])
    bad = {"type": "tracks", "stream": "cam", "frame": 3, "size": [200, 100],
           "tracks": [{"id": 1, "box": [0.1, 0.2, 0.1, 0.6], "score": 0.5}]}  # zero width: a MOT file cannot hold it
    sink.write(bad)
    sink.close()
    sink.close()
    rows = [(e["frame"], t["id"], t["box"][0] * 200, t["box"][1] * 100, (t["box"][2] - t["box"][0]) * 200,
             (t["box"][3] - t["box"][1]) * 100, t["score"]) for e in events for t in e["tracks"]]
    write_results(tmp_path / "whole.txt", rows)
    assert (tmp_path / "out" / "cam.txt").read_text() == (tmp_path / "whole.txt").read_text()


def test_result_sink_closes_a_stream_file_when_the_stream_ends(tmp_path):
    """Cameras that come and go for days: each stream's file is complete and closed when the runner says the
    stream ended, so the sink holds no descriptor per stream it ever served."""
    from memstream.pipelines.track import MotResultSink

    sink = MotResultSink(tmp_path / "out")
    for k in range(50):
        sink.write({"type": "tracks", "stream": f"cam{k}", "frame": 1, "size": [100, 100],
                    "tracks": [{"id": 1, "box": [0.1, 0.1, 0.5, 0.5], "score": 0.9}]})
        file = sink.files[f"cam{k}"]
        sink.end_stream(f"cam{k}")
        assert file.closed and sink.files == {}
        assert (tmp_path / "out" / f"cam{k}.txt").read_text() == "1,1,10.00,10.00,40.00,40.00,0.9000,-1,-1,-1\n"
    sink.end_stream("never-seen")  # a stream without tracks events: nothing to close
    sink.close()


def test_trails_keep_only_live_tracks(checkpoint):
    """The overlay's trails follow the decoder's live tracks: ids it has let go are dropped, however many come."""
    from memstream.pipelines.segmenter import Segment
    from memstream.pipelines.track_task import TrackTask

    task = TrackTask(checkpoint=str(checkpoint))
    decoder = task.new_decoder("0")
    n, k = task.model.cfg.max_tracks, task.model.cfg.max_detections
    segment = Segment(np.zeros((1, 4, 4, 3), np.uint8), np.ones(1, bool), 0.0, 10.0, 0, np.zeros(1))
    rng = np.random.default_rng(0)
    for _ in range(300):  # detections and associations at random: tracks are born and die all the time
        corner = rng.uniform(0, 0.5, (k, 2))
        logits = rng.normal(0, 3, (k, n + 1))
        outputs = {"det_box": np.concatenate((corner, corner + 0.3), 1).astype(np.float32),
                   "det_score": rng.uniform(0.0, 1.0, k).astype(np.float32), "det_valid": rng.random(k) < 0.3,
                   "logp": (logits - np.log(np.exp(logits).sum(1, keepdims=True))).astype(np.float32)}
        decoder.update(outputs, segment)
    assert decoder.decoder.next_id > 3 * n  # many ids were handed out
    assert set(decoder.trails) <= {t.id for t in decoder.decoder.slots.values()}
