"""Streaming CTC decoding for the ASR task: greedy, prefix beam search or a word LM (:mod:`memstream.pipelines.asr_lm`),
words with times, endpointing.

Plain Python/numpy, one :class:`CtcDecoder` per stream (not exported). The model emits per segment a
``(T, V)`` array of log-probabilities over ``vocab`` (default :data:`VOCAB`: index 0 the blank ``<b>``, then
``" "`` (the word separator), ``"'"``, ``"a"``..``"z"``); each output frame covers ``frame_seconds`` of audio and
only the first ``n_valid`` frames of a segment are real (the stream's last segment is padded).

Times are stream seconds: ``start_time + frame * frame_seconds``, ``frame`` counting valid frames across all
chunks. A character's *emission* spans the frames its label occupies (greedy: the run of equal argmax labels;
beam: the most probable alignment of the hypothesis, tracked frame by frame). A word starts at the first frame
of its first character and ends at the end of the last frame of its last character; its ``confidence`` is the
mean posterior ``exp(log_prob)`` of its characters' emitted frames.

Decoding is frame-synchronous, so any chunking of a stream gives the same text, word times and endpoints as
one chunk holding it all (confidences agree up to float summation order). Greedy keeps the previous frame's
label across chunks and across endpoints (a label held over a boundary is not emitted twice); the beam resets
to the empty prefix at an endpoint.

Endpointing follows sherpa-onnx (checked after every frame; the rest of the chunk belongs to the next
utterance): *trailing silence* is the number of trailing frames whose argmax is blank (greedy) or that follow
the best hypothesis' last emitted frame (beam); *utterance length* counts frames since the last endpoint.
Rule 1: trailing silence >= ``rule1_min_trailing_silence``; rule 2: something decoded and trailing silence >=
``rule2_min_trailing_silence``; rule 3: utterance length >= ``rule3_min_utterance_length`` (seconds, rounded
to whole frames). Every endpoint emits a ``final`` event, also with empty text (rule 1 on silence).

Events (JSON-serialisable dicts): ``{"type": "partial", "text", "time"}`` after a chunk that changed the open
utterance's text (``time``: end of the chunk's valid frames); ``{"type": "word", "word", "start", "end",
"confidence"}`` per word of a finalised utterance, then ``{"type": "final", "text", "start", "end", "words",
"reason"}`` (``start``/``end``: the utterance's frame span, ``reason``: ``rule1``/``rule2``/``rule3``/``flush``).
Finalised results are never revised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from memstream.models.asr import CHARS

VOCAB: list[str] = list(CHARS)  # the ASR model's character set
NEG_INF = float("-inf")
METHODS = ("greedy", "beam", "lm")


@dataclass(frozen=True)
class EndpointConfig:
    """sherpa-onnx's endpoint rules, in seconds (see the module docstring)."""

    rule1_min_trailing_silence: float = 2.4  # endpoint even if nothing decoded yet
    rule2_min_trailing_silence: float = 1.2  # endpoint after something was decoded
    rule3_min_utterance_length: float = 20.0  # endpoint whatever
    enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("rule1_min_trailing_silence", "rule2_min_trailing_silence", "rule3_min_utterance_length"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"EndpointConfig: {name}={value} must be positive seconds")


