"""Speech data layer: corpus readers and their errors, audio loading, text targets, long-form recordings,
batching, the espeak-ng corpus generator and the real sample clips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from memstream.pipelines import cli, speech_data
from memstream.pipelines.speech_data import (
    VOCAB,
    BucketBatchSampler,
    SpeechDataset,
    Utterance,
    collate,
    decode_ids,
    encode_text,
    load_audio,
    longform_recordings,
    normalize_text,
    read_corpus,
    write_longform,
)
from memstream.pipelines.synth_speech import FORTUNE_DIRS, variant_of

REALDATA = Path(__file__).parents[1] / ".." / "shared" / "realdata" / "asr"


def _tone(path: Path, seconds: float, rate: int = 16000, channels: int = 1) -> None:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(str(path), np.stack([x] * channels, axis=1) if channels > 1 else x, rate)


def _librispeech(root: Path) -> Path:
    """speaker 19 chapter 198 (2 utterances), speaker 26 chapter 495 (1)."""
    for spk, chap, utts in (("19", "198", [("0000", 1.0, "HELLO WORLD"), ("0001", 0.5, "IT'S ME")]),
                            ("26", "495", [("0000", 0.25, "A B C")])):
        folder = root / spk / chap
        folder.mkdir(parents=True)
        lines = []
        for k, seconds, text in utts:
            _tone(folder / f"{spk}-{chap}-{k}.flac", seconds)
            lines.append(f"{spk}-{chap}-{k} {text}")
        (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_read_librispeech_layout(tmp_path):
    utts = read_corpus(_librispeech(tmp_path))
    assert [u.id for u in utts] == ["19-198-0000", "19-198-0001", "26-495-0000"]
    assert [(u.speaker, u.chapter, u.text) for u in utts][1] == ("19", "198", "IT'S ME")
    assert [u.duration for u in utts] == pytest.approx([1.0, 0.5, 0.25])
    assert utts[0].path == tmp_path / "19" / "198" / "19-198-0000.flac"


def test_read_tsv_layout(tmp_path):
    _tone(tmp_path / "a.wav", 0.5, rate=22050, channels=2)
    _tone(tmp_path / "b.flac", 1.0)
    (tmp_path / "transcripts.tsv").write_text("file\treference\tspeaker\tlicense\n"
                                              "a.wav\tHello, world!\tann\tCC0\nb.flac\tSecond one.\t\tCC0\n")
    utts = read_corpus(tmp_path)
    assert [(u.id, u.text, u.speaker) for u in utts] == [("a", "Hello, world!", "ann"), ("b", "Second one.", "unknown")]
    assert [u.duration for u in utts] == pytest.approx([0.5, 1.0], abs=1e-4)
    x = load_audio(utts[0].path)
    assert x.dtype == np.float32 and x.ndim == 1 and len(x) == 8000


@pytest.mark.parametrize("damage,error,message", [
    ("rm_trans", FileNotFoundError, "audio files but no transcript 19-198.trans.txt"),
    ("rm_audio", FileNotFoundError, "19-198.trans.txt: line 2: audio 19-198-0001.flac not found"),
    ("bad_line", ValueError, "19-198.trans.txt: line 3: expected 'ID TRANSCRIPT', got '19-198-0002'"),
])
def test_librispeech_errors_name_file_and_problem(tmp_path, damage, error, message):
    root = _librispeech(tmp_path)
    chapter = root / "19" / "198"
    if damage == "rm_trans":
        (chapter / "19-198.trans.txt").unlink()
    elif damage == "rm_audio":
        (chapter / "19-198-0001.flac").unlink()
    else:
        with open(chapter / "19-198.trans.txt", "a") as f:
            f.write("19-198-0002\n")
    with pytest.raises(error, match=message):
        read_corpus(root)


def test_corpus_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus folder not found"):
        read_corpus(tmp_path / "nope")
    with pytest.raises(ValueError, match="empty folder"):
        read_corpus(tmp_path)
    _tone(tmp_path / "a.wav", 0.1)
    with pytest.raises(FileNotFoundError, match="audio files but no transcripts.tsv"):
        read_corpus(tmp_path)
    (tmp_path / "transcripts.tsv").write_text("name\ttext\na.wav\thi\n")
    with pytest.raises(ValueError, match="transcripts.tsv: line 1: expected the header"):
        read_corpus(tmp_path)
    (tmp_path / "transcripts.tsv").write_text("file\treference\na.wav\thi\nb.wav\tgone\n")
    with pytest.raises(FileNotFoundError, match="line 3: audio file .*b.wav not found"):
        read_corpus(tmp_path)
    (tmp_path / "transcripts.tsv").write_text("file\treference\na.wav\n")
    with pytest.raises(ValueError, match="line 2: expected 'file<TAB>reference'"):
        read_corpus(tmp_path)
    (tmp_path / "bad.flac").write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="bad.flac: cannot read audio"):
        load_audio(tmp_path / "bad.flac")


def test_normalize_encode_decode():
    said = "Don't  STOP--believin'! “Hi,” she said: ‘it’s 9.30’"
    assert normalize_text(said) == "don't stop believin hi she said it's"
    assert normalize_text("Café au lait; well-known U.S.A. 'quoted'") == "cafe au lait well known u s a quoted"
    assert normalize_text("  \t") == ""
    assert VOCAB[0] == "<b>" and VOCAB[1:3] == [" ", "'"] and len(VOCAB) == 29
    text = normalize_text("The quick brown fox can't jump over the lazy dog.")
    ids = encode_text(text)
    assert 0 not in ids and decode_ids(ids) == text
    assert decode_ids([0, ids[0], 0]) == text[0]
    with pytest.raises(ValueError, match="'!' is not in the vocabulary"):
        encode_text("hi!")


def _utt(tmp_path: Path, uid: str, seconds: float, text: str) -> Utterance:
    spk, chap, _ = uid.split("-")
    path = tmp_path / f"{uid}.flac"
    sf.write(str(path), np.full(int(seconds * 16000), 0.1, dtype=np.float32), 16000)
    return Utterance(uid, path, text, spk, chap, seconds)


def test_longform_concatenation(tmp_path):
    utts = [_utt(tmp_path, "7-1-0002", 4.0, "C"), _utt(tmp_path, "7-1-0000", 2.0, "A"),
            _utt(tmp_path, "7-1-0001", 3.0, "B"), _utt(tmp_path, "8-2-0000", 1.0, "short")]
    recs = longform_recordings(utts, min_seconds=4.0, max_seconds=6.0, gap_seconds=0.5)
    # chapter 7-1 in id order: A (2) + gap + B (3) = 5.5 s, then C alone (4 s); chapter 8-2 is too short.
    assert [r.id for r in recs] == ["7-1-0000", "7-1-0001"]
    assert [p.id for p in recs[0].parts] == ["7-1-0000", "7-1-0001"]
    assert recs[0].offsets == [0.0, 2.5] and recs[0].duration == pytest.approx(5.5) and recs[0].text == "A B"
    assert recs[1].text == "C" and recs[1].duration == pytest.approx(4.0)
    written = write_longform(recs, tmp_path / "long")
    back = read_corpus(tmp_path / "long")
    assert [(u.id, u.text) for u in back] == [("7-1-0000", "A B"), ("7-1-0001", "C")]
    assert [u.duration for u in back] == pytest.approx([5.5, 4.0]) == [u.duration for u in written]
    x = load_audio(back[0].path)
    assert np.allclose(x[int(2.1 * 16000):int(2.4 * 16000)], 0) and abs(x[int(3 * 16000)] - 0.1) < 1e-3
    segments = (tmp_path / "long" / "segments.tsv").read_text().splitlines()
    assert segments[2].split("\t") == ["7-1-0000", "7-1-0001", "2.500", "5.500", "B"]
    with pytest.raises(ValueError, match="min_seconds <= max_seconds"):
        longform_recordings(utts, 10, 5)


def test_bucket_sampler_shards_disjoint_and_complete():
    durations = np.random.default_rng(0).uniform(1, 15, 101).tolist()
    full = BucketBatchSampler(durations, max_seconds=40, seed=3).batches()
    assert sorted(i for b in full for i in b) == list(range(101))
    for b in full:  # padded size within the budget, or a single utterance
        assert len(b) == 1 or len(b) * max(durations[i] for i in b) <= 40
    padded_seconds = sum(len(b) * max(durations[i] for i in b) for b in full)
    assert sum(durations) / padded_seconds > 0.8  # similar durations batched together: little padding
    shards = [list(BucketBatchSampler(durations, 40, rank=r, world=3, seed=3, pad=False)) for r in range(3)]
    flat = [i for s in shards for b in s for i in b]
    assert sorted(flat) == list(range(101))  # disjoint and covering all
    padded = [BucketBatchSampler(durations, 40, rank=r, world=3, seed=3) for r in range(3)]
    assert len({len(list(s)) for s in padded}) == 1 and len(padded[0]) == len(list(padded[0]))
    assert {i for s in padded for b in s for i in b} == set(range(101))
    again = BucketBatchSampler(durations, 40, seed=3)
    assert again.batches() == full
    again.set_epoch(1)
    assert again.batches() != full
    with pytest.raises(ValueError, match="rank=3"):
        BucketBatchSampler(durations, 40, rank=3, world=3)


def test_dataset_and_collate(tmp_path):
    utts = read_corpus(_librispeech(tmp_path))
    data = SpeechDataset(utts)
    x, y = data[1]
    assert x.dtype == torch.float32 and x.shape == (8000,) and decode_ids(y) == "it's me"
    sampler = BucketBatchSampler(data.durations, max_seconds=10, shuffle=False)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=collate)
    (audio, audio_len, targets, target_len), = list(loader)
    assert audio.shape == (3, 16000) and audio_len.tolist() == [4000, 8000, 16000]
    assert targets.shape == (3, 11) and target_len.tolist() == [5, 7, 11]
    assert decode_ids(targets[2]) == "hello world" and audio[0, 4000:].abs().max() == 0


def _have_synth_tools() -> str | None:
    if shutil.which("espeak-ng") is None:
        return "espeak-ng is not installed (apt-get install espeak-ng)"
    if not any(p.is_file() and not p.suffix for d in FORTUNE_DIRS if d.is_dir() for p in d.iterdir()):
        return "no fortune files (apt-get install fortunes-min fortunes)"
    return None


def _synth(out: Path, jobs: int) -> int:
    return cli.main(["data", "synth-speech", "--out", str(out), "--hours", "0.005", "--seed", "1", "--jobs", str(jobs),
                     "--heldout-voices", "2", "--longform-minutes", "0.1", "0.4", "--longform-count", "1"])


@pytest.mark.skipif(_have_synth_tools() is not None, reason=str(_have_synth_tools()))
def test_synth_speech_tiny_corpus(tmp_path, capsys):
    out = tmp_path / "synth"
    assert _synth(out, jobs=1) == 0
    assert "h of audio per minute" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 1 and "--hours 0.005" in manifest["command"] and (out / "README.md").is_file()
    splits = {name: read_corpus(out / name) for name in ("train", "dev", "test", "test-longform")}
    for name, utts in splits.items():
        assert manifest["splits"][name]["utterances"] == len(utts) > 0
        assert manifest["splits"][name]["hours"] == pytest.approx(sum(u.duration for u in utts) / 3600, abs=1e-3)
        for u in utts:
            info = sf.info(str(u.path))
            assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
            assert u.text == normalize_text(u.text).upper() and len(u.text.split()) >= 3
    assert 0.0049 <= manifest["splits"]["train"]["hours"] < 0.01
    voices = {name: set(manifest["splits"][name]["voices"]) for name in splits}
    assert not voices["train"] & (voices["dev"] | voices["test"]) and not voices["dev"] & voices["test"]
    variants = {name: {variant_of(v) for v in vs} for name, vs in voices.items()}  # whole timbres held out
    assert not variants["train"] & (variants["dev"] | variants["test"]) and not variants["dev"] & variants["test"]
    assert not voices["test-longform"] & (voices["train"] | voices["dev"])  # long-form speaks with test voices
    assert all(6 <= u.duration <= 24 for u in splits["test-longform"])
    train_text = {u.text for u in splits["train"]}
    assert not train_text & {u.text for u in splits["dev"] + splits["test"]}
    assert not (out / ".longform-parts").exists()
    assert _synth(out, jobs=1) == 2  # refuses to write into a non-empty folder
    assert "exists and is not an empty folder" in capsys.readouterr().err


@pytest.mark.skipif(_have_synth_tools() is not None, reason=str(_have_synth_tools()))
def test_synth_speech_deterministic_for_any_jobs(tmp_path):
    assert _synth(tmp_path / "a", jobs=1) == 0 and _synth(tmp_path / "b", jobs=2) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for rel in files:
        if rel.suffix in (".flac", ".txt", ".tsv"):
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


@pytest.mark.skipif(not REALDATA.is_dir(), reason=f"real sample speech not present at {REALDATA}")
def test_real_speech_clips_load_at_16k():
    utts = read_corpus(REALDATA)
    assert len(utts) >= 5 and all(u.text for u in utts)
    for u in utts:
        x = load_audio(u.path)
        assert x.dtype == np.float32 and x.ndim == 1 and np.isfinite(x).all()
        assert abs(len(x) - u.duration * 16000) <= 2, u.id
        assert normalize_text(u.text) and encode_text(normalize_text(u.text))
    assert speech_data.longform_recordings(utts, 20, 120)  # splicing the clips gives a long-form stream
