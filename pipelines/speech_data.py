"""Speech corpora for the ASR task: readers, audio loading, text targets, long-form recordings, batching.

Two corpus layouts are read (``read_corpus`` picks one):

- LibriSpeech: ``root/<speaker>/<chapter>/<id>.flac`` with ``<speaker>-<chapter>.trans.txt`` beside the
  audio, one ``ID TRANSCRIPT`` line per utterance. ``memstream data synth-speech`` and ``write_longform``
  write this layout too.
- A plain folder: audio files and ``transcripts.tsv`` with a header line ``file<TAB>reference[<TAB>...]``;
  extra columns are kept out of the text (a ``speaker`` column, if present, names the speaker).

Text targets (``normalize_text``): NFKD-fold accents, map typographic apostrophes to ``'``, lowercase;
every character other than ``a-z`` and ``'`` (digits, punctuation, symbols, other scripts) becomes a
word break; an apostrophe is kept only between two letters (``don't`` stays, quotes go); whitespace is
collapsed to single spaces. Digits are not spelled out, so ``"in 1901"`` -> ``"in"``. The same rule
makes training targets and WER references. ``VOCAB`` is the CTC character set: index 0 is the blank.

Audio is float32 mono at 16 kHz unless asked otherwise: ``load_audio(path) -> (n,)``.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from memstream.models.asr import CHARS

AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".opus")
VOCAB: list[str] = list(CHARS)  # the ASR model's character set: blank, space, apostrophe, a-z
BLANK = 0
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


@dataclass
class Utterance:
    """One utterance: audio ``path`` and its ``text`` as written in the corpus (not normalised).

    ``duration`` is in seconds (from the file header), ``None`` where it was not read.
    """

    id: str
    path: Path
    text: str
    speaker: str
    chapter: str
    duration: float | None = None


@dataclass
class LongRecording:
    """A long-form recording made of ``parts`` of one chapter, in order.

    ``offsets[i]`` is the start of ``parts[i]`` in the recording (seconds); ``duration`` includes the gaps.
    """

    id: str
    speaker: str
    chapter: str
    parts: list[Utterance]
    offsets: list[float]
    duration: float
    text: str = field(init=False)

    def __post_init__(self) -> None:
        self.text = " ".join(p.text.strip() for p in self.parts)


def _duration(path: Path) -> float:
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise ValueError(f"{path}: cannot read audio header ({e})") from None
    return info.frames / info.samplerate


def read_librispeech(root: str | Path, durations: bool = True) -> list[Utterance]:
    """Utterances of a LibriSpeech-layout folder, sorted by id; durations from the headers if asked."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: corpus folder not found")
    out: list[Utterance] = []
    for chapter_dir in sorted(p for p in root.glob("*/*") if p.is_dir()):
        speaker, chapter = chapter_dir.parent.name, chapter_dir.name
        trans = chapter_dir / f"{speaker}-{chapter}.trans.txt"
        if not trans.is_file():
            if any(p.suffix.lower() in AUDIO_SUFFIXES for p in chapter_dir.iterdir()):
                raise FileNotFoundError(f"{chapter_dir}: audio files but no transcript {trans.name}")
            continue
        for n, line in enumerate(trans.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{trans}: line {n}: expected 'ID TRANSCRIPT', got {line.strip()!r}")
            uid, text = parts
            path = next((chapter_dir / f"{uid}{s}" for s in AUDIO_SUFFIXES if (chapter_dir / f"{uid}{s}").is_file()),
                        None)
            if path is None:
                raise FileNotFoundError(f"{trans}: line {n}: audio {uid}.flac not found in {chapter_dir}")
            out.append(Utterance(uid, path, text, speaker, chapter, _duration(path) if durations else None))
    if not out:
        raise ValueError(f"{root}: no utterances found (expected <speaker>/<chapter>/<speaker>-<chapter>.trans.txt)")
    return sorted(out, key=lambda u: u.id)


def read_tsv_folder(root: str | Path, durations: bool = True) -> list[Utterance]:
    """Utterances of a folder with ``transcripts.tsv`` (header ``file<TAB>reference...``), in file order."""
    root = Path(root)
    tsv = root / "transcripts.tsv"
    if not tsv.is_file():
        raise FileNotFoundError(f"{root}: no transcripts.tsv")
    lines = tsv.read_text(encoding="utf-8-sig").splitlines()
    header = lines[0].split("\t") if lines else []
    if header[:2] != ["file", "reference"]:
        raise ValueError(f"{tsv}: line 1: expected the header 'file<TAB>reference[<TAB>...]', got {lines[:1]}")
    speaker_col = header.index("speaker") if "speaker" in header else None
    out: list[Utterance] = []
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
            raise ValueError(f"{tsv}: line {n}: expected 'file<TAB>reference', got {line!r}")
        path = root / cols[0].strip()
        if not path.is_file():
            raise FileNotFoundError(f"{tsv}: line {n}: audio file {path} not found")
        speaker = cols[speaker_col].strip() if speaker_col is not None and len(cols) > speaker_col else "unknown"
        out.append(Utterance(path.stem, path, cols[1].strip(), speaker or "unknown", "0",
                             _duration(path) if durations else None))
    if not out:
        raise ValueError(f"{tsv}: no utterances listed")
    ids = [u.id for u in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{tsv}: duplicate file names {sorted({i for i in ids if ids.count(i) > 1})}")
    return out


def read_corpus(root: str | Path, durations: bool = True) -> list[Utterance]:
    """Read ``root`` as a tsv folder if it has ``transcripts.tsv``, else as a LibriSpeech folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: corpus folder not found")
    if (root / "transcripts.tsv").is_file():
        return read_tsv_folder(root, durations)
    if not any(root.iterdir()):
        raise ValueError(f"{root}: empty folder, no corpus to read")
    if not any(root.glob("*/*/*.trans.txt")) and any(p.suffix.lower() in AUDIO_SUFFIXES for p in root.iterdir()):
        raise FileNotFoundError(f"{root}: audio files but no transcripts.tsv (or <speaker>/<chapter>/*.trans.txt)")
    return read_librispeech(root, durations)


def load_audio(path: str | Path, rate: int = 16000) -> np.ndarray:
    """Audio file -> (n,) float32 mono at ``rate`` Hz (channels averaged, torchaudio's sinc resampler)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: audio file not found")
    try:
        data, native = sf.read(str(path), dtype="float32", always_2d=True)  # (n, C)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise ValueError(f"{path}: cannot read audio ({e})") from None
    x = data.mean(axis=1)
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: audio holds NaN or Inf samples")
    if native != rate:
        x = torchaudio.functional.resample(torch.from_numpy(x), int(native), int(rate)).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def normalize_text(s: str) -> str:
    """Training/WER text: lowercase ``a-z``, inner apostrophes and single spaces (rule in the module docstring)."""
    s = unicodedata.normalize("NFKD", s.translate(_APOSTROPHES))
    s = "".join(c for c in s if not unicodedata.combining(c)).lower()
    s = re.sub(r"[^a-z']+", " ", s)
    s = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", s)
    return " ".join(s.split())


def encode_text(s: str, vocab: Sequence[str] = VOCAB) -> list[int]:
    """Normalised text -> ids in ``vocab`` (no blanks); a character outside it is an error."""
    index = {c: i for i, c in enumerate(vocab)}
    try:
        return [index[c] for c in s]
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is not in the vocabulary; pass normalize_text(s)") from None


def decode_ids(ids: Sequence[int]) -> str:
    """VOCAB ids -> text, blanks dropped (no CTC repeat collapsing)."""
    return "".join(VOCAB[int(i)] for i in ids if int(i) != BLANK)


def longform_recordings(utterances: Sequence[Utterance], min_seconds: float = 300.0, max_seconds: float = 1200.0,
                        gap_seconds: float = 0.0) -> list[LongRecording]:
    """Concatenate each chapter's utterances (in id order) into recordings of ``min_seconds..max_seconds``.

    Greedy: a recording grows while it stays within ``max_seconds``; one that ends shorter than
    ``min_seconds`` (a chapter's remainder, or a chapter too short) is dropped. ``gap_seconds`` of silence
    separate the parts. Recording ids are ``<speaker>-<chapter>-<k:04d>``.
    """
    if not 0 < min_seconds <= max_seconds or gap_seconds < 0:
        raise ValueError(f"longform needs 0 < min_seconds <= max_seconds and gap >= 0, got "
                         f"{min_seconds}, {max_seconds}, {gap_seconds}")
    chapters: dict[tuple[str, str], list[Utterance]] = {}
    for u in utterances:
        chapters.setdefault((u.speaker, u.chapter), []).append(u)
    out: list[LongRecording] = []
    for (speaker, chapter), utts in chapters.items():
        groups: list[list[Utterance]] = [[]]
        total = 0.0
        for u in sorted(utts, key=lambda u: u.id):
            d = u.duration if u.duration is not None else _duration(u.path)
            u = Utterance(u.id, u.path, u.text, u.speaker, u.chapter, d)
            extra = d + (gap_seconds if groups[-1] else 0.0)
            if groups[-1] and total + extra > max_seconds:
                groups.append([])
                total, extra = 0.0, d
            groups[-1].append(u)
            total += extra
        for group in groups:
            offsets = list(np.cumsum([0.0] + [p.duration + gap_seconds for p in group[:-1]]))
            duration = offsets[-1] + group[-1].duration if group else 0.0
            if group and min_seconds <= duration <= max_seconds:
                k = sum(r.speaker == speaker and r.chapter == chapter for r in out)
                out.append(LongRecording(f"{speaker}-{chapter}-{k:04d}", speaker, chapter, group,
                                         [float(o) for o in offsets], float(duration)))
    return out


def write_longform(recordings: Sequence[LongRecording], out_dir: str | Path, rate: int = 16000) -> list[Utterance]:
    """Write recordings as a LibriSpeech-layout corpus (FLAC at ``rate``) plus ``segments.tsv`` with each
    part's ``recording, utterance, start, end, text`` (seconds). Returns the written utterances."""
    out_dir = Path(out_dir)
    written: list[Utterance] = []
    segments = ["recording\tutterance\tstart\tend\ttext"]
    transcripts: dict[Path, list[str]] = {}
    for rec in recordings:
        audio = np.zeros(int(round(rec.duration * rate)), dtype=np.float32)
        for part, offset in zip(rec.parts, rec.offsets):
            x = load_audio(part.path, rate)
            start = int(round(offset * rate))
            audio[start:start + len(x)] = x[: max(0, len(audio) - start)]
            segments.append(f"{rec.id}\t{part.id}\t{offset:.3f}\t{offset + len(x) / rate:.3f}\t{part.text.strip()}")
        folder = out_dir / rec.speaker / rec.chapter
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{rec.id}.flac"
        sf.write(str(path), np.clip(audio, -1.0, 1.0), rate, subtype="PCM_16")
        transcripts.setdefault(folder / f"{rec.speaker}-{rec.chapter}.trans.txt", []).append(f"{rec.id} {rec.text}")
        written.append(Utterance(rec.id, path, rec.text, rec.speaker, rec.chapter, len(audio) / rate))
    for path, lines in transcripts.items():
        path.write_text("\n".join(sorted(lines)) + "\n", encoding="utf-8")
    (out_dir / "segments.tsv").write_text("\n".join(segments) + "\n", encoding="utf-8")
    return written


class SpeechDataset(torch.utils.data.Dataset):
    """``dataset[i] -> (samples (n,) float32, targets (L,) int64)``: audio at ``rate`` Hz, VOCAB ids of
    ``normalize_text(text)``. ``durations`` (seconds) feed :class:`BucketBatchSampler`."""

    def __init__(self, utterances: Sequence[Utterance], rate: int = 16000) -> None:
        self.utterances = list(utterances)
        self.rate = rate
        self.durations = [u.duration if u.duration is not None else _duration(u.path) for u in self.utterances]

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.utterances[i]
        ids = encode_text(normalize_text(u.text))
        return torch.from_numpy(load_audio(u.path, self.rate)), torch.tensor(ids, dtype=torch.int64)


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    """Pad a list of (samples, targets) -> audio (B, N) float32, audio_lengths (B,), targets (B, L) int64
    (padded with the blank id), target_lengths (B,)."""
    audio = torch.nn.utils.rnn.pad_sequence([a for a, _ in batch], batch_first=True)
    targets = torch.nn.utils.rnn.pad_sequence([t for _, t in batch], batch_first=True, padding_value=BLANK)
    return (audio, torch.tensor([len(a) for a, _ in batch]), targets, torch.tensor([len(t) for _, t in batch]))


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of similar duration whose padded size, ``len(batch) * longest``, stays within ``max_seconds``.

    Indices are sorted by duration (jittered by +-10 % per epoch so batches vary), cut greedily into
    batches, and the batch order is shuffled with ``(seed, epoch)``; every rank computes the same list and
    takes every ``world``-th batch from ``rank``. With ``pad=True`` (for data-parallel training, where ranks
    must run the same number of steps) the list is first padded cyclically to a multiple of ``world``.
    """

    def __init__(self, durations: Sequence[float], max_seconds: float, rank: int = 0, world: int = 1,
                 shuffle: bool = True, seed: int = 0, pad: bool = True) -> None:
        if not max_seconds > 0:
            raise ValueError(f"max_seconds={max_seconds!r} must be positive")
        if not 0 <= rank < world:
            raise ValueError(f"rank={rank} must lie in [0, world={world})")
        self.durations = np.asarray(durations, dtype=np.float64)
        if not np.isfinite(self.durations).all() or (self.durations < 0).any():
            raise ValueError("durations must be finite and non-negative")
        self.max_seconds, self.rank, self.world = float(max_seconds), rank, world
        self.shuffle, self.seed, self.pad, self.epoch = shuffle, seed, pad, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """All ranks' batches of this epoch, in order, before sharding."""
        rng = np.random.default_rng([self.seed, self.epoch])
        jitter = rng.uniform(0.9, 1.1, len(self.durations)) if self.shuffle else np.ones(len(self.durations))
        order = np.argsort(self.durations * jitter, kind="stable")
        out: list[list[int]] = []
        longest = 0.0
        for i in order.tolist():
            d = self.durations[i]
            if out and out[-1] and (len(out[-1]) + 1) * max(longest, d) <= self.max_seconds:
                out[-1].append(i)
                longest = max(longest, d)
            else:
                out.append([i])
                longest = d
        if self.shuffle:
            out = [out[j] for j in rng.permutation(len(out))]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        if self.pad and batches:
            total = math.ceil(len(batches) / self.world) * self.world
            batches = [batches[i % len(batches)] for i in range(total)]
        return iter(batches[self.rank::self.world])

    def __len__(self) -> int:
        n = len(self.batches())
        return math.ceil(n / self.world) if self.pad else len(range(self.rank, n, self.world))
