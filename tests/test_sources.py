"""Recorded sources: real files decode to the right rates and durations, stdin PCM round-trips, the
factory routes every spec, and every kind of bad input gives a one-line SourceError naming the source
(or a logged skip where the stream can go on). Live sources: test_sources_live.py."""

from __future__ import annotations

import io
import logging
import math
import struct
import sys

import av
import numpy as np
import pytest
import soundfile as sf
from memstream.pipelines.segmenter import AudioSegmenter, VideoSegmenter
from memstream.pipelines.sources import (
    PCM_FORMATS,
    AudioFileSource,
    CameraSource,
    ImageFolderSource,
    MicrophoneSource,
    StdinPcmSource,
    UrlVideoSource,
    VideoFileSource,
    make_source,
    open_source,
)
from memstream.pipelines.streams import SourceError
from sources_media import REALDATA, write_resolution_change, write_video

ASR = sorted(p for p in (REALDATA / "asr").glob("*") if p.suffix in (".wav", ".flac")) if REALDATA.is_dir() else []
CLIPS = sorted((REALDATA / "video").glob("*.mp4")) if REALDATA.is_dir() else []
needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"real sample data not found at {REALDATA}")


def _drain(source):
    with source:
        packets = list(source)
    times = [p.time for p in packets]
    assert all(b >= a for a, b in zip(times, times[1:])), "packet times must not go backwards"
    return packets


# -- real files -------------------------------------------------------------------------------------


@needs_realdata
@pytest.mark.parametrize("path", ASR, ids=lambda p: p.name)
def test_real_audio_rate_channels_duration(path):
    ref = sf.info(str(path))
    source = AudioFileSource(path)
    packets = _drain(source)
    assert (source.info.rate, source.info.channels) == (ref.samplerate, ref.channels)
    assert source.info.duration == pytest.approx(ref.duration)
    samples = sum(len(p.data) for p in packets)
    assert abs(samples - ref.frames) <= max(len(p.data) for p in packets)  # within one packet
    assert all(p.data.dtype == np.float32 and p.data.shape[1] == ref.channels for p in packets)
    assert packets[-1].time == pytest.approx((samples - len(packets[-1].data)) / ref.samplerate)
    assert source.stats.items == samples and not source.stats.errors


@needs_realdata
@pytest.mark.parametrize("name", ["ljspeech_LJ002-0020.wav", "stereo_two_speakers.wav"])
def test_real_audio_through_the_segmenter(name):
    source = AudioFileSource(REALDATA / "asr" / name)  # 22.05 kHz mono / 16 kHz stereo -> 16 kHz mono
    with source:
        seg = AudioSegmenter(16000, 16000, int(source.info.rate), source.info.channels)
        segments = [s for p in source for s in seg.push(p.data)] + seg.flush()
    frames = sf.info(str(REALDATA / "asr" / name)).frames
    assert sum(s.num_valid for s in segments) == math.ceil(frames * 16000 / source.info.rate)


@needs_realdata
@pytest.mark.parametrize("backend", ["opencv", "pyav"])
@pytest.mark.parametrize("path", CLIPS, ids=lambda p: p.name)
def test_real_video_fps_frames_size(path, backend):
    with av.open(str(path)) as ref:
        stream = ref.streams.video[0]
        fps, frames, size = float(stream.average_rate), stream.frames, (stream.height, stream.width)
    source = VideoFileSource(path, backend=backend)
    packets = _drain(source)
    assert source.info.rate == pytest.approx(fps) and source.info.size == size
    assert len(packets) == frames and {p.data.shape for p in packets} == {(*size, 3)}
    assert all(p.data.dtype == np.uint8 for p in packets)
    assert [p.time for p in packets] == pytest.approx([i / fps for i in range(frames)], abs=1e-3)
    assert source.info.duration == pytest.approx(frames / fps, abs=0.1)


@needs_realdata
def test_real_video_colours_are_rgb():
    path = CLIPS[0]
    with VideoFileSource(path) as cv, VideoFileSource(path, backend="pyav") as pyav:
        a, b = next(iter(cv)).data.astype(int), next(iter(pyav)).data.astype(int)
    assert np.abs(a - b).mean() < 3  # PyAV decodes to RGB itself: same channel order


