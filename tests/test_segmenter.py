"""Resampler and segmenters: offline equality, packet-size invariance, padding, resolution changes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torchaudio
from memstream.pipelines.resample import StreamingResampler
from memstream.pipelines.segmenter import AudioSegmenter, VideoSegmenter


@pytest.mark.parametrize("orig, new", [(44100, 16000), (22050, 16000), (8000, 16000), (48000, 16000), (16000, 16000)])
def test_streaming_resampler_equals_offline_torchaudio(orig, new):
    rng = np.random.default_rng(orig)
    x = rng.uniform(-1, 1, (2, 9_999)).astype(np.float32)
    expected = torchaudio.functional.resample(torch.from_numpy(x), orig, new).numpy()
    resampler, parts, i = StreamingResampler(orig, new, channels=2), [], 0
    while i < x.shape[1]:
        n = int(rng.integers(1, 2_000))
        parts.append(resampler.push(x[:, i:i + n]))
        i += n
    parts.append(resampler.flush())
    got = np.concatenate(parts, axis=1)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_resampler_rejects_bad_rates():
    with pytest.raises(ValueError, match="positive integer rates"):
        StreamingResampler(0, 16000)


def _segments(samples: np.ndarray, packet: int):
    seg = AudioSegmenter(4000, 16000, 44100, channels=2)
    out = []
    for i in range(0, len(samples), packet):
        out += seg.push(samples[i:i + packet])
    return out + seg.flush()


def test_audio_segments_do_not_depend_on_packet_size():
    samples = np.random.default_rng(1).uniform(-1, 1, (44100 + 777, 2)).astype(np.float32)
    ten_ms, one_s, odd = _segments(samples, 441), _segments(samples, 44100), _segments(samples, 7)
    assert len(ten_ms) == len(one_s) == len(odd) == 5
    for a, b, c in zip(ten_ms, one_s, odd, strict=True):
        assert np.array_equal(a.data, b.data) and np.array_equal(a.data, c.data)
        assert np.array_equal(a.valid, b.valid) and a.start == b.start == c.start
    last = ten_ms[-1]
    total = int(np.ceil(16000 * len(samples) / 44100))
    assert last.num_valid == total - 4 * 4000
    assert not last.valid[last.num_valid:].any() and not last.data[last.num_valid:].any()
    reused = []  # a source that writes every packet into one buffer: the same segments
    seg, buffer = AudioSegmenter(4000, 16000, 44100, channels=2), np.empty((441, 2), np.float32)
    for i in range(0, len(samples), 441):
        chunk = samples[i:i + 441]
        buffer[:len(chunk)] = chunk
        reused += seg.push(buffer[:len(chunk)])
        buffer[:] = np.nan
    reused += seg.flush()
    assert all(np.array_equal(a.data, b.data) for a, b in zip(ten_ms, reused, strict=True))


def test_audio_at_the_model_rate_is_cut_straight_and_copied():
    """Mono at the model's rate skips re-chunking: segments are the samples themselves, for any packet size, and
    a source that reuses one packet buffer (a microphone callback's) does not change segments already cut."""
    samples = np.random.default_rng(2).uniform(-1, 1, 3 * 1280 + 100).astype(np.float32)
    for packet in (160, 16000, 7, 1280):  # 16000 and 1280: whole segments inside one packet, cut without a copy
        seg = AudioSegmenter(1280, 16000, 16000)
        buffer = np.empty((packet, 1), np.float32)  # one buffer for every packet
        out = []
        for i in range(0, len(samples), packet):
            chunk = samples[i:i + packet]
            buffer[:len(chunk), 0] = chunk
            out += seg.push(buffer[:len(chunk)])
            buffer[:] = np.nan  # the source overwrites its buffer after the call
        out += seg.flush()
        assert [s.index for s in out] == [0, 1, 2, 3] and [s.start for s in out] == [0, 0.08, 0.16, 0.24]
        assert np.array_equal(np.concatenate([s.data[:s.num_valid] for s in out]), samples)
        assert out[-1].num_valid == 100 and not out[-1].data[100:].any() and not out[-1].valid[100:].any()
        assert all(s.valid.all() for s in out[:-1])
        assert all(s.num_valid == np.count_nonzero(s.valid) for s in out)


@pytest.mark.parametrize("native, channels", [(16000, 1), (44100, 2)], ids=["direct", "resampled"])
def test_a_gap_in_packet_times_is_filled_with_silence(native, channels):
    """Audio lost upstream (a microphone's overflow: the packet times jump) gives the segments, times and values,
    of the same stream with silence where the loss was; times that join up change nothing."""
    rng = np.random.default_rng(1)
    packet = native // 50  # 20 ms
    x = rng.uniform(-0.5, 0.5, (60 * packet, channels)).astype(np.float32)
    lost = range(20, 27)  # 7 packets (140 ms) never arrive

    def run(with_times: bool, silence: bool):
        seg, out = AudioSegmenter(4000, 16000, native, channels=channels), []
        for k in range(60):
            if k in lost and not silence:
                continue
            data = np.zeros_like(x[:packet]) if k in lost else x[k * packet:(k + 1) * packet]
            out += seg.push(data, k * packet / native if with_times else None)
        return out + seg.flush(), seg

    gapped, seg = run(with_times=True, silence=False)
    filled, _ = run(with_times=True, silence=True)
    untimed, _ = run(with_times=False, silence=True)
    assert seg.filled == len(lost) * packet
    assert len(gapped) == len(filled) == len(untimed)
    for a, b, c in zip(gapped, filled, untimed, strict=True):
        assert a.start == b.start == c.start and a.index == b.index
        np.testing.assert_array_equal(a.valid, b.valid)
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(b.data, c.data)
    contiguous, _ = run(with_times=False, silence=False)
    valid = sum(int(g.valid.sum()) for g in gapped)
    assert sum(int(g.valid.sum()) for g in contiguous) < valid  # without times the loss shortens the stream


def test_a_jump_beyond_max_gap_is_logged_not_filled(caplog):
    seg = AudioSegmenter(1600, 16000, 16000, max_gap=2.0)
    x = np.ones((800, 1), np.float32)
    with caplog.at_level(logging.WARNING):
        out = seg.push(x, 0.0) + seg.push(x, 0.05) + seg.push(x, 3600.0) + seg.push(x, 3600.05)
        out += seg.push(x, 3600.2)  # a real 100 ms loss after the jump is filled again
    assert seg.filled == 1600 and "taken as contiguous" in caplog.text
    assert [s.start for s in out] == [0.0, 0.1, 0.2] and all(s.valid.all() for s in out)


def test_video_segmenter_pads_and_resizes(caplog):
    seg = VideoSegmenter(4, size=(32, 48), rate=10)
    frames = [np.full((64, 96, 3), i, np.uint8) for i in range(6)]
    with caplog.at_level(logging.WARNING):
        out = [s for i, f in enumerate(frames) for s in seg.push(f, i / 10)] + seg.flush()
    assert "changed" not in caplog.text  # a fixed target size is not a resolution change
    assert [s.num_valid for s in out] == [4, 2]
    assert out[1].data.shape == (4, 32, 48, 3) and np.isnan(out[1].times[2:]).all()


def test_video_resolution_change_mid_stream_is_logged_once_and_resized(caplog):
    seg = VideoSegmenter(2)
    sizes = [(40, 60), (40, 60), (80, 120), (80, 120), (20, 30)]
    with caplog.at_level(logging.WARNING):
        out = [s for i, (h, w) in enumerate(sizes) for s in seg.push(np.zeros((h, w, 3), np.uint8), i)]
    assert caplog.text.count("changed") == 1
    assert all(s.data.shape[1:3] == (40, 60) for s in out)
