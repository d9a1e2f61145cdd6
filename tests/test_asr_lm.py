"""Word LM decoding for ASR: the n-gram is a proper distribution, KenLM reads it, the lexicon search corrects what
greedy decoding misspells, streaming equals one chunk, and the CLI builds and uses it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from memstream.models.asr import CHARS
from memstream.pipelines import cli
from memstream.pipelines.asr_lm import (
    ARPA,
    LEXICON,
    LanguageModel,
    build_language_model,
    interpolated_ngrams,
    ngram_counts,
)
from memstream.pipelines.ctc import CtcDecoder, greedy_decode

pytest.importorskip("flashlight.lib.text", reason="flashlight-text is not installed (pip install 'memstream[lm]')")

VOCAB = list(CHARS)
TEXTS = ["hello world", "the world is round", "hello there", "the cat sat on the mat", "a cat and a hat",
         "hello cat", "round and round the world goes"]


def _p(prob: dict, backoff: dict, words: tuple[str, ...]) -> float:
    """p(w | h) read from the ARPA backoff form (what KenLM computes)."""
    g, weight = words, 1.0
    while g not in prob:
        if len(g) == 1:
            return weight * prob[("<unk>",)]
        weight *= backoff.get(g[:-1], 1.0)
        g = g[1:]
    return weight * prob[g]


@pytest.mark.parametrize("order", [2, 3])
def test_ngram_is_a_distribution_in_every_context(order):
    sentences = [t.split() for t in TEXTS]
    prob, backoff = interpolated_ngrams(ngram_counts(sentences, order), discount=0.7)
    vocab = sorted({w for s in sentences for w in s} | {"</s>", "<unk>"})
    contexts = [("<s>",), ("hello",), ("the",), ("round",), ("zebra",)]
    if order == 3:
        contexts += [("<s>", "the"), ("the", "world"), ("cat", "sat"), ("zebra", "the")]
    for h in contexts:
        total = sum(_p(prob, backoff, (*h, w)) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-9), h
    assert _p(prob, backoff, ("hello", "world")) > _p(prob, backoff, ("hello", "mat"))  # seen beats unseen


def test_extra_words_join_the_lexicon_at_the_unseen_word_probability(tmp_path):
    sentences = [t.split() for t in TEXTS]
    counts = ngram_counts(sentences, 3)
    for w in ("zebra", "giraffe"):
        counts[1][(w,)] = 0
    prob, backoff = interpolated_ngrams(counts, discount=0.7)
    vocab = sorted({w for s in sentences for w in s} | {"</s>", "<unk>", "zebra", "giraffe"})
    for h in [("<s>",), ("hello",), ("the", "world"), ("zebra", "the")]:
        assert sum(_p(prob, backoff, (*h, w)) for w in vocab) == pytest.approx(1.0, abs=1e-9), h
    assert prob[("zebra",)] == prob[("<unk>",)] < prob[("mat",)]
    summary = build_language_model(TEXTS, tmp_path, VOCAB, extra_words=["Zebra", "giraffe's", "hello", "café",
                                                                         "x-ray", "r2d2"])
    lexicon = dict(line.split("\t") for line in (tmp_path / LEXICON).read_text().splitlines())
    # normalised as transcripts are; a word the transcripts have is not added twice; an entry that normalises to
    # several words is left out
    assert {"zebra", "giraffe's", "cafe"} <= set(lexicon) and not {"x", "ray", "r", "d"} & set(lexicon)
    assert summary["extra_words"] == 3 and summary["lexicon"] == len(lexicon)


def test_build_writes_lexicon_and_arpa(tmp_path):
    summary = build_language_model(TEXTS + ["caf\u00e9 au lait"], tmp_path, VOCAB, order=3)
    lexicon = dict(line.split("\t") for line in (tmp_path / LEXICON).read_text().splitlines())
    assert lexicon["hello"] == "h e l l o |" and "</s>" not in lexicon and summary["lexicon"] == len(lexicon)
    arpa = (tmp_path / ARPA).read_text()
    assert arpa.startswith("\n\\data\\\nngram 1=") and arpa.rstrip().endswith("\\end\\")
    assert summary["ngrams"][0] == len([w for w in lexicon]) + 1  # the words and </s>
    with pytest.raises(ValueError, match="order"):
        build_language_model(TEXTS, tmp_path, VOCAB, order=0)


def _emissions(spelling: list[str | tuple], floor: float = 1e-3) -> np.ndarray:
    """One frame per entry: a label (prob ~1) or (label, p, other label) splitting the frame's mass."""
    x = np.full((len(spelling), len(VOCAB)), floor)
    for t, entry in enumerate(spelling):
        if isinstance(entry, tuple):
            a, p, b = entry
            x[t, VOCAB.index(a)] += p
            x[t, VOCAB.index(b)] += 1 - p
        else:
            x[t, VOCAB.index(entry)] += 1.0
    return np.log(x / x.sum(1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    build_language_model(TEXTS, out, VOCAB, order=3)
    return out


def test_lexicon_search_corrects_a_misspelling_and_streams(lm_dir):
    # "hello world" where the acoustic model prefers a blank over the second 'l': greedy says "helo world".
    frames = ["<b>", "h", "e", "l", ("<b>", 0.6, "l"), ("<b>", 0.6, "l"), "o", " ", "w", "o", "r", "l", "d", "<b>"]
    x = _emissions(frames)
    assert greedy_decode(x, VOCAB) == "helo world"
    lm = LanguageModel(str(lm_dir), weight=1.0)
    results = []
    for chunk in (1, 3, len(x)):  # any chunking: the same words and times
        decoder = CtcDecoder(VOCAB, method="lm", lm=lm, endpoint=None)
        events = []
        for i in range(0, len(x), chunk):
            events += decoder.accept(x[i:i + chunk])
        events += decoder.flush()
        results.append([e for e in events if e["type"] in ("word", "final")])
    assert results[0] == results[1] == results[2]
    final = results[0][-1]
    assert final["type"] == "final" and final["text"] == "hello world"
    assert [w["word"] for w in final["words"]] == ["hello", "world"]
    hello, world = final["words"]
    # frame times: 'h' is frame 1, 'o' frame 6, 'w' frame 8, 'd' frame 12 (a word ends where its last frame does)
    assert (hello["start"], hello["end"], world["start"], world["end"]) == pytest.approx((0.04, 0.28, 0.32, 0.52))
    assert 0.0 < hello["confidence"] <= 1.0
    with pytest.raises(ValueError, match="go together"):
        CtcDecoder(VOCAB, method="lm")
    with pytest.raises(FileNotFoundError, match="asr-lm"):
        LanguageModel(str(lm_dir / "missing"))


def test_cli_builds_the_lm_and_run_refuses_a_missing_one(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "transcripts.tsv").write_text("file\treference\n" + "".join(f"u{i}.wav\t{t}\n"
                                                                          for i, t in enumerate(TEXTS)))
    for i in range(len(TEXTS)):  # the reader wants the audio files to exist
        import soundfile as sf

        sf.write(corpus / f"u{i}.wav", np.zeros(1600, np.float32), 16000)
    assert cli.main(["data", "asr-lm", "--data", str(corpus), "--out", str(tmp_path / "lm"), "--order", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["order"] == 2 and summary["sentences"] == len(TEXTS)
    assert math.isclose(json.loads((tmp_path / "lm" / "lm.json").read_text())["discount"], 0.7)
    (tmp_path / "words.txt").write_text("zebra\nHello\n")
    assert cli.main(["data", "asr-lm", "--data", str(corpus), "--out", str(tmp_path / "lm2"), "--words",
                     str(tmp_path / "words.txt")]) == 0
    assert json.loads(capsys.readouterr().out)["extra_words"] == 1
    assert "zebra\tz e b r a |" in (tmp_path / "lm2" / LEXICON).read_text()
    assert cli.main(["data", "asr-lm", "--data", str(corpus), "--out", str(tmp_path / "lm3"), "--words",
                     str(tmp_path / "absent.txt")]) == 2
    assert "--words" in capsys.readouterr().err and not (tmp_path / "lm3").exists()
    assert cli.main(["run", "asr", "--lm", str(tmp_path / "nothing"), "--quiet"]) == 2
    assert "asr-lm" in capsys.readouterr().err