@needs_realdata
def test_audio_track_of_a_video():
    path = REALDATA / "video" / "big_buck_bunny_small.mp4"
    source = make_source(str(path), kind="audio")
    packets = _drain(source)
    with av.open(str(path)) as ref:
        stream = ref.streams.audio[0]
        rate, channels = stream.rate, stream.codec_context.layout.nb_channels
        duration = float(stream.duration * stream.time_base)
    assert (source.info.rate, source.info.channels) == (rate, channels)
    assert sum(len(p.data) for p in packets) / rate == pytest.approx(duration, abs=0.05)
    assert all(np.isfinite(p.data).all() and np.abs(p.data).max() <= 1.0 for p in packets)


# -- generated media: resolution change, image folders ----------------------------------------------


def test_resolution_change_mid_stream(tmp_path, caplog):
    path = tmp_path / "change.ts"
    write_resolution_change(path, frames=20)
    shapes = {}
    for backend in ("pyav", "opencv"):
        packets = _drain(VideoFileSource(path, backend=backend))
        assert len(packets) >= 38  # both parts decode (a frame at the splice may be lost)
        shapes[backend] = [p.data.shape[:2] for p in packets]
        segmenter = VideoSegmenter(8)
        with caplog.at_level(logging.WARNING):
            segments = [s for p in packets for s in segmenter.push(p.data, p.time)] + segmenter.flush()
        assert {s.data.shape for s in segments} == {(8, 120, 160, 3)}
        assert sum(s.num_valid for s in segments) == len(packets)
    assert set(shapes["pyav"]) == {(120, 160), (240, 320)}  # PyAV passes both sizes through
    assert set(shapes["opencv"]) == {(120, 160)}  # OpenCV scales to the first frame's size itself
    assert "frame size changed" in caplog.text


def test_image_folder_sorted_with_skip(tmp_path, caplog):
    import cv2

    for i in (1, 2, 10):
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), np.full((4, 5, 3), i, np.uint8))
    (tmp_path / "frame3.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored")
    source = make_source(str(tmp_path), fps=10)
    assert isinstance(source, ImageFolderSource)
    with caplog.at_level(logging.WARNING):
        packets = _drain(source)
    assert [int(p.data[0, 0, 0]) for p in packets] == [1, 2, 10]  # natural order, frame3 skipped
    assert [p.time for p in packets] == pytest.approx([0.0, 0.1, 0.3])
    assert source.stats.skipped == 1 and "frame3.png" in caplog.text
    assert source.info.size == (4, 5) and source.info.rate == 10


def test_image_folder_of_many_broken_images_logs_a_few_and_counts_all(tmp_path, caplog):
    import cv2

    cv2.imwrite(str(tmp_path / "frame0.png"), np.zeros((4, 5, 3), np.uint8))
    for i in range(1, 21):
        (tmp_path / f"frame{i}.png").write_bytes(b"not a png")
    source = make_source(str(tmp_path), fps=10)
    with caplog.at_level(logging.WARNING):
        packets = _drain(source)
    assert len(packets) == 1 and source.stats.skipped == 20
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 5 and warnings[-1].endswith("further skips are counted in stats.skipped, not logged")


def test_damaged_video_middle_goes_on(tmp_path):
    path = tmp_path / "damaged.ts"
    write_video(path, (64, 64), 50)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    middle = len(data) // 2
    data[middle:middle + 3000] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    for backend in ("opencv", "pyav"):
        packets = _drain(VideoFileSource(path, backend=backend))
        assert 25 <= len(packets) <= 50  # frames after the damage still arrive


def test_skips_are_logged_a_few_times_then_only_counted(caplog):
    """A stream damaged for days: five skip warnings, the last saying the rest are only counted."""
    from memstream.pipelines.sources.common import SkipLog
    from memstream.pipelines.streams import SourceStats

    stats = SourceStats()
    skips = SkipLog("cam", stats)
    with caplog.at_level(logging.WARNING):
        for k in range(1000):
            skips(f"skipped an undecodable packet at {k}")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"cam: skipped an undecodable packet at {k}" for k in range(4)] + [
        "cam: skipped an undecodable packet at 4; further skips are counted in stats.skipped, not logged"]
    assert stats.skipped == 1000


