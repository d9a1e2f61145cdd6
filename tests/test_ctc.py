"""Streaming CTC decoder: greedy vs a hand-made reference, streaming == offline, prefix beam search vs brute
force, word times, endpoint rules, flush, event format, bad input."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from memstream.pipelines.ctc import VOCAB, CtcDecoder, EndpointConfig, beam_decode, greedy_decode, words_with_times

FS = 0.04


def spelled(frames: str, seed: int = 0, peak: float = 8.0, vocab: list[str] = VOCAB) -> np.ndarray:
    """Peaked log-probs (N, V) whose argmax spells ``frames``, one character a frame, ``_`` = blank."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 0.5, (len(frames), len(vocab)))
    for t, ch in enumerate(frames):
        logits[t, 0 if ch == "_" else vocab.index(ch)] += peak
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def random_log_probs(n: int, seed: int, vocab_size: int = len(VOCAB), scale: float = 2.0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(0.0, scale, (n, vocab_size))
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def run_chunks(decoder: CtcDecoder, x: np.ndarray, seed: int | None) -> list[dict]:
    """Feed x in random chunks of 1..7 frames (one chunk if seed is None), padded with garbage; then flush."""
    rng = np.random.default_rng(seed)
    events, i = [], 0
    while i < len(x):
        n = len(x) - i if seed is None else int(rng.integers(1, 8))
        chunk = x[i:i + n]
        padded = np.concatenate([chunk, np.full((3, x.shape[1]), 5.0)])  # padding is never read
        events += decoder.accept(padded, n_valid=len(chunk))
        i += n
    return events + decoder.flush()


def settled(events: list[dict]) -> list[dict]:
    """The chunking-independent events (partials depend on chunk boundaries), confidences rounded."""
    out = []
    for ev in events:
        if ev["type"] == "partial":
            continue
        ev = json.loads(json.dumps(ev))
        for w in [ev, *ev.get("words", [])]:
            if "confidence" in w:
                w["confidence"] = round(w["confidence"], 9)
        out.append(ev)
    return out


def test_greedy_matches_hand_made_reference():
    frames = "hh_i__  tth_eerr_e_"
    x = spelled(frames)
    assert greedy_decode(x, VOCAB) == "hi there"
    assert greedy_decode(spelled("hel_ll_o"), VOCAB) == "hello"
    assert greedy_decode(spelled("hellllo"), VOCAB) == "helo"
    assert greedy_decode(spelled("____"), VOCAB) == ""
    assert greedy_decode(spelled("  ab  c "), VOCAB) == "ab c"  # separators collapse, no edge spaces
    dec = CtcDecoder(VOCAB, endpoint=None)
    dec.accept(x)
    final = dec.flush()[-1]
    assert final["text"] == "hi there" and final["reason"] == "flush"
    assert [(w["word"], w["start"], w["end"]) for w in final["words"]] == [("hi", 0.0, 0.16), ("there", 0.32, 0.72)]


@pytest.mark.parametrize("method", ["greedy", "beam"])
@pytest.mark.parametrize("kind", ["random", "spelled"])
def test_streaming_equals_offline(method, kind):
    for seed in range(3):
        if kind == "random":
            x = random_log_probs(40, seed)
        else:
            x = spelled("hh_e_ll_lo  wwo_rr_ld  it''s  __a_b_bc", seed)
        offline = (greedy_decode(x, VOCAB) if method == "greedy" else beam_decode(x, VOCAB))
        whole = settled(run_chunks(CtcDecoder(VOCAB, method=method, endpoint=None), x, None))
        assert whole[-1]["text"] == offline
        for chunking in range(4):
            got = settled(run_chunks(CtcDecoder(VOCAB, method=method, endpoint=None), x, 100 * seed + chunking))
            assert got == whole
        if kind == "spelled":
            assert offline == "hello world it's abbc"


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_streaming_equals_offline_with_endpoints(method):
    cfg = EndpointConfig(rule1_min_trailing_silence=0.4, rule2_min_trailing_silence=0.2, rule3_min_utterance_length=1.0)
    x = np.concatenate([spelled("hi___ok_" + "_" * 20 + "ab" * 15 + "__cd", 1), random_log_probs(20, 3)])
    whole = settled(run_chunks(CtcDecoder(VOCAB, method=method, endpoint=cfg), x, None))
    assert {e["reason"] for e in whole if e["type"] == "final"} >= {"rule1", "rule2", "rule3", "flush"}
    for seed in range(4):
        assert settled(run_chunks(CtcDecoder(VOCAB, method=method, endpoint=cfg), x, seed)) == whole


def ctc_log_likelihood(x: np.ndarray, labels: tuple[int, ...], blank: int = 0) -> float:
    """log p(labels | x): the CTC forward algorithm, summing over all alignments."""
    ext = [blank]
    for c in labels:
        ext += [c, blank]
    alpha = np.full(len(ext), -np.inf)
    alpha[0] = x[0, blank]
    if labels:
        alpha[1] = x[0, labels[0]]
    for t in range(1, len(x)):
        prev = alpha.copy()
        for s in range(len(ext)):
            terms = [prev[s]] + ([prev[s - 1]] if s >= 1 else [])
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                terms.append(prev[s - 2])
            alpha[s] = np.logaddexp.reduce(terms) + x[t, ext[s]]
    return float(np.logaddexp(alpha[-1], alpha[-2]) if labels else alpha[-1])


def test_forward_algorithm_matches_torch_ctc_loss():
    x = random_log_probs(6, 7, vocab_size=3)
    for labels in [(1,), (1, 2), (2, 2), (1, 2, 1)]:
        loss = torch.nn.functional.ctc_loss(torch.from_numpy(x)[:, None], torch.tensor([labels]), [6],
                                            [len(labels)], reduction="sum")
        assert ctc_log_likelihood(x, labels) == pytest.approx(-float(loss), abs=1e-6)


def test_prefix_beam_search_finds_the_most_probable_labelling():
    vocab = ["<b>", "a", "b"]
    candidates = [seq for n in range(7) for seq in itertools.product((1, 2), repeat=n)]  # all that fit 6 frames
    differs = 0
    for seed in range(12):
        x = random_log_probs(6, seed, vocab_size=3, scale=1.5)
        scores = {seq: ctc_log_likelihood(x, seq) for seq in candidates}
        best = max(scores, key=scores.get)
        expected = "".join(vocab[c] for c in best)
        assert beam_decode(x, vocab, beam=len(candidates), prune=-np.inf) == expected
        differs += greedy_decode(x, vocab) != expected
    assert differs > 0  # the search is not greedy in disguise


def test_beam_one_degenerates_to_greedy_on_peaked_input():
    x = spelled("hh_e_ll_lo  wwo_rr_ld", 4)
    assert beam_decode(x, VOCAB, beam=1) == greedy_decode(x, VOCAB) == "hello world"
    x = random_log_probs(30, 5)
    text = beam_decode(x, VOCAB, beam=1)
    assert set(text) <= set("".join(VOCAB[1:])) and len(text.replace(" ", "")) <= 30


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_word_times_and_confidence(method):
    frames = "__ab_b__ c"
    x = spelled(frames, peak=12.0)
    dec = CtcDecoder(VOCAB, method=method, endpoint=None, start_time=10.0)
    dec.accept(x)
    assert dec.text == "abb c"
    words = [e for e in dec.flush() if e["type"] == "word"]
    assert [(w["word"], w["start"], w["end"]) for w in words] == [("abb", 10.08, 10.24), ("c", 10.36, 10.4)]
    post = np.exp(x[np.arange(len(frames)), x.argmax(1)])
    assert words[0]["confidence"] == pytest.approx(post[[2, 3, 5]].mean())
    assert words[1]["confidence"] == pytest.approx(post[9])
    chars = [(VOCAB.index("a"), 0, 1, 1.5, 2), (1, 2, 2, 1.0, 1), (VOCAB.index("z"), 3, 3, 0.5, 1)]
    assert words_with_times(chars, VOCAB, 0.5, 1.0) == [{"word": "a", "start": 1.0, "end": 2.0, "confidence": 0.75},
                                                        {"word": "z", "start": 2.5, "end": 3.0, "confidence": 0.5}]


def finals(events):
    return [e for e in events if e["type"] == "final"]


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_rule2_fires_after_trailing_silence_and_starts_a_new_utterance(method):
    x = spelled("hh_i" + "_" * 40 + "ok", 2)  # last emission frame 3; 30 silent frames (1.2 s) end at frame 33
    dec = CtcDecoder(VOCAB, method=method)
    events = run_chunks(dec, x, 9)
    (first, second) = finals(events)
    assert (first["text"], first["reason"], first["start"], first["end"]) == ("hi", "rule2", 0.0, 1.36)
    assert (second["text"], second["reason"], second["start"], second["end"]) == ("ok", "flush", 1.36, 1.84)
    assert [p["text"] for p in events if p["type"] == "partial"][-1] == "ok"


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_rule1_fires_on_silence(method):
    dec = CtcDecoder(VOCAB, method=method)
    events = dec.accept(spelled("_" * 130, 3))
    got = [(e["text"], e["reason"], e["start"], e["end"]) for e in finals(events)]
    assert got == [("", "rule1", 0.0, 2.4), ("", "rule1", 2.4, 4.8)]
    assert [e["reason"] for e in finals(dec.flush())] == ["flush"]  # 10 frames left
    assert dec.flush() == []


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_rule3_waits_for_a_word_boundary(method):
    x = spelled("".join(c * 3 for c in "ab_ _") * 40, 4)  # 24 s of two-letter words without a pause, 15 frames each
    dec = CtcDecoder(VOCAB, method=method, start_time=1.0)
    first, second = finals(run_chunks(dec, x, 5))
    # 20 s = 500 frames is reached on the "b" of word 34 (frames 498-500); its separator starts at frame 504.
    assert (first["reason"], first["start"], first["end"]) == ("rule3", 1.0, 21.2)
    assert first["text"] == " ".join(["ab"] * 34) and second["text"] == " ".join(["ab"] * 6)
    assert second["reason"] == "flush" and second["end"] == 25.0


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_rule3_cuts_anyway_at_one_and_a_half_times_without_a_boundary(method):
    x = spelled("ab_" * 300, 4)  # 36 s without a word separator
    dec = CtcDecoder(VOCAB, method=method, start_time=1.0)
    first, second = finals(run_chunks(dec, x, 5))
    assert (first["reason"], first["start"], first["end"]) == ("rule3", 1.0, 31.0)  # 750 frames
    assert first["text"] == "ab" * 250 and second["text"] == "ab" * 50


def test_greedy_keeps_a_label_held_over_an_endpoint():
    cfg = EndpointConfig(rule3_min_utterance_length=0.2)  # 5 frames; no separator: cut at 8 frames
    dec = CtcDecoder(VOCAB, endpoint=cfg)
    events = dec.accept(spelled("abcdddddddefg")) + dec.flush()
    assert [e["text"] for e in finals(events)] == ["abcd", "efg"]


def test_disabled_endpointing_only_flush_finalises():
    for endpoint in (None, EndpointConfig(enabled=False)):
        dec = CtcDecoder(VOCAB, endpoint=endpoint)
        assert finals(dec.accept(spelled("hi" + "_" * 200))) == []
        assert [e["text"] for e in finals(dec.flush())] == ["hi"]


def test_events_are_json_serialisable_and_never_repeat_partials():
    dec = CtcDecoder(VOCAB, method="beam")
    events = run_chunks(dec, np.concatenate([spelled("hi there" + "_" * 35, 6), random_log_probs(15, 6)]), 3)
    assert json.loads(json.dumps(events)) == events
    kinds = {e["type"] for e in events}
    assert kinds == {"partial", "word", "final"}
    partials = [e["text"] for e in events if e["type"] == "partial"]
    assert all(a != b for a, b in zip(partials, partials[1:]))


def test_n_valid_ignores_padded_frames():
    x = spelled("hi")
    padded = np.concatenate([x, spelled("zzzz", 1)])
    for method in ("greedy", "beam"):
        dec = CtcDecoder(VOCAB, method=method)
        assert dec.accept(padded, n_valid=2)[-1] == {"type": "partial", "text": "hi", "time": 0.08}
        assert dec.accept(padded, n_valid=0) == []
        assert finals(dec.flush())[0]["end"] == 0.08


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "viterbi"}, "unknown method='viterbi'"),
    ({"beam": 0}, "beam=0 must be an integer >= 1"),
    ({"blank": 40}, "blank=40 out of range"),
    ({"frame_seconds": 0}, "frame_seconds=0 must be positive"),
])
def test_bad_configuration_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CtcDecoder(VOCAB, **kwargs)
    with pytest.raises(ValueError, match="rule2_min_trailing_silence=-1 must be positive"):
        EndpointConfig(rule2_min_trailing_silence=-1)


def test_bad_input_raises():
    dec = CtcDecoder(VOCAB)
    good = spelled("ab")
    with pytest.raises(ValueError, match="2-D"):
        dec.accept(good[None])
    with pytest.raises(ValueError, match="V=5 columns but the vocabulary has 29"):
        dec.accept(good[:, :5])
    bad = good.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        dec.accept(bad)
    bad[1, 3] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        dec.accept(bad)
    dec.accept(bad, n_valid=1)  # the bad frame is padding
    for n in (-1, 3, 1.5):
        with pytest.raises(ValueError, match=f"n_valid={n} out of range"):
            dec.accept(good, n_valid=n)
