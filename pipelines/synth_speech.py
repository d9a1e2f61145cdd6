"""`memstream data synth-speech`: a synthetic English speech corpus in the LibriSpeech layout.

Text: sentences from the Debian ``fortunes`` files (``apt-get install fortunes-min fortunes``) or ``--text``
(one sentence per line). Entries are split at sentence ends; sentences with characters other than
letters and plain punctuation (digits, symbols, non-ASCII), acronyms (two capitals in a row) or common
abbreviations are dropped, because espeak-ng would speak something other than their normalised text;
consecutive sentences of an entry are grouped into utterances of 10-36 words (about 3-15 s of speech).

Audio: ``espeak-ng`` with every non-mbrola English voice x every variant (``espeak-ng --voices=variant``);
one voice+variant is one speaker (id ``1000 + index``), with its own base speed (130-210 wpm) and pitch,
jittered per utterance. Output is resampled to 16 kHz mono FLAC. A fraction (``--augment``) gets simple
reverb (synthetic exponentially decaying impulse response) and/or additive white, pink or babble noise
(other sentences spoken by other voices) at 5-25 dB SNR, then a random peak level.

Splits (in ``--out``): ``train/`` (``--hours`` of audio), ``dev/`` and ``test/`` (``--heldout-fraction`` of
that each), whose voices never occur in train (whole variants, i.e. timbres, are held out: see
``split_speakers``; the accents are shared) and whose sentences are not train sentences;
``test-longform/``: ``--longform-count`` recordings of ``--longform-minutes`` made by
``longform_recordings`` from chapters of the test speakers (plus ``segments.tsv`` with each part's times).
A chapter is a run of consecutive utterances (consecutive text) of one speaker. Each split folder has
``utterances.tsv`` (voice, speed, pitch, augmentation of every utterance); ``manifest.json`` holds counts,
hours, speakers per split, seed and command. Output is deterministic given ``--seed`` (for any ``--jobs``).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from memstream.pipelines.speech_data import Utterance, longform_recordings, normalize_text, write_longform

RATE = 16000
FORTUNE_DIRS = (Path("/usr/share/games/fortunes"), Path("/usr/share/fortunes"))
_ALLOWED = re.compile(r"^[A-Za-z ,.;:!?'\"()-]+$")
_ABBREV = re.compile(r"(?<![\w'])(?:mr|mrs|ms|dr|st|jr|sr|vs|etc|wm|prof|gen|col|capt|lt|sgt|rev|hon|mt|inc|ltd|co|"
                     r"corp|dept|ed|cf|al|approx)\.|(?<![\w'])[a-z]\.(?=\s*[a-z,;:]|\s*$)|\w\.\w", re.IGNORECASE)
_ACRONYM = re.compile(r"[A-Z]{2,}")
MIN_WORDS, MAX_WORDS = 10, 36


@dataclass
class Job:
    """One utterance to render: text and voice settings, and its augmentation (noise '' = none)."""

    id: str
    path: str
    text: str
    speaker: str
    voice: str
    speed: int
    pitch: int
    seed: int
    noise: str = ""
    snr: float = 0.0
    rt60: float = 0.0
    peak: float = 0.9
    babble: list = field(default_factory=list)  # [(text, voice), ...]


def fortune_entries(text_file: str | None = None) -> list[list[str]]:
    """Entries of text (lists of sentences): ``text_file`` lines, else every installed fortune file."""
    if text_file is not None:
        lines = Path(text_file).read_text(encoding="utf-8", errors="replace").splitlines()
        return [[line.strip() for line in lines if line.strip()]]
    files = [p for d in FORTUNE_DIRS if d.is_dir() for p in sorted(d.iterdir()) if p.is_file() and not p.suffix]
    if not files:
        raise FileNotFoundError("no fortune files in /usr/share/games/fortunes; install them with "
                                "`apt-get install fortunes-min fortunes`, or pass --text FILE (one sentence per line)")
    entries = []
    for path in files:
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            lines = []
            for line in entry.splitlines():
                if re.match(r"^\s*--", line):  # attribution: "-- Mark Twain", everything after it
                    break
                lines.append(line)
            text = " ".join(" ".join(lines).split())
            entries.append(re.split(r"(?<=[.!?])\s+(?=[\"'(]?[A-Z])", text))
    return entries


def utterance_texts(entries: list[list[str]]) -> list[list[str]]:
    """Clean sentences grouped into utterances of MIN_WORDS..MAX_WORDS words, per entry, deduplicated."""
    seen: set[str] = set()
    out = []
    for sentences in entries:
        group: list[str] = []
        utts = []
        for s in sentences + [None]:
            ok = s is not None and bool(_ALLOWED.match(s)) and not _ABBREV.search(s) and not _ACRONYM.search(s)
            words = len(s.split()) if ok else 0
            current = sum(len(g.split()) for g in group)
            if not ok or current + words > MAX_WORDS:
                if MIN_WORDS <= current <= MAX_WORDS:
                    utts.append(" ".join(group))
                group = [s] if ok and words <= MAX_WORDS else []
            else:
                group.append(s)
        utts = [u for u in utts if normalize_text(u) not in seen and not seen.add(normalize_text(u))]
        if utts:
            out.append(utts)
    return out


def english_speakers() -> list[str]:
    """Sorted ``voice+variant`` names ('' variant = the voice's own): non-mbrola English voices x variants."""
    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("espeak-ng not found; install it with `apt-get install espeak-ng`")

    def listing(arg: str) -> list[list[str]]:
        text = subprocess.run(["espeak-ng", f"--voices={arg}"], capture_output=True, text=True, check=True).stdout
        return [line.split() for line in text.splitlines()[1:] if line.strip()]

    voices = sorted({f[1] for f in listing("en") if len(f) > 4 and f[4].startswith("gmw/")})
    variants = sorted({f[4][3:] for f in listing("variant") if f[4].startswith("!v/") and (len(f) == 5 or
                                                                                            f[5].startswith("("))})
    return [v + (f"+{var}" if var else "") for v in voices for var in ["", *variants]]


def variant_of(speaker: str) -> str:
    """The variant (timbre) of a ``voice+variant`` speaker; '' for a voice's own."""
    return speaker.partition("+")[2]


def split_speakers(speakers: list[str], perm: list[int], per_split: int,
                   rng: np.random.Generator) -> tuple[list[int], list[int], list[int]]:
    """Speaker indices of (dev, test, train): whole variants are held out.

    A variant is a timbre (formants, breathiness, pitch range); the English voices are accents. Dev and test
    each get their own tenth of the variants (at least one), and no train speaker has any of them, so a
    held-out speaker's voice was never heard in training in any accent; the accents are shared, as
    LibriSpeech's held-out speakers share its accents. ``per_split`` speakers are drawn per held-out split.
    """
    variants = sorted({variant_of(s) for s in speakers})
    n = max(1, len(variants) // 10)
    if len(variants) < 2 * n + 1:
        raise ValueError(f"only {len(variants)} espeak-ng variants, too few to hold out 2 x {n}")
    order = [variants[i] for i in rng.permutation(len(variants))]
    dev_var, test_var = set(order[:n]), set(order[n:2 * n])
    dev = [i for i in perm if variant_of(speakers[i]) in dev_var][:per_split]
    test = [i for i in perm if variant_of(speakers[i]) in test_var][:per_split]
    train = [i for i in perm if variant_of(speakers[i]) not in dev_var | test_var]
    return dev, test, train


def _espeak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng speech -> (n,) float32 at RATE."""
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout"]
    proc = subprocess.run(cmd, input=text.encode(), capture_output=True)
    if proc.returncode != 0 or len(proc.stdout) <= 44:
        raise RuntimeError(f"`{' '.join(cmd)}` failed for {text!r}: {proc.stderr.decode(errors='replace').strip()}")
    x, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    return torchaudio.functional.resample(torch.from_numpy(x), rate, RATE).numpy()


def _noise(job: Job, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) noise of kind job.noise: white, pink (1/f power) or babble (other voices summed)."""
    if job.noise == "babble":
        out = np.zeros(n, dtype=np.float32)
        for text, voice in job.babble:
            y = _espeak(text, voice, 170, 50)
            out += np.resize(np.roll(y, int(rng.integers(len(y)))), n)
        return out
    white = rng.standard_normal(n).astype(np.float32)
    if job.noise == "white":
        return white
    spectrum = np.fft.rfft(white) / np.sqrt(np.maximum(np.arange(n // 2 + 1), 1.0))
    return np.fft.irfft(spectrum, n).astype(np.float32)


def render(job: Job) -> tuple[str, int]:
    """Speak, augment and write one utterance (FLAC at RATE); returns (id, samples)."""
    rng = np.random.default_rng(job.seed)
    x = _espeak(job.text, job.voice, job.speed, job.pitch)
    if job.rt60 > 0:  # reverb: direct path + exponentially decaying noise tail (-60 dB after rt60 s)
        t = np.arange(1, int(job.rt60 * RATE)) / RATE
        tail = rng.standard_normal(len(t)) * np.exp(-6.9 * t / job.rt60)
        ir = np.concatenate(([1.0], tail * np.sqrt(rng.uniform(0.2, 1.0) / np.sum(tail ** 2)))).astype(np.float32)
        x = torchaudio.functional.fftconvolve(torch.from_numpy(x), torch.from_numpy(ir)).numpy()[: len(x)]
    if job.noise:
        noise = _noise(job, len(x), rng)
        scale = np.sqrt(np.mean(x ** 2) / (max(float(np.mean(noise ** 2)), 1e-12) * 10 ** (job.snr / 10)))
        x = x + scale * noise
    x = x * (job.peak / max(float(np.abs(x).max()), 1e-6))
    Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(job.path, x.astype(np.float32), RATE, subtype="PCM_16")
    return job.id, len(x)


def _init_worker() -> None:
    torch.set_num_threads(1)


class _Planner:
    """Turns text and speakers into Jobs: chapters of consecutive texts, one speaker each."""

    def __init__(self, speakers: list[str], seed: int, augment: float) -> None:
        self.speakers, self.seed, self.augment = speakers, seed, augment
        self.chapter, self.ratio = 100, 0.9  # next chapter id; spoken seconds per nominal word time

    def voice(self, speaker: int) -> tuple[int, int]:
        rng = np.random.default_rng([self.seed, 1, speaker])
        return int(rng.integers(130, 211)), int(rng.integers(25, 76))

    def estimate(self, job: Job) -> float:
        return self.ratio * len(job.text.split()) * 60.0 / job.speed

    def plan(self, out: Path, speakers: list[int], texts: list[str], cursor: list[int], seconds: float,
             rng: np.random.Generator, chapter_size: tuple[int, int] = (4, 13), clean: bool = False) -> list[Job]:
        """Jobs of about ``seconds`` (estimated), texts taken from texts[cursor[0]:] (wrapping); ``clean``: no
        augmentation and one level (long-form parts, so a recording does not jump in loudness)."""
        jobs: list[Job] = []
        total = 0.0
        while total < seconds or not jobs:
            index = int(rng.choice(speakers))
            spk, chap = str(1000 + index), str(self.chapter)
            self.chapter += 1
            base_speed, base_pitch = self.voice(index)
            for k in range(int(rng.integers(*chapter_size))):
                text = texts[cursor[0] % len(texts)]
                cursor[0] += 1
                uid = f"{spk}-{chap}-{k:04d}"
                job = Job(uid, str(out / spk / chap / f"{uid}.flac"), text, spk, self.speakers[index],
                          base_speed + int(rng.integers(-8, 9)), int(np.clip(base_pitch + rng.integers(-5, 6), 0, 99)),
                          int(rng.integers(2 ** 31)), peak=0.7 if clean else float(rng.uniform(0.3, 0.95)))
                if not clean and rng.random() < self.augment:
                    job.rt60 = float(rng.uniform(0.15, 0.8)) if rng.random() < 0.5 else 0.0
                    job.noise = str(rng.choice(["white", "pink", "babble"])) if rng.random() < 0.8 else ""
                    job.snr = float(rng.uniform(5, 25))
                    job.babble = [(texts[int(rng.integers(len(texts)))], self.speakers[int(rng.integers(
                        len(self.speakers)))]) for _ in range(int(rng.integers(3, 7)))] if job.noise == "babble" else []
                jobs.append(job)
                total += self.estimate(job)
                if total >= seconds:
                    break
        return jobs


def _run_jobs(jobs: list[Job], pool, label: str) -> dict[str, int]:
    """Render jobs (in ``pool`` if given), printing progress; returns id -> samples."""
    results: dict[str, int] = {}
    start = last = time.perf_counter()
    it = pool.imap_unordered(render, jobs, chunksize=4) if pool else map(render, jobs)
    for uid, n in it:
        results[uid] = n
        if time.perf_counter() - last > 10 or len(results) == len(jobs):
            last = time.perf_counter()
            hours = sum(results.values()) / RATE / 3600
            print(f"synth-speech: {label}: {len(results)}/{len(jobs)} utterances, {hours:.3f} h of audio, "
                  f"{last - start:.0f} s", flush=True)
    return results


def _write_split(folder: Path, jobs: list[Job], results: dict[str, int]) -> list[Utterance]:
    """``<speaker>-<chapter>.trans.txt`` (normalised upper-case text) and ``utterances.tsv`` for rendered jobs."""
    transcripts: dict[Path, list[str]] = {}
    rows = ["id\tvoice\tspeed\tpitch\tnoise\tsnr_db\trt60_s\tseconds\tspoken_text"]
    utts = []
    for job in sorted(jobs, key=lambda j: j.id):
        path, seconds, target = Path(job.path), results[job.id] / RATE, normalize_text(job.text).upper()
        transcripts.setdefault(path.parent / f"{job.speaker}-{path.parent.name}.trans.txt", []).append(
            f"{job.id} {target}")
        rows.append(f"{job.id}\t{job.voice}\t{job.speed}\t{job.pitch}\t{job.noise or '-'}\t"
                    f"{job.snr if job.noise else 0:.1f}\t{job.rt60:.2f}\t{seconds:.3f}\t{job.text}")
        utts.append(Utterance(job.id, path, target, job.speaker, path.parent.name, seconds))
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "utterances.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return utts


def _summary(utts: list[Utterance], speakers: list[str]) -> dict:
    used = sorted({u.speaker for u in utts})
    return {"utterances": len(utts), "hours": round(sum(u.duration for u in utts) / 3600, 4),
            "chapters": len({(u.speaker, u.chapter) for u in utts}), "speakers": len(used),
            "voices": [speakers[int(s) - 1000] for s in used]}


def synthesize(out: str | Path, hours: float, seed: int = 0, jobs: int = 1, heldout_fraction: float = 0.04,
               heldout_voices: int = 16, longform_minutes: tuple[float, float] = (5.0, 10.0), longform_count: int = 6,
               longform_gap: float = 0.25, augment: float = 0.5, text_file: str | None = None,
               command: str = "") -> dict:
    """Write the corpus into ``out`` (see the module docstring); returns the manifest."""
    out, start = Path(out), time.perf_counter()
    lo, hi = longform_minutes
    if not (hours > 0 and 0 < lo <= hi and 0 <= augment <= 1 and heldout_voices >= 1 and longform_count >= 0
            and 0 < heldout_fraction <= 10 and longform_gap >= 0):
        raise ValueError(f"bad settings: hours={hours}, longform_minutes={longform_minutes}, augment={augment}, "
                         f"heldout_voices={heldout_voices}, longform_count={longform_count}, "
                         f"heldout_fraction={heldout_fraction}, longform_gap={longform_gap}")
    speakers = english_speakers()
    entries = utterance_texts(fortune_entries(text_file))
    rng = np.random.default_rng(seed)
    texts = [t for i in rng.permutation(len(entries)) for t in entries[i]]
    perm = rng.permutation(len(speakers)).tolist()
    dev_ids, test_ids, train_ids = split_speakers(speakers, perm, heldout_voices, np.random.default_rng([seed, 6]))
    # Held-out sentences: the tail of the shuffled texts, sized for dev + test + long-form with a margin.
    per_text = 0.9 * np.mean([len(t.split()) for t in texts]) * 60 / 170
    need = (2 * heldout_fraction * hours * 3600 + longform_count * hi * 60) / per_text
    split_at = len(texts) - min(int(need * 1.3) + 10, len(texts) // 2)
    train_texts, held_texts = texts[:split_at], texts[split_at:]
    if not train_texts:
        raise ValueError("too little text to split into train and held-out sentences; pass a longer --text FILE")
    planner = _Planner(speakers, seed, augment)
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(jobs, initializer=_init_worker) if jobs > 1 else None
    splits: dict[str, list[Utterance]] = {}
    try:
        train_rng, cursor, train_jobs, results = np.random.default_rng([seed, 2]), [0], [], {}
        for _ in range(20):  # rounds until the rendered hours reach the target (estimates calibrated per round)
            remaining = hours * 3600 - sum(results.values()) / RATE
            if results and remaining <= 0.01 * hours * 3600:
                break
            new = planner.plan(out / "train", train_ids, train_texts, cursor, remaining, train_rng)
            estimate = sum(planner.estimate(j) for j in new)
            done = _run_jobs(new, pool, "train")
            planner.ratio *= sum(done.values()) / RATE / estimate
            train_jobs += new
            results.update(done)
        splits["train"] = _write_split(out / "train", train_jobs, results)
        held = [0]
        for code, name, ids in ((3, "dev", dev_ids), (4, "test", test_ids)):
            new = planner.plan(out / name, ids, held_texts, held, heldout_fraction * hours * 3600,
                               np.random.default_rng([seed, code]))
            splits[name] = _write_split(out / name, new, _run_jobs(new, pool, name))
        lf_rng, parts, new = np.random.default_rng([seed, 5]), out / ".longform-parts", []
        for _ in range(longform_count):
            seconds = 60 * (lo + float(lf_rng.uniform(0.6, 0.85)) * (hi - lo))
            new += planner.plan(parts, test_ids, held_texts, held, seconds, lf_rng, (10 ** 9, 10 ** 9 + 1), clean=True)
        part_utts = _write_split(parts, new, _run_jobs(new, pool, "test-longform parts")) if new else []
        recordings = longform_recordings(part_utts, lo * 60, hi * 60, longform_gap)
        if len(recordings) < longform_count:
            print(f"synth-speech: warning: {len(recordings)} of {longform_count} long-form chapters came out within "
                  f"{lo}-{hi} min", flush=True)
        splits["test-longform"] = write_longform(recordings, out / "test-longform", RATE)
        shutil.rmtree(parts, ignore_errors=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    wall = time.perf_counter() - start
    total_hours = sum(u.duration for utts in splits.values() for u in utts) / 3600
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    manifest = {
        "command": command, "seed": seed, "hours_requested": hours, "rate": RATE, "espeak_ng": version,
        "text_source": text_file or "Debian fortunes (" + ", ".join(str(d) for d in FORTUNE_DIRS if d.is_dir()) + ")",
        "text_units": {"train": len(train_texts), "held_out": len(held_texts), "train_used": cursor[0],
                       "held_out_used": held[0]},
        "augment": augment, "heldout_fraction": heldout_fraction, "longform_minutes": [lo, hi],
        "longform_gap_seconds": longform_gap,
        "splits": {name: _summary(utts, speakers) for name, utts in splits.items()},
        "hours_total": round(total_hours, 4), "wall_seconds": round(wall, 1), "jobs": jobs,
        "hours_per_minute": round(total_hours / (wall / 60), 4),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    table = "\n".join(f"| {n} | {s['utterances']} | {s['hours']:.3f} | {s['speakers']} |"
                      for n, s in manifest["splits"].items())
    (out / "README.md").write_text(f"# Synthetic speech corpus\n\nMade by `{command}`.\n\n| split | utterances | hours "
                                   f"| speakers |\n| --- | --- | --- | --- |\n{table}\n\n{__doc__}", encoding="utf-8")
    return manifest


def cli_synth_speech(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="memstream data synth-speech", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    p.add_argument("--hours", type=float, required=True, help="hours of train audio")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel espeak-ng workers")
    p.add_argument("--heldout-fraction", type=float, default=0.04,
                   help="dev and test hours, each, as a fraction of --hours")
    p.add_argument("--heldout-voices", type=int, default=16,
                   help="speakers in dev and in test, each (their variants never occur in train)")
    p.add_argument("--longform-minutes", type=float, nargs=2, default=(5.0, 10.0), metavar=("MIN", "MAX"),
                   help="length of each test-longform recording")
    p.add_argument("--longform-count", type=int, default=6, help="test-longform recordings")
    p.add_argument("--longform-gap", type=float, default=0.25, help="silence between the parts of a recording (s)")
    p.add_argument("--augment", type=float, default=0.5, help="fraction of utterances with noise and/or reverb")
    p.add_argument("--text", help="sentences, one per line, instead of the fortunes files")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty folder; choose a new --out")
    m = synthesize(out, args.hours, args.seed, max(1, args.jobs), args.heldout_fraction, args.heldout_voices,
                   tuple(args.longform_minutes), args.longform_count, args.longform_gap, args.augment, args.text,
                   "memstream data synth-speech " + " ".join(argv))
    for name, s in m["splits"].items():
        print(f"{name:>14}: {s['utterances']:6d} utterances, {s['hours']:7.3f} h, {s['speakers']:4d} speakers")
    print(f"synth-speech: {m['hours_total']:.3f} h of audio in {m['wall_seconds']:.0f} s "
          f"({m['hours_per_minute']:.3f} h of audio per minute) -> {out}")
    return 0