# -- stdin PCM --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(PCM_FORMATS))
def test_stdin_pcm_round_trip(fmt):
    dtype, scale, offset = PCM_FORMATS[fmt]
    rng = np.random.default_rng(1)
    raw = (rng.integers(-100, 100, size=(1001, 2)) * (1 if fmt == "u8" else 300)).astype(np.float64)
    stored = (raw + offset if fmt != "f32le" else raw / 30000).astype(dtype)
    expected = ((stored.astype(np.float64) - offset) / scale).astype(np.float32)
    source = StdinPcmSource(8000, channels=2, format=fmt, stream=io.BytesIO(stored.tobytes() + b"\x01"),
                            block_seconds=0.03)
    packets = _drain(source)
    np.testing.assert_array_equal(np.concatenate([p.data for p in packets]), expected)
    assert [p.time for p in packets] == [i * 240 / 8000 for i in range(len(packets))]
    assert source.stats.skipped == 1  # the trailing partial frame, logged


def test_stdin_reads_sys_stdin(monkeypatch):
    samples = np.array([0, 16384, -32768], "<i2")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(samples.tobytes())))
    source = make_source("-", kind="audio", rate=16000, channels=1, format="s16le")
    (packet,) = _drain(source)
    assert packet.data[:, 0].tolist() == [0.0, 0.5, -1.0]


def test_stdin_reads_its_descriptor_and_is_cancelled_while_it_waits(monkeypatch):
    """stdin as a pipe: the source reads the descriptor itself (a thread left in a buffered read would hold the
    buffer's lock, and the interpreter aborts at exit when it finds it taken); cancel() ends a wait for data, at
    open and between packets, from another thread."""
    import os
    import threading
    import time

    samples = np.arange(-800, 800, dtype="<i2") * 20
    read_end, write_end = os.pipe()
    try:
        with open(read_end, "rb", closefd=False) as pipe_in:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(pipe_in))
            source = make_source("-", kind="audio", rate=16000, channels=1, format="s16le")
            assert source.opens_in_reader  # the runner's reader opens it: the program never waits in it
            os.write(write_end, samples[:333].tobytes() + b"\x07")  # a frame cut in two by the pipe
            source.open()
            os.write(write_end, b"\x00" + samples[334:].tobytes())
            packets = []
            for packet in source:
                packets.append(packet)
                if sum(len(p.data) for p in packets) == len(samples):  # everything written is in: now it waits
                    threading.Timer(0.2, source.cancel).start()
            t0 = time.perf_counter()
            source.close()
        assert time.perf_counter() - t0 < 1
        got = np.concatenate([p.data[:, 0] for p in packets])
        expected = samples.astype(np.float32) / 2 ** 15
        expected[333] = np.frombuffer(b"\x07\x00", "<i2")[0] / 2 ** 15
        np.testing.assert_array_equal(got, expected)

        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(open(read_end, "rb", closefd=False)))
        waiting = make_source("-", kind="audio", rate=16000)
        threading.Timer(0.2, waiting.cancel).start()
        with pytest.raises(SourceError, match="stdin: cancelled while waiting for data"):
            waiting.open()
    finally:
        os.close(read_end)
        os.close(write_end)


def test_stdin_non_finite_samples_replaced(caplog):
    data = np.array([0.5, np.nan, np.inf, -np.inf, -0.5], "<f4")
    source = StdinPcmSource(16000, format="f32le", stream=io.BytesIO(data.tobytes()))
    with caplog.at_level(logging.WARNING):
        (packet,) = _drain(source)
    assert packet.data[:, 0].tolist() == [0.5, 0.0, 0.0, 0.0, -0.5]
    assert source.stats.skipped == 3 and caplog.text.count("non-finite") == 1


# -- the factory ------------------------------------------------------------------------------------


