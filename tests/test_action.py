"""Online action localization end to end: the decoder's events, training targets, train / eval / export /
run from the command line, and the same events from ONNX Runtime as from PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from memstream.pipelines.action_decoder import DecoderConfig, OnlineActionDecoder
from memstream.pipelines.cli import main

T = 16
FPS = 8.0


def outputs(n: int, classes: int = 2) -> dict[str, np.ndarray]:
    probs = np.zeros((n, classes + 1), np.float32)
    probs[:, 0] = 1.0
    return {"class_probs": probs, "end_prob": np.zeros(n, np.float32), "start_prob": np.zeros(n, np.float32),
            "start_back": np.zeros(n, np.float32), "start_conf": np.ones(n, np.float32)}


def test_decoder_emits_once_with_start_from_memory_and_emission_time():
    dec = OnlineActionDecoder(["run", "jump"], FPS, DecoderConfig(top_classes=1))
    times = np.arange(T) / FPS + 100.0
    out = outputs(T)
    out["class_probs"][:, :] = [0.1, 0.1, 0.8]  # jump
    out["end_prob"][9:12] = [0.6, 0.9, 0.7]     # a peak at frame 10
    out["start_back"][10] = 240.0                # the start: 30 s before, far beyond the segment
    events = dec.update(out, times, T, emitted=102.0)
    actions = [e for e in events if e["type"] == "action"]
    assert len(actions) == 1
    a = actions[0]
    assert a["label"] == "jump" and a["class_index"] == 1
    assert a["end"] == pytest.approx(times[10] + 1 / FPS) and a["start"] == pytest.approx(times[10] - 30.0)
    assert a["emitted"] == 102.0 and a["score"] == pytest.approx(0.9 * 0.8, rel=1e-4)
    frames = [e for e in events if e["type"] == "frames"][0]
    assert frames["label"] == "jump" and len(frames["frame_labels"]) == T
    # The same action fired again in the next segment overlaps the emitted one: online NMS drops it.
    again = dec.update(out, times + T / FPS, T, emitted=104.0)
    assert not [e for e in again if e["type"] == "action" and e["end"] - e["start"] > 29]
    # The stream ends while "jump" is still going on: flush emits it, ending with the stream.
    last = dec.flush()
    assert last[-1] == {"type": "end", "events": dec.events}
    open_action = [e for e in last if e["type"] == "action"]
    assert len(open_action) == 1 and open_action[0]["at_stream_end"] and open_action[0]["label"] == "jump"
    assert open_action[0]["end"] == pytest.approx(times[-1] + T / FPS + 1 / FPS)


def test_decoder_top_classes_rank_the_hypotheses():
    dec = OnlineActionDecoder(["run", "jump", "sit"], FPS, DecoderConfig(top_classes=2))
    out = outputs(T, classes=3)
    out["class_probs"][:, :] = [0.1, 0.2, 0.6, 0.1]
    out["end_prob"][8] = 0.9
    out["start_back"][8] = 8.0
    actions = [e for e in dec.update(out, np.arange(T) / FPS, T, emitted=2.0) if e["type"] == "action"]
    assert [(e["label"], e["rank"]) for e in actions] == [("jump", 1), ("run", 2)]
    assert actions[0]["score"] == pytest.approx(0.9 * 0.6, rel=1e-4) and actions[1]["score"] == pytest.approx(0.18,
                                                                                                            rel=1e-4)
    assert actions[0]["start"] == actions[1]["start"] and actions[0]["end"] == actions[1]["end"]


def test_decoder_votes_the_class_over_the_whole_event():
    # A long "run" whose last frames look like "jump": the vote covers the event from its estimated start, so
    # the earlier segments (held in the decoder's probability buffer) outvote the last moments.
    dec = OnlineActionDecoder(["run", "jump"], FPS, DecoderConfig(top_classes=1))
    first, second = outputs(T), outputs(T)
    first["class_probs"][:, :] = [0.1, 0.8, 0.1]    # run
    second["class_probs"][:, :] = [0.1, 0.8, 0.1]
    second["class_probs"][4:13] = [0.1, 0.3, 0.6]   # the last 9 frames up to the end look like jump
    second["end_prob"][12] = 0.9
    second["start_back"][12] = T + 12.0             # the start: frame 0 of the first segment
    assert not [e for e in dec.update(first, np.arange(T) / FPS, T, emitted=2.0) if e["type"] == "action"]
    actions = [e for e in dec.update(second, (np.arange(T) + T) / FPS, T, emitted=4.0) if e["type"] == "action"]
    assert [e["label"] for e in actions] == ["run"] and actions[0]["start"] == pytest.approx(0.0)
    mean_run = (T * 0.8 + 4 * 0.8 + 9 * 0.3) / (T + 13)
    assert actions[0]["score"] == pytest.approx(0.9 * mean_run, rel=1e-4)
    # With a vote of the last 8 frames only, the same outputs would say "jump".
    short = OnlineActionDecoder(["run", "jump"], FPS, DecoderConfig(top_classes=1, class_frames=8))
    short.update(first, np.arange(T) / FPS, T, emitted=2.0)
    assert [e["label"] for e in short.update(second, (np.arange(T) + T) / FPS, T, emitted=4.0)
            if e["type"] == "action"] == ["jump"]


def test_decoder_trims_the_start_past_a_background_gap():
    # The start recalled from memory reaches back over an earlier action and a 2 s gap: the event starts after
    # the gap (the model's own background frames); a gap shorter than gap_s, or trailing background, does not cut.
    dec = OnlineActionDecoder(["run", "jump"], FPS, DecoderConfig(top_classes=1))
    first, second = outputs(T), outputs(T)
    first["class_probs"][:] = [0.1, 0.1, 0.8]        # frames 0-15: jump
    second["class_probs"][:] = [0.1, 0.8, 0.1]       # frames 16-31: run ...
    second["class_probs"][4:6] = [0.9, 0.05, 0.05]   # ... with a short 2-frame dip at 20-21
    first["class_probs"][8:16] = [0.9, 0.05, 0.05]   # 8-15: a 1 s background gap
    second["class_probs"][14:16] = [0.9, 0.05, 0.05]  # trailing background before the end fires
    second["end_prob"][15] = 0.9
    second["start_back"][15] = 31.0                  # the estimate: frame 0
    dec.update(first, np.arange(T) / FPS, T, emitted=2.0)
    actions = [e for e in dec.update(second, (np.arange(T) + T) / FPS, T, emitted=4.0) if e["type"] == "action"]
    assert len(actions) == 1 and actions[0]["label"] == "run"
    assert actions[0]["start"] == pytest.approx(16 / FPS) and actions[0]["end"] == pytest.approx(32 / FPS)
    # gap_s=0 keeps the model's estimate as it is.
    plain = OnlineActionDecoder(["run", "jump"], FPS, DecoderConfig(top_classes=1, gap_s=0.0))
    plain.update(first, np.arange(T) / FPS, T, emitted=2.0)
    kept = [e for e in plain.update(second, (np.arange(T) + T) / FPS, T, emitted=4.0) if e["type"] == "action"]
    assert kept[0]["start"] == pytest.approx(0.0)
    # All background: nothing to trim to (the estimate stands).
    assert OnlineActionDecoder(["run"], FPS)._action_begins(np.ones(20, bool)) == 0
    with pytest.raises(ValueError, match="gap_s"):
        DecoderConfig(gap_s=-1.0)


def test_decoder_ends_an_action_at_a_gap_the_end_detector_missed():
    dec = OnlineActionDecoder(["run", "jump"], FPS, DecoderConfig(top_classes=1))
    first, second = outputs(T), outputs(T)
    first["class_probs"][:] = [0.1, 0.8, 0.1]     # frames 0-15: run, the end detector silent throughout
    second["class_probs"][:4] = [0.1, 0.8, 0.1]   # 16-19: run; 20-31: background
    second["start_back"][3] = 19.0                # the estimate at the last action frame: frame 0
    assert not [e for e in dec.update(first, np.arange(T) / FPS, T, emitted=2.0) if e["type"] == "action"]
    actions = [e for e in dec.update(second, (np.arange(T) + T) / FPS, T, emitted=4.0) if e["type"] == "action"]
    assert len(actions) == 1 and actions[0]["ended_by"] == "gap" and actions[0]["label"] == "run"
    assert actions[0]["start"] == pytest.approx(0.0) and actions[0]["end"] == pytest.approx(20 / FPS)
    assert actions[0]["score"] == pytest.approx(0.5 * 0.8, rel=1e-4) and actions[0]["emitted"] == 4.0
    # When the end detector marked the end, the gap adds nothing; gap_end_score=0 turns gap ends off.
    for config, fire in ((DecoderConfig(top_classes=1), True), (DecoderConfig(top_classes=1, gap_end_score=0.0),
                                                                False)):
        dec = OnlineActionDecoder(["run", "jump"], FPS, config)
        marked = {k: v.copy() for k, v in second.items()}
        if fire:
            marked["end_prob"][3] = 0.9
        dec.update(first, np.arange(T) / FPS, T, emitted=2.0)
        got = [e for e in dec.update(marked, (np.arange(T) + T) / FPS, T, emitted=4.0) if e["type"] == "action"]
        assert [e["ended_by"] for e in got] == (["detector"] if fire else [])


def test_decoder_ignores_padding_and_low_scores():
    dec = OnlineActionDecoder(["run"], FPS, DecoderConfig(end_threshold=0.7))
    out = outputs(T, classes=1)
    out["end_prob"][3] = 0.65      # below the threshold
    out["end_prob"][14] = 0.99     # padding (n_valid = 12)
    events = dec.update(out, np.arange(T) / FPS, 12, emitted=1.5)
    assert not [e for e in events if e["type"] == "action"]
    with pytest.raises(ValueError, match="end_threshold"):
        DecoderConfig(end_threshold=1.5)


def test_segmenter_resamples_frames_to_the_model_rate():
    from memstream.pipelines.segmenter import VideoSegmenter

    seg = VideoSegmenter(4, (8, 8), 30.0, sample_fps=8.0)
    out = []
    for i in range(90):  # 3 s at 30 fps
        out += seg.push(np.full((16, 16, 3), i, np.uint8), i / 30.0)
    out += seg.flush()
    kept = np.concatenate([s.times[s.valid] for s in out])
    assert len(kept) == 24 and out[0].rate == 8.0
    assert np.abs(np.diff(kept) - 1 / 8).max() < 1 / 30 + 1e-9  # within one source frame of the 8 fps grid


def one_action_objective(frames: int):
    """A tiny model and a ``frames``-long clip holding one action (class 3 at frames 5-14), crops of 20 frames."""
    from memstream.models import build
    from memstream.pipelines.action import ActionClip, ActionObjective

    model = build("action-small", segment=4, dim=32, heads=2, layers=1, image_size=32)
    labels = np.zeros(frames, np.int64)
    labels[5:15] = 3
    clip = ActionClip("v", np.zeros((frames, 32, 32, 3), np.uint8), labels, [(2, 5, 14)])
    return model, clip, ActionObjective(model, [clip], clip_segments=5, batch=1)


def test_training_targets():
    model, clip, objective = one_action_objective(20)
    batch = objective.collate([(clip, 0.0)])
    assert batch["end"][0].nonzero().flatten().tolist() == [14]
    assert batch["end_w"][0, 13] == 0 and batch["end_w"][0, 15] == 0 and batch["end_w"][0, 14] == 1
    assert batch["start"][0].nonzero().flatten().tolist() == [5]
    assert batch["start_of"][0].tolist() == [-1] * 5 + [5] * 10 + [-1] * 5
    assert batch["teacher"][0].tolist() == [-1, 1, -1, -1, -1]  # segment 1, frame 1 (= frame 5)
    from memstream.pipelines.action import action_loss

    loss, _, metrics = action_loss(model, batch)
    assert torch.isfinite(loss) and metrics["samples"] == 20


def test_collate_starts_an_action_in_progress_at_the_crop_start():
    # A crop is a stream: an action under way at its first frame starts there (as at a live stream's start).
    _, clip, objective = one_action_objective(40)
    batch = objective.collate([(clip, 8 / 20)])  # the crop begins at frame 8, inside the action
    assert batch["start"][0].nonzero().flatten().tolist() == [0]
    assert batch["start_w"][0, :3].tolist() == [1.0, 0.0, 1.0]
    assert batch["start_of"][0].tolist() == [0] * 7 + [-1] * 13
    assert batch["end"][0].nonzero().flatten().tolist() == [6]
    assert batch["teacher"][0].tolist() == [0, -1, -1, -1, -1]


@pytest.fixture(scope="module")
def tiny_actions(tmp_path_factory):
    from memstream.pipelines.synth_actions import generate

    out = tmp_path_factory.mktemp("actions") / "data"
    generate(out, train=3, val=1, test=2, seconds=(24.0, 30.0), jobs=1)
    return out


@pytest.fixture(scope="module")
def trained(tiny_actions, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ckpt"
    assert main(["train", "action", "--data", str(tiny_actions), "--out", str(out), "--steps", "3",
                 "--clip-segments", "6", "--log-every", "1", "--segment", "8"]) == 0
    return out


def test_train_eval_export_run(trained, tiny_actions, tmp_path, capsys):
    config = json.loads((trained / "config.json").read_text())
    assert config["model"] == "action" and config["command"].startswith("memstream train action")
    assert len((trained / "train_log.jsonl").read_text().splitlines()) >= 3
    capsys.readouterr()
    assert main(["eval", "action", "--data", str(tiny_actions), "--checkpoint", str(trained), "--json",
                 "--plot", str(tmp_path / "eval.png"), "--results", str(tmp_path / "results.json")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["map"]) == {"0.3", "0.4", "0.5", "0.6", "0.7", "mean"}
    assert 0.0 <= result["frame_map"] <= 1.0 and "latency_s" in result and result["videos"] == 2
    assert (tmp_path / "eval.png").stat().st_size > 1000
    assert "results" in json.loads((tmp_path / "results.json").read_text())
    assert main(["export", "action", "--checkpoint", str(trained), "--out", str(tmp_path / "a.onnx")]) == 0
    video = sorted((tiny_actions / "videos").glob("test_*.mp4"))[0]
    run = tmp_path / "run"
    assert main(["run", "action", "--source", str(video), "--checkpoint", str(trained), "--out", str(run),
                 "--overlay", str(tmp_path / "overlay.mp4"), "--end-threshold", "0.05"]) == 0
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert any(e["type"] == "frames" for e in events) and events[-1]["type"] in ("end", "stream_end", "stream")
    import cv2

    cap = cv2.VideoCapture(str(tmp_path / "overlay.mp4"))
    assert cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 384 and cap.get(cv2.CAP_PROP_FRAME_COUNT) > 100
    cap.release()


def test_onnx_events_equal_torch_events(trained, tiny_actions):
    from memstream.pipelines.action import load_clips
    from memstream.pipelines.action_eval import backend_for
    from memstream.pipelines.action_task import load_action_model, localize

    model, _ = load_action_model(trained)
    clips = load_clips(tiny_actions / "annotations.json", "test", model.cfg)
    torch_backend, onnx_backend = backend_for(model, "torch"), backend_for(model, "onnx")
    # An untrained model's end scores crowd together: put the threshold in the widest gap between the scores
    # near their median, so it fires often and no 1e-7 difference between runtimes sits on the threshold.
    with torch.no_grad():
        ends = np.sort(np.concatenate([model.forward_sequence(torch.from_numpy(c.x[: len(c.x) // 16 * 16])[None])
                                       .outputs.end_prob[0].numpy() for c in clips]))
    middle = ends[len(ends) // 4: 3 * len(ends) // 4]
    k = int(np.argmax(np.diff(middle)))
    decoder = DecoderConfig(end_threshold=float(middle[k] + middle[k + 1]) / 2)

    def rounded(events):
        return [{**e, "score": round(e["score"], 4), "start_confidence": round(e["start_confidence"], 3)}
                for e in events]

    total = 0
    for clip in clips:
        a = localize(torch_backend, clip.x, model.cfg, decoder)
        b = localize(onnx_backend, clip.x, model.cfg, decoder)
        assert rounded(a["events"]) == rounded(b["events"])
        np.testing.assert_allclose(a["class_probs"], b["class_probs"], atol=1e-4)
        total += len(a["events"])
    assert total > 0


def test_bad_input_is_named(tmp_path, tiny_actions, trained):
    assert main(["train", "action", "--data", str(tmp_path), "--out", str(tmp_path / "x")]) == 2  # no annotations
    assert main(["eval", "action", "--data", str(tiny_actions), "--checkpoint", str(tmp_path / "nope")]) == 2
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    assert main(["run", "action", "--source", str(bad), "--checkpoint", str(trained)]) == 2


def test_feature_input_train_and_eval(tiny_actions, tmp_path, capsys):
    """The THUMOS14 convention: one (T, C) array per video, fed straight to the core."""
    from memstream.pipelines.action_data import read_annotations

    features = tmp_path / "features"
    features.mkdir()
    rng = np.random.default_rng(0)
    for name, video in read_annotations(tiny_actions / "annotations.json").items():
        np.save(features / f"{name}.npy", rng.standard_normal((video.frames // 2, 16)).astype(np.float32))
    out = tmp_path / "ckpt"
    args = ["--data", str(tiny_actions), "--features", str(features)]
    assert main(["train", "action", *args, "--preset", "action-thumos", "--feature-dim", "16", "--fps", "4",
                 "--out", str(out), "--steps", "2", "--clip-segments", "4"]) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["input"] == "features" and config["feature_dim"] == 16 and config["fps"] == 4.0
    capsys.readouterr()
    assert main(["eval", "action", *args, "--checkpoint", str(out), "--json"]) == 0
    assert "map" in json.loads(capsys.readouterr().out)
    assert main(["eval", "action", "--data", str(tiny_actions), "--checkpoint", str(out)]) == 2  # no --features


def test_bundled_model_runs_on_the_bundled_clip(tmp_path, capsys):
    from memstream.pipelines.action_task import bundled_action_dir

    if not (bundled_action_dir() / "model.safetensors").is_file():
        pytest.skip("no bundled action model in this checkout")
    assert main(["run", "action", "--out", str(tmp_path / "run")]) == 0  # no --source: the bundled clip
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    actions = [e for e in events if e["type"] == "action"]
    assert actions and all(e["emitted"] >= e["end"] - 1e-6 for e in actions)  # emitted only once known
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["total"]["segments"] == 75 * 8 // 16 + 1
    capsys.readouterr()
    assert main(["demo", "--only", "action", "--overlay", str(tmp_path / "demo.mp4")]) == 0
    out = capsys.readouterr().out
    assert "mAP@0.5 on this clip" in out and (tmp_path / "demo.mp4").stat().st_size > 10_000