def _log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) for Python floats, -inf aware."""
    if a < b:
        a, b = b, a
    return a if b == NEG_INF else a + math.log1p(math.exp(b - a))


def words_with_times(chars, vocab: list[str], frame_seconds: float = 0.04, start_time: float = 0.0) -> list[dict]:
    """Decoded characters -> words with times.

    Args:
        chars: sequence of ``(label, first_frame, last_frame, posterior_sum, frame_count)``, one per emitted
            character in order; frames are stream frame indices.
        vocab: label -> string; labels whose string is whitespace separate words.

    Returns:
        ``[{"word", "start", "end", "confidence"}]``: start = time of ``first_frame`` of the first character,
        end = time of ``last_frame + 1`` of the last one, confidence = mean posterior of the emitted frames.
    """
    words, current = [], []
    for ch in [*chars, None]:
        if ch is not None and vocab[ch[0]].strip():
            current.append(ch)
            continue
        if current:
            total = sum(c[3] for c in current)
            count = sum(c[4] for c in current)
            words.append({"word": "".join(vocab[c[0]] for c in current),
                          "start": round(start_time + current[0][1] * frame_seconds, 6),
                          "end": round(start_time + (current[-1][2] + 1) * frame_seconds, 6),
                          "confidence": float(total / count) if count else 0.0})
            current = []
    return words


def _frames(seconds: float, frame_seconds: float) -> int:
    """Seconds -> whole frames, robust to float error (1.2 s / 0.04 s = 30 frames)."""
    return max(1, math.ceil(seconds / frame_seconds - 1e-6))


class _Endpointer:
    """sherpa-onnx's three rules; rule 3 waits for a word boundary (the last emitted symbol is the word
    separator) so a long utterance is not cut inside a word, but fires regardless at 1.5x its length."""

    def __init__(self, cfg: EndpointConfig, frame_seconds: float, separator: int | None) -> None:
        self.n1 = _frames(cfg.rule1_min_trailing_silence, frame_seconds)
        self.n2 = _frames(cfg.rule2_min_trailing_silence, frame_seconds)
        self.n3 = _frames(cfg.rule3_min_utterance_length, frame_seconds)
        self.n3_hard = _frames(1.5 * cfg.rule3_min_utterance_length, frame_seconds)
        self.separator = separator  # label id of the word separator, None: rule 3 cuts anywhere

    def rules(self, trailing, length, decoded, last_label):
        """Scalars or arrays (frames, frames, bool, last emitted label or -1) -> (rule1, rule2, rule3) fired."""
        boundary = True if self.separator is None else (last_label == self.separator) | (last_label < 0)
        return (trailing >= self.n1, decoded & (trailing >= self.n2),
                ((length >= self.n3) & boundary) | (length >= self.n3_hard))

    @staticmethod
    def reason(r1, r2, r3) -> str | None:
        return "rule1" if r1 else "rule2" if r2 else "rule3" if r3 else None


class _Greedy:
    """Argmax per frame, repeats collapsed, blanks dropped; vectorised per chunk."""

    def __init__(self, blank: int) -> None:
        self.blank = blank
        self.prev = blank  # argmax label of the last frame seen (kept across endpoints)
        self.new_utterance()

    def new_utterance(self) -> None:
        self.chars: list[list] = []  # [label, first, last, posterior_sum, count]
        self.open = False  # the last char of self.chars is still being emitted
        self.trailing = 0  # trailing blank frames of the utterance

    def consume(self, x: np.ndarray, frame0: int, length: int, ep: _Endpointer | None) -> tuple[int, str | None]:
        """x: (n, V) -> frames consumed (up to and including an endpoint frame), endpoint reason or None."""
        best = x.argmax(axis=1)  # (n,)
        n = len(best)
        nonblank = best != self.blank
        prev = np.concatenate([[self.prev], best[:-1]])
        emit = nonblank & (best != prev)
        idx = np.arange(n)
        last_nb = np.maximum.accumulate(np.where(nonblank, idx, -1))
        trailing = np.where(last_nb >= 0, idx - last_nb, self.trailing + idx + 1)  # (n,)
        k, reason = n, None
        if ep is not None:
            decoded = bool(self.chars) | (np.cumsum(emit) > 0)
            last_emit = np.maximum.accumulate(np.where(emit, idx, -1))
            last_label = np.where(last_emit >= 0, best[np.maximum(last_emit, 0)],
                                  self.chars[-1][0] if self.chars else -1)
            r1, r2, r3 = ep.rules(trailing, length + idx + 1, decoded, last_label)
            fired = r1 | r2 | r3
            if fired.any():
                k = int(fired.argmax()) + 1
                reason = ep.reason(r1[k - 1], r2[k - 1], r3[k - 1])
        best, nonblank, emit = best[:k], nonblank[:k], emit[:k]
        post = np.exp(x[idx[:k], best])  # (k,) posterior of the argmax label
        run = np.cumsum(emit) - 1  # (k,) index of the char being emitted in this piece, -1 before the first
        carried = nonblank & (run < 0)  # continues the run open at the piece's start
        if self.open and carried.any():
            c = int(carried.sum())
            ch = self.chars[-1]
            ch[2] += c
            ch[3] += float(post[carried].sum())
            ch[4] += c
        firsts = np.flatnonzero(emit)
        if len(firsts):
            own = nonblank & (run >= 0)
            sums = np.bincount(run[own], weights=post[own], minlength=len(firsts))
            counts = np.bincount(run[own], minlength=len(firsts))
            for f, s, c in zip(firsts.tolist(), sums.tolist(), counts.tolist()):
                self.chars.append([int(best[f]), frame0 + f, frame0 + f + c - 1, s, c])
        self.open = bool(nonblank[-1]) and (len(firsts) > 0 or self.open)
        self.prev = int(best[-1])
        self.trailing = int(trailing[k - 1])
        return k, reason

    def best_chars(self) -> list[list]:
        return self.chars

    final_chars = best_chars


class _Beam:
    """CTC prefix beam search carried frame by frame.

    Each hypothesis is ``prefix -> [log p ending in blank, log p ending in non-blank, node]``; ``node`` is a
    linked list ``(parent, label, first, last, posterior_sum, count)`` of the prefix's characters with the
    frames of its most probable alignment (the largest single contribution wins when prefixes merge).
    """

    def __init__(self, blank: int, beam: int, prune: float) -> None:
        self.blank, self.beam, self.prune = blank, beam, prune
        self.new_utterance()

    def new_utterance(self) -> None:
        self.hyps: dict[tuple, list] = {(): [0.0, NEG_INF, None]}
        self.best = None  # node of the best hypothesis

    def _step(self, row: list[float], cands: list[int], t: int) -> None:
        nxt: dict[tuple, list] = {}  # prefix -> [pb, pnb, node, best contribution]

        def add(prefix, blank_end, score, node):
            e = nxt.get(prefix)
            if e is None:
                nxt[prefix] = [score, NEG_INF, node, score] if blank_end else [NEG_INF, score, node, score]
                return
            e[0 if blank_end else 1] = _log_add(e[0 if blank_end else 1], score)
            if score > e[3]:
                e[2], e[3] = node, score

        lb = row[self.blank]
        for prefix, (pb, pnb, node) in self.hyps.items():
            total = _log_add(pb, pnb)
            add(prefix, True, total + lb, node)
            last = prefix[-1] if prefix else -1
            if prefix and pnb > NEG_INF:  # the last character goes on being emitted
                p = row[last]
                add(prefix, False, pnb + p, (node[0], last, node[2], t, node[4] + math.exp(p), node[5] + 1))
            for c in cands:
                p = row[c]
                score = (pb if c == last else total) + p
                if score > NEG_INF:
                    add(prefix + (c,), False, score, (node, c, t, t, math.exp(p), 1))
        ranked = sorted(nxt.items(), key=lambda kv: (-_log_add(kv[1][0], kv[1][1]), kv[0]))[: self.beam]
        self.hyps = {prefix: e[:3] for prefix, e in ranked}
        self.best = ranked[0][1][2]

    def consume(self, x: np.ndarray, frame0: int, length: int, ep: _Endpointer | None) -> tuple[int, str | None]:
        """x: (n, V) -> frames consumed (up to and including an endpoint frame), endpoint reason or None."""
        keep = x >= self.prune  # (n, V) candidate labels
        keep[:, self.blank] = False
        for j, row in enumerate(x.tolist()):
            t = frame0 + j
            self._step(row, np.flatnonzero(keep[j]).tolist(), t)
            if ep is not None:
                trailing = t - self.best[3] if self.best is not None else length + j + 1
                last_label = self.best[1] if self.best is not None else -1
                reason = ep.reason(*ep.rules(trailing, length + j + 1, self.best is not None, last_label))
                if reason:
                    return j + 1, reason
        return len(x), None

    def best_chars(self) -> list[tuple]:
        chars, node = [], self.best
        while node is not None:
            chars.append(node[1:])
            node = node[0]
        return chars[::-1]

    final_chars = best_chars


def _valid_frames(log_probs, vocab_size: int, n_valid: int | None) -> np.ndarray:
    """Validate a chunk: (T, V) log-probs -> its first n_valid frames as float64."""
    x = np.asarray(log_probs)
    if x.ndim != 2:
        raise ValueError(f"log_probs must be 2-D (T, V), got shape {x.shape}")
    if x.shape[1] != vocab_size:
        raise ValueError(f"log_probs has V={x.shape[1]} columns but the vocabulary has {vocab_size} entries")
    if n_valid is None:
        n_valid = x.shape[0]
    if isinstance(n_valid, bool) or not isinstance(n_valid, int | np.integer) or not 0 <= n_valid <= x.shape[0]:
        raise ValueError(f"n_valid={n_valid!r} out of range: must be an integer in [0, {x.shape[0]}]")
    x = x[:n_valid].astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        raise ValueError("log_probs contains non-finite values (NaN or inf) in its valid frames")
    return x


class CtcDecoder:
    """Per-stream streaming CTC decoder: log-prob chunks in, partial/word/final events out.

    Args:
        vocab: label strings, ``len(vocab) == V`` (default vocabulary: :data:`VOCAB`).
        frame_seconds: audio covered by one output frame.
        method: ``greedy`` (vectorised argmax), ``beam`` (prefix beam search) or ``lm`` (a word lexicon and
            n-gram, :mod:`memstream.pipelines.asr_lm`; needs ``lm``).
        beam: hypotheses kept per frame (beam search).
        prune: log-prob threshold for the characters a hypothesis is extended with (beam search).
        blank: index of the blank label.
        endpoint: endpoint rules; None or ``enabled=False``: only :meth:`flush` finalises.
        start_time: stream time of the first frame.
        lm: the :class:`memstream.pipelines.asr_lm.LanguageModel` of ``method="lm"``.
    """

    def __init__(self, vocab: list[str], *, frame_seconds: float = 0.04, method: str = "greedy", beam: int = 8,
                 prune: float = -12.0, blank: int = 0, endpoint: EndpointConfig | None = EndpointConfig(),
                 start_time: float = 0.0, lm=None) -> None:
        if len(vocab) < 2:
            raise ValueError(f"CtcDecoder: vocab has {len(vocab)} entries, needs the blank and at least one label")
        if method not in METHODS:
            raise ValueError(f"CtcDecoder: unknown method={method!r}, expected one of {METHODS}")
        if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
            raise ValueError(f"CtcDecoder: beam={beam!r} must be an integer >= 1")
        if not 0 <= blank < len(vocab):
            raise ValueError(f"CtcDecoder: blank={blank} out of range for a vocabulary of {len(vocab)}")
        if not frame_seconds > 0:
            raise ValueError(f"CtcDecoder: frame_seconds={frame_seconds} must be positive")
        if (method == "lm") != (lm is not None):
            raise ValueError("CtcDecoder: method='lm' and a language model go together")
        if math.isnan(prune):
            raise ValueError("CtcDecoder: prune=nan must be a log-probability threshold")
        self.vocab, self.frame_seconds, self.start_time = list(vocab), float(frame_seconds), float(start_time)
        self.method, self.beam, self.prune, self.blank, self.lm = method, beam, float(prune), blank, lm
        use = endpoint is not None and endpoint.enabled
        separator = self.vocab.index(" ") if " " in self.vocab else None
        self._endpointer = _Endpointer(endpoint, self.frame_seconds, separator) if use else None
        self._search = self._new_search()
        self._frame = 0  # valid frames seen in the stream
        self._utt_start = 0  # frame where the open utterance starts
        self._partial = ""

    def _new_search(self):
        if self.method == "lm":
            from memstream.pipelines.asr_lm import LexiconSearch

            return LexiconSearch(self.vocab, self.lm, self.blank)
        return _Greedy(self.blank) if self.method == "greedy" else _Beam(self.blank, self.beam, self.prune)

    def _time(self, frame: int) -> float:
        return round(self.start_time + frame * self.frame_seconds, 6)

    def _words(self) -> list[dict]:
        return words_with_times(self._search.best_chars(), self.vocab, self.frame_seconds, self.start_time)

    @property
    def text(self) -> str:
        """Current best hypothesis of the open utterance: its words joined by single spaces."""
        return " ".join(w["word"] for w in self._words())

    def accept(self, log_probs: np.ndarray, n_valid: int | None = None) -> list[dict]:
        """log_probs: (T, V) of one segment, first ``n_valid`` frames valid (default all) -> its events."""
        x = _valid_frames(log_probs, len(self.vocab), n_valid)
        events, pos = [], 0
        while pos < len(x):
            k, reason = self._search.consume(x[pos:], self._frame, self._frame - self._utt_start, self._endpointer)
            pos += k
            self._frame += k
            if reason:
                events += self._finalise(reason)
        text = self.text
        if text != self._partial:
            self._partial = text
            events.append({"type": "partial", "text": text, "time": self._time(self._frame)})
        return events

    def flush(self) -> list[dict]:
        """End of stream: finalise the open utterance (if it holds any frame) and reset the search."""
        events = self._finalise("flush") if self._frame > self._utt_start or self._search.best_chars() else []
        self._search = self._new_search()
        return events

    def _finalise(self, reason: str) -> list[dict]:
        words = words_with_times(self._search.final_chars(), self.vocab, self.frame_seconds, self.start_time)
        events: list[dict] = [{"type": "word", **w} for w in words]
        events.append({"type": "final", "text": " ".join(w["word"] for w in words),
                       "start": self._time(self._utt_start), "end": self._time(self._frame),
                       "words": words, "reason": reason})
        self._utt_start = self._frame
        self._partial = ""
        self._search.new_utterance()
        return events


def greedy_decode(log_probs: np.ndarray, vocab: list[str], blank: int = 0) -> str:
    """Offline greedy CTC decoding of a whole utterance: log_probs (N, V) -> text (words joined by spaces)."""
    decoder = CtcDecoder(vocab, blank=blank, endpoint=None)
    decoder.accept(log_probs)
    return decoder.text


def beam_decode(log_probs: np.ndarray, vocab: list[str], beam: int = 8, blank: int = 0,
                prune: float = -12.0) -> str:
    """Offline CTC prefix beam search of a whole utterance: log_probs (N, V) -> best text."""
    decoder = CtcDecoder(vocab, method="beam", beam=beam, prune=prune, blank=blank, endpoint=None)
    decoder.accept(log_probs)
    return decoder.text