def test_factory_routes_every_spec(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(str(wav), np.zeros(100, np.float32), 16000)
    assert isinstance(make_source(0), CameraSource) and isinstance(make_source("2", mode="all"), CameraSource)
    assert isinstance(make_source("-", kind="audio", rate=8000, fps=5), StdinPcmSource)
    assert make_source("mic:3", kind="audio").device == 3
    assert make_source("mic:USB", kind="audio").device == "USB"
    assert make_source("mic", kind="audio", rate=None).rate == 16000  # None options fall back to defaults
    for url in ("rtsp://u:secret@cam.local/s", "http://h/x.m3u8", "udp://127.0.0.1:5000", "rtmp://h/app"):
        source = make_source(url, buffer=4)
        assert isinstance(source, UrlVideoSource) and "secret" not in source.name
    assert make_source("camera:2").index == 2 and make_source("camera").index == 0
    assert isinstance(make_source("stdin", kind="audio", rate=8000), StdinPcmSource)
    assert make_source("microphone:1", kind="audio").device == 1
    assert make_source(tmp_path, rate=12).fps == 12 and make_source(tmp_path, fps=5, rate=16000).fps == 5
    assert isinstance(make_source(wav, kind="audio"), AudioFileSource)
    assert isinstance(make_source(str(wav), backend="pyav"), VideoFileSource)


@pytest.mark.parametrize("spec,kind,name,cause", [
    ("/no/such/file.mp4", "video", "/no/such/file.mp4", "no such file"),
    ("ftp://example.com/x.mp4", "video", "ftp://example.com/x.mp4", "unsupported URL scheme 'ftp'"),
    ("mic", "video", "mic", "gives audio"),
    ("0", "audio", "0", "gives video"),
    ("-", "audio", "stdin", "sample rate"),
    ("x.wav", "speech", "x.wav", "kind='speech'"),
])
def test_factory_rejects(spec, kind, name, cause):
    with pytest.raises(SourceError) as err:
        open_source(spec, kind)
    assert err.value.source == name and cause in err.value.cause


# -- bad input: each gives one line naming the source and the cause --------------------------------


def _error(source) -> SourceError:
    with pytest.raises(SourceError) as err:
        with source:
            list(source)
    message = str(err.value)
    assert "\n" not in message and message.startswith(source.name + ": ") and err.value.cause
    return err.value


def test_missing_files(tmp_path):
    for source in (VideoFileSource(tmp_path / "gone.mp4"), VideoFileSource(tmp_path / "gone.mp4", backend="pyav"),
                   AudioFileSource(tmp_path / "gone.flac"), ImageFolderSource(tmp_path / "gone")):
        assert "no such" in _error(source).cause
    assert str(tmp_path / "gone.mp4") in str(_error(VideoFileSource(tmp_path / "gone.mp4")))


def test_unreadable_and_corrupt_files(tmp_path):
    garbage = np.random.default_rng(0).integers(0, 256, 40000, dtype=np.uint8).tobytes()
    for name in ("noise.mp4", "noise.wav", "noise.mp3"):
        (tmp_path / name).write_bytes(garbage)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "0.png").write_bytes(b"broken")
    if REALDATA.is_dir():  # an mp4 cut short: its index (moov) is lost
        (tmp_path / "cut.mp4").write_bytes((REALDATA / "video" / "big_buck_bunny_small.mp4").read_bytes()[:100000])
    for backend in ("opencv", "pyav"):
        assert "cannot open as video" in _error(VideoFileSource(tmp_path / "noise.mp4", backend=backend)).cause
        assert "empty file" in _error(VideoFileSource(tmp_path / "empty.mp4", backend=backend)).cause
        if REALDATA.is_dir():
            _error(VideoFileSource(tmp_path / "cut.mp4", backend=backend))
    assert "cannot decode audio" in _error(AudioFileSource(tmp_path / "noise.wav")).cause
    assert "cannot decode audio" in _error(AudioFileSource(tmp_path / "noise.mp3")).cause
    assert "none of the 1 images" in _error(ImageFolderSource(tmp_path / "images")).cause
    wav = tmp_path / "real.wav"
    sf.write(str(wav), np.zeros(800, np.float32), 8000)
    # an audio file in a video run: the cause is the kind, not "not a video file, or corrupt"
    for backend in ("opencv", "pyav"):
        assert "an audio file (.wav) cannot feed a video task" in _error(VideoFileSource(wav, backend=backend)).cause


