"""Word language model decoding for the ASR task: a lexicon and an n-gram built from transcripts, searched
with flashlight's lexicon beam decoder (torchaudio's ``ctc_decoder``; pip package ``flashlight-text``).

- ``memstream data asr-lm --data CORPUS --out DIR`` writes ``DIR/lexicon.txt`` (every word of the corpus
  spelled in the model's characters, each spelling ending in the word separator) and ``DIR/lm.arpa``: an
  n-gram of order ``--order`` with interpolated absolute discounting (Ney's discount ``D``), written in ARPA
  backoff form: a seen n-gram stores its interpolated probability, a context ``h`` stores the weight
  ``D * distinct(h) / count(h)`` that its unseen continuations get on top of the next lower order.
  ``<unk>`` takes one count of the unigram mass; the corpus is the training split, never the test speech.
  ``--words FILE`` (a word list such as Debian's ``/usr/share/dict/words``) adds words the transcripts lack to
  the lexicon, each at the unseen-word probability.
- :class:`LexiconSearch` is the search of :class:`memstream.pipelines.ctc.CtcDecoder` with ``method="lm"``:
  chunks go to the flashlight decoder as they arrive (frame-synchronous, so any chunking gives the same
  result); endpoints and partial text follow the greedy path (a partial is provisional); each final
  utterance is the decoder's best word sequence, with word times from the frames its characters were
  emitted at. Words outside the lexicon cannot be produced: the corpus must be large and close to the
  speech (the out-of-vocabulary rate of the test text bounds the word error rate from below).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LEXICON, ARPA = "lexicon.txt", "lm.arpa"
BLANK_TOKEN, SEPARATOR_TOKEN, UNK = "-", "|", "<unk>"


@dataclass(frozen=True)
class LanguageModel:
    """A folder written by ``memstream data asr-lm`` and how much to trust it.

    Attributes:
        path: folder with ``lexicon.txt`` and ``lm.arpa``.
        weight: LM log-probability weight against the acoustic model's.
        word_score: added per word (positive favours more words).
        beam: hypotheses kept per frame.
    """

    path: str
    weight: float = 1.0
    word_score: float = 0.0
    beam: int = 50

    def __post_init__(self) -> None:
        folder = Path(self.path)
        for name in (LEXICON, ARPA):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder}: no {name}; build one with `memstream data asr-lm`")
        if self.beam < 1:
            raise ValueError(f"LanguageModel: beam={self.beam} must be >= 1")


def ngram_counts(sentences: Iterable[list[str]], order: int) -> list[Counter]:
    """counts[n][(w1..wn)] for n = 1..order, sentences padded with <s> and </s> (<s> alone is not counted)."""
    counts = [Counter() for _ in range(order + 1)]
    for words in sentences:
        t = ["<s>", *words, "</s>"]
        for n in range(1, order + 1):
            for i in range(len(t) - n + 1):
                if n == 1 and t[i] == "<s>":
                    continue
                counts[n][tuple(t[i:i + n])] += 1
    return counts


def interpolated_ngrams(counts: list[Counter], discount: float) -> tuple[dict[tuple, float], dict[tuple, float]]:
    """Counts -> (probability of every seen n-gram, backoff weight of every context), the ARPA backoff form of
    interpolated absolute discounting: p(w|h) = max(c(hw) - D, 0) / c(h) + D * distinct(h) / c(h) * p(w|h')."""
    order = len(counts) - 1
    total = sum(counts[1].values())
    vocab = len(counts[1]) + 1  # + <unk>
    prob = {g: (c + 1) / (total + vocab) for g, c in counts[1].items()}
    prob[(UNK,)] = 1 / (total + vocab)
    backoff: dict[tuple, float] = {}

    def lower(g: tuple) -> float:
        """p(w | the shorter context), through backoff where the shorter n-gram was never seen."""
        g, weight = g[1:], 1.0
        while len(g) > 1 and g not in prob:
            weight *= backoff.get(g[:-1], 1.0)
            g = g[1:]
        return weight * prob.get(g, prob[(UNK,)])

    for n in range(2, order + 1):
        context_total, context_types = Counter(), Counter()
        for g, c in counts[n].items():
            context_total[g[:-1]] += c
            context_types[g[:-1]] += 1
        for h, c in context_total.items():
            backoff[h] = discount * context_types[h] / c
        for g, c in counts[n].items():
            h = g[:-1]
            prob[g] = max(c - discount, 0.0) / context_total[h] + backoff[h] * lower(g)
    return prob, backoff


def write_arpa(path: Path, prob: dict[tuple, float], backoff: dict[tuple, float], order: int) -> None:
    by_order = [[g for g in prob if len(g) == n] for n in range(1, order + 1)]
    if ("<s>",) not in prob:  # a context only: it is never predicted
        by_order[0].append(("<s>",))
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\\data\\\n" + "".join(f"ngram {n}={len(gs)}\n" for n, gs in enumerate(by_order, 1)))
        for n, grams in enumerate(by_order, 1):
            f.write(f"\n\\{n}-grams:\n")
            for g in sorted(grams):
                p = math.log10(prob[g]) if g in prob else -99.0
                line = f"{p:.6f}\t{' '.join(g)}"
                if n < order:
                    line += f"\t{math.log10(backoff[g]) if g in backoff else 0.0:.6f}"
                f.write(line + "\n")
        f.write("\n\\end\\\n")


def build_language_model(texts: Iterable[str], out: str | Path, vocab: list[str], order: int = 3,
                         discount: float = 0.7, extra_words: Iterable[str] = ()) -> dict:
    """Transcripts -> ``out/lexicon.txt`` and ``out/lm.arpa`` (see the module docstring). Returns a summary.

    ``extra_words`` (e.g. a dictionary's word list; normalised as transcripts are, and left out where that makes
    more than one word) join the lexicon and the unigram with a count of 0. The add-one smoothing gives each the
    probability of ``<unk>``, so a word the transcripts never had can still be recognised, at the cost the
    n-gram puts on a word it has not seen."""
    from memstream.pipelines.speech_data import normalize_text

    if order < 1:
        raise ValueError(f"asr-lm: order={order} must be >= 1")
    if not 0.0 < discount < 1.0:
        raise ValueError(f"asr-lm: discount={discount} must lie in (0, 1)")
    letters = {c for c in vocab[1:] if c.strip()}
    sentences, dropped = [], 0
    for text in texts:
        words = normalize_text(text).split()
        kept = [w for w in words if set(w) <= letters]
        dropped += len(words) - len(kept)
        if kept:
            sentences.append(kept)
    if not sentences:
        raise ValueError("asr-lm: no words in the transcripts")
    counts = ngram_counts(sentences, order)
    added = 0
    for word in extra_words:
        w = normalize_text(word)
        # an entry that normalises to several words (x-ray, r2d2) is no one word's spelling
        if w and " " not in w and set(w) <= letters and (w,) not in counts[1]:
            counts[1][(w,)] = 0
            added += 1
    prob, backoff = interpolated_ngrams(counts, discount)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    words = sorted(w for (w,) in counts[1] if w != "</s>")
    (out / LEXICON).write_text("".join(f"{w}\t{' '.join(w)} {SEPARATOR_TOKEN}\n" for w in words), encoding="utf-8")
    write_arpa(out / ARPA, prob, backoff, order)
    summary = {"sentences": len(sentences), "words": sum(len(s) for s in sentences), "lexicon": len(words),
               "order": order, "discount": discount, "ngrams": [len(c) for c in counts[1:]],
               "dropped_words": dropped, "extra_words": added}
    (out / "lm.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


_LOADED: dict[tuple, tuple] = {}  # (LanguageModel, tokens) -> what every decoder of it shares
_IDLE: dict[tuple, list] = {}  # (LanguageModel, tokens) -> decoders whose search has ended


def _flashlight_decoder(lm: LanguageModel, tokens: tuple[str, ...]):
    """A flashlight lexicon decoder for ``lm``: the lexicon, word dictionary and KenLM model are loaded once per
    process, and a decoder whose search has ended is reused (building its lexicon trie takes ~0.1 s)."""
    key = (lm, tokens)
    if _IDLE.get(key):
        return _IDLE[key].pop()
    try:
        # torchaudio's own builder (ctc_decoder) reloads everything per call; its parts are used here so the
        # loaded model is shared (torchaudio 2.11 is pinned: these names are stable there).
        from torchaudio.models.decoder import CTCDecoder
        from torchaudio.models.decoder import _ctc_decoder as fl
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("LM decoding needs flashlight-text: pip install 'memstream[lm]'") from e
    if key not in _LOADED:
        words = fl._load_words(str(Path(lm.path) / LEXICON))
        token_dict = fl._Dictionary(list(tokens))
        word_dict = fl._get_word_dict(words, str(Path(lm.path) / ARPA), None, token_dict, UNK)
        if fl._KenLM is None:
            raise RuntimeError("flashlight-text was built without KenLM: it cannot read lm.arpa")
        model = fl._KenLM(str(Path(lm.path) / ARPA), word_dict)
        options = fl._LexiconDecoderOptions(beam_size=lm.beam, beam_size_token=token_dict.index_size(),
                                            beam_threshold=50.0, lm_weight=lm.weight, word_score=lm.word_score,
                                            unk_score=float("-inf"), sil_score=0.0, log_add=False,
                                            criterion_type=fl._CriterionType.CTC)
        _LOADED[key] = (words, word_dict, token_dict, model, options)
    words, word_dict, token_dict, model, options = _LOADED[key]
    return CTCDecoder(nbest=1, lexicon=words, word_dict=word_dict, tokens_dict=token_dict, lm=model,
                      decoder_options=options, blank_token=BLANK_TOKEN, sil_token=SEPARATOR_TOKEN, unk_word=UNK)


class LexiconSearch:
    """The ``lm`` search of :class:`memstream.pipelines.ctc.CtcDecoder` (see the module docstring)."""

    def __init__(self, vocab: list[str], lm: LanguageModel, blank: int) -> None:
        from memstream.pipelines.ctc import _Greedy

        separator = vocab.index(" ") if " " in vocab else None
        if separator is None:
            raise ValueError("LexiconSearch: the vocabulary has no word separator ' '")
        tokens = tuple(BLANK_TOKEN if i == blank else SEPARATOR_TOKEN if i == separator else t
                       for i, t in enumerate(vocab))
        self._key = (lm, tokens)
        self.decoder = _flashlight_decoder(lm, tokens)
        self.greedy = _Greedy(blank)
        self.new_utterance()

    def __del__(self) -> None:
        decoder = getattr(self, "decoder", None)
        if decoder is not None:  # the next stream's search takes it
            _IDLE.setdefault(self._key, []).append(decoder)

    def new_utterance(self) -> None:
        self.greedy.new_utterance()
        self.decoder.decode_begin()
        self.first: int | None = None  # stream frame of the utterance's first frame
        self.rows: list[np.ndarray] = []

    def consume(self, x: np.ndarray, frame0: int, length: int, ep) -> tuple[int, str | None]:
        import torch

        k, reason = self.greedy.consume(x, frame0, length, ep)
        if self.first is None:
            self.first = frame0
        self.decoder.decode_step(torch.from_numpy(np.ascontiguousarray(x[:k], dtype=np.float32)))
        self.rows.append(x[:k])
        return k, reason

    def best_chars(self) -> list:
        return self.greedy.best_chars()  # partial text: the greedy path, provisional

    def final_chars(self) -> list:
        """The decoder's best word sequence for the utterance, as (label, frame, frame, posterior, 1) chars."""
        self.decoder.decode_end()
        hyps = self.decoder.get_final_hypothesis()
        x = np.concatenate(self.rows) if self.rows else np.zeros((0, 1))
        if not hyps or not len(x):
            return []
        chars = []
        for tok, t in zip(hyps[0].tokens.tolist(), hyps[0].timesteps.tolist(), strict=True):
            # flashlight's path starts with the initial state, so its index i is frame i - 1
            t = min(max(int(t) - 1, 0), len(x) - 1)
            chars.append((int(tok), self.first + t, self.first + t, float(np.exp(x[t, int(tok)])), 1))
        return chars


def add_lm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lm", metavar="DIR", help="decode with the word lexicon and n-gram of DIR (`memstream data "
                                               "asr-lm`; needs flashlight-text); partials stay greedy")
    p.add_argument("--lm-weight", type=float, default=1.0, help="LM weight against the acoustic model (default 1)")
    p.add_argument("--word-score", type=float, default=0.0, help="score added per word (default 0)")
    p.add_argument("--lm-beam", type=int, default=50, help="hypotheses kept per frame (default 50)")


def lm_from_args(args: argparse.Namespace) -> LanguageModel | None:
    if not args.lm:
        return None
    return LanguageModel(args.lm, weight=args.lm_weight, word_score=args.word_score, beam=args.lm_beam)


def cli_data(argv: list[str]) -> int:
    from memstream.models.asr import CHARS
    from memstream.pipelines.speech_data import read_corpus

    p = argparse.ArgumentParser(prog="memstream data asr-lm", description=(
        "A word lexicon and an n-gram language model (ARPA) from a corpus' transcripts, for "
        "`run|eval|bench asr --lm DIR`. Build it from training text only."))
    p.add_argument("--data", required=True, help="corpus folder (LibriSpeech layout or transcripts.tsv)")
    p.add_argument("--out", required=True, help="output folder: lexicon.txt, lm.arpa, lm.json")
    p.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    p.add_argument("--discount", type=float, default=0.7, help="absolute discount D (default 0.7)")
    p.add_argument("--words", action="append", default=[], metavar="FILE",
                   help="a word list (one word per line, e.g. /usr/share/dict/words from Debian's wamerican) whose "
                        "words join the lexicon at the unseen-word probability; repeatable")
    args = p.parse_args(argv)
    corpus = read_corpus(args.data)
    extra = []
    for path in args.words:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--words {path}: no such file")
        extra += Path(path).read_text(encoding="utf-8", errors="replace").split()
    summary = build_language_model((u.text for u in corpus), args.out, list(CHARS), args.order, args.discount,
                                   extra_words=extra)
    print(json.dumps(summary))
    return 0