def _write_mpeg4(path, stamps_ms: list[int], rate: int, options: dict | None = None) -> None:
    """Frames at the given times (ms) in ``path``, whatever their spacing; ``rate`` is the nominal frame rate."""
    from fractions import Fraction

    with av.open(str(path), "w", options=options or {}) as out:
        stream = out.add_stream("mpeg4", rate=rate)
        stream.height, stream.width, stream.pix_fmt = 64, 80, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i, t in enumerate(stamps_ms):
            frame = av.VideoFrame.from_ndarray(np.full((64, 80, 3), i * 8 % 256, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.mark.parametrize("backend", ["opencv", "pyav"])
def test_a_video_ended_early_is_told_from_a_variable_rate_one(backend, tmp_path):
    """A file that stops half-way through its frames fails its stream ('ended early'); a variable-rate MKV is
    whole, though it holds fewer frames than OpenCV's estimate (its duration x its nominal rate): 60 against 118,
    once reported as 'ended early' with exit 2."""
    vfr = tmp_path / "vfr.mkv"
    _write_mpeg4(vfr, [i * 1000 // 30 for i in range(30)] + [1000 + i * 100 for i in range(30)], rate=30)
    source = VideoFileSource(vfr, backend=backend)
    assert len(_drain(source)) == 60 and source.stats.errors == []
    whole = tmp_path / "whole.mp4"
    _write_mpeg4(whole, [i * 40 for i in range(100)], rate=25, options={"movflags": "faststart"})  # index first
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    source = VideoFileSource(cut, backend=backend)
    assert 0 < len(_drain(source)) < 60
    (error,) = source.stats.errors
    assert "stream ended early" in error and "of 100 frames" in error


def test_refused_url():
    from sources_media import free_port

    for url in (f"http://127.0.0.1:{free_port()}/live.ts", f"rtsp://127.0.0.1:{free_port()}/cam"):
        assert "connection refused" in _error(UrlVideoSource(url, open_timeout=2, stall_timeout=2)).cause


def test_unsupported_sample_formats(tmp_path):
    for fmt in ("s24le", "f64", "S16LE"):
        with pytest.raises(SourceError, match=f"stdin: unsupported sample format '{fmt}'"):
            StdinPcmSource(16000, format=fmt)
    wav = tmp_path / "odd.wav"
    sf.write(str(wav), np.zeros(800, np.float32), 8000, subtype="PCM_16")
    data = bytearray(wav.read_bytes())
    data[20:22] = struct.pack("<H", 0xABCD)  # a WAVE format tag no decoder knows
    wav.write_bytes(bytes(data))
    assert "unsupported audio codec" in _error(AudioFileSource(wav)).cause


def test_zero_length_audio(tmp_path):
    wav = tmp_path / "empty.wav"
    sf.write(str(wav), np.zeros((0, 1), np.float32), 16000)
    mka = tmp_path / "empty.mka"
    with av.open(str(mka), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=16000)
        out.start_encoding()
        for packet in stream.encode(None):
            out.mux(packet)
    for source in (AudioFileSource(wav), AudioFileSource(wav, backend="pyav"), AudioFileSource(mka),
                   StdinPcmSource(16000, stream=io.BytesIO(b""))):
        assert "zero-length" in _error(source).cause
    one_byte = StdinPcmSource(16000, stream=io.BytesIO(b"\x01"))  # less than a frame: no sample at all
    with one_byte:
        assert list(one_byte) == []
    assert one_byte.stats.errors == ["zero-length audio: 1 byte(s) on the input, less than one s16le frame of 1 "
                                     "channel(s)"]


@pytest.mark.parametrize("backend", [None, "pyav"])
def test_a_cut_short_wav_runs_what_it_holds_then_fails(tmp_path, backend):
    """A WAV whose data chunk claims more than the file holds (a copy cut off, a recorder killed): its samples all
    come through, then the stream ends as failed with the cause, also when FFmpeg decodes it (it clamps the length
    silently); a WAV written to a pipe (ffmpeg and sox leave a placeholder size there) is not cut short."""
    from memstream.pipelines.sources.audio import cut_short

    x = np.sin(np.arange(32000) / 10).astype(np.float32) * 0.5
    full = tmp_path / "full.wav"
    sf.write(str(full), x, 16000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full.read_bytes()[:44 + 2 * 12345])
    source = AudioFileSource(cut, backend=backend)
    got = np.concatenate([p.data[:, 0] for p in _drain(source)])
    np.testing.assert_array_equal(got, sf.read(str(full), dtype="float32")[0][:12345])
    (error,) = source.stats.errors
    assert "cut short" in error and "64000 bytes" in error and "24690" in error

    streamed = bytearray(full.read_bytes())
    streamed[40:44] = struct.pack("<I", 0xFFFFFFFF)  # the data size of a WAV written to a pipe
    piped = tmp_path / "piped.wav"
    piped.write_bytes(bytes(streamed))
    source = AudioFileSource(piped, backend=backend)
    assert sum(len(p.data) for p in _drain(source)) == 32000 and source.stats.errors == []
    assert cut_short("data : 4294967295 (should be 64000)") is None and cut_short("data : 64000") is None


def test_a_flac_without_its_length_reads_to_the_end(tmp_path):
    """A FLAC written to a pipe has 0 (unknown) total samples in its header: libsndfile fails near its end, so it
    is read with PyAV, every sample, and its duration is unknown rather than 10^14 s."""
    x = (np.sin(np.arange(32000) / 7) * 0.5).astype(np.float32)
    path = tmp_path / "piped.flac"
    sf.write(str(path), x, 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC"
    fields = int.from_bytes(data[18:26], "big")  # rate (20 bits), channels, bits per sample, total samples (36)
    data[18:26] = (fields & ~((1 << 36) - 1)).to_bytes(8, "big")
    path.write_bytes(bytes(data))
    assert sf.info(str(path)).frames > 2 ** 62  # libsndfile: SF_COUNT_MAX
    source = AudioFileSource(path)
    got = np.concatenate([p.data[:, 0] for p in _drain(source)])
    assert source.info.duration is None and source.stats.errors == []
    np.testing.assert_allclose(got, x, atol=1 / 2 ** 15)


def test_non_finite_audio_samples(tmp_path, caplog):
    x = np.linspace(-0.5, 0.5, 4000).astype(np.float32)
    x[[10, 2000, 3999]] = [np.nan, np.inf, -np.inf]
    path = tmp_path / "nan.wav"
    sf.write(str(path), x, 16000, subtype="FLOAT")
    source = AudioFileSource(path, block_seconds=0.05)
    with caplog.at_level(logging.WARNING):
        data = np.concatenate([p.data for p in _drain(source)])[:, 0]
    assert np.isfinite(data).all() and data[[10, 2000, 3999]].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(np.delete(data, [10, 2000, 3999]), np.delete(x, [10, 2000, 3999]))
    assert source.stats.skipped == 3 and caplog.text.count("non-finite") == 1 and str(path) in caplog.text


def test_absent_microphone_and_camera():
    cause = _error(MicrophoneSource(device="no-such-microphone-42")).cause  # real sounddevice/PortAudio
    assert "PortAudio" in cause or "device" in cause or "sounddevice" in cause
    assert "cannot open the camera" in _error(CameraSource(97)).cause


def test_bad_configuration_names_the_value(tmp_path):
    for build, value in ((lambda: ImageFolderSource(tmp_path, fps=0), "fps=0"),
                         (lambda: VideoFileSource("x.mp4", backend="gst"), "backend='gst'"),
                         (lambda: StdinPcmSource(0), "rate=0"),
                         (lambda: StdinPcmSource(16000, channels=0), "channels=0"),
                         (lambda: UrlVideoSource("http://h/x", mode="newest"), "mode='newest'"),
                         (lambda: UrlVideoSource("http://h/x", buffer=0), "buffer=0")):
        with pytest.raises(SourceError, match=value):
            build()
