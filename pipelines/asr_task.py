"""Speech recognition as a runner task: raw audio segments in, words with times out, while the audio plays.

``AsrTask`` feeds 640 ms segments of 16 kHz samples to :class:`memstream.models.asr.AsrModel`'s step (or its
exported graph); each stream's decoder (:class:`memstream.pipelines.ctc.CtcDecoder`) turns the CTC
log-probabilities into ``partial`` / ``word`` / ``final`` events with endpointing. ``transcribe`` runs a
whole recording through the same step, for evaluation.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import IO

import numpy as np
import torch
from memstream.export.backend import to_numpy
from memstream.models import check_metadata, load_model
from memstream.models.asr import AsrConfig, AsrModel
from memstream.pipelines.ctc import CtcDecoder, EndpointConfig
from memstream.pipelines.segmenter import Segment
from torch import Tensor

MODEL_KIND = "asr"
BUNDLED = "asr-small"
DEFAULT_ENDPOINT = EndpointConfig()


def bundled_asr_dir() -> Path:
    import memstream.models

    return Path(memstream.models.__file__).parent / "bundled" / BUNDLED


def load_asr_model(directory: str | Path | None = None) -> tuple[AsrModel, dict]:
    """A checkpoint folder written by ``memstream train asr`` (default: the bundled model) -> (model, config)."""
    return load_model(directory if directory is not None else bundled_asr_dir(), MODEL_KIND,
                      lambda d: AsrModel(AsrConfig.from_dict(d)))


def export_metadata(model: AsrModel) -> dict:
    """What a runtime and a decoder need besides the graph: sample rate, segment, frame timing, vocabulary."""
    c = model.cfg
    return {"task": "asr", "kind": "audio", "rate": c.sample_rate, "segment_size": c.segment_samples,
            "sample_rate": c.sample_rate, "segment_seconds": c.segment_samples / c.sample_rate,
            "frame_seconds": c.frame_seconds, "vocabulary": list(c.vocab)}


def check_onnx_matches(backend, model, path) -> None:
    """Refuse an exported ASR graph whose metadata disagrees with the model the decoder is built from."""
    cfg = model.cfg
    check_metadata(backend.metadata, {"task": "asr", "vocabulary": list(cfg.vocab), "segment": cfg.segment_samples,
                                      "frame_seconds": cfg.frame_seconds, "sample_rate": cfg.sample_rate},
                   path, "memstream export asr")


class _AsrDecoder:
    """Runner decoder: one :class:`CtcDecoder` per stream, started at the stream's first segment time."""

    def __init__(self, task: AsrTask) -> None:
        self.task = task
        self.ctc: CtcDecoder | None = None

    def update(self, log_probs: np.ndarray, segment: Segment) -> list[dict]:
        if self.ctc is None:  # a live stream's clock may not start at 0
            self.ctc = self.task.new_ctc(start_time=segment.start)
        # An output frame is valid when its first sample is.
        n_valid = -(-segment.num_valid // self.task.samples_per_frame)
        return self.ctc.accept(log_probs, n_valid)

    def flush(self) -> list[dict]:
        return self.ctc.flush() if self.ctc is not None else []


class AsrTask:
    """Streaming speech recognition for :class:`memstream.pipelines.runner.StreamRunner`.

    Args:
        model: an :class:`AsrModel`; default: loaded from ``checkpoint`` or the bundled ``asr-small``.
        method: CTC decoding, ``greedy``, ``beam`` (prefix beam search of width ``beam``) or ``lm`` (a word
            lexicon and n-gram: ``lm``, a :class:`memstream.pipelines.asr_lm.LanguageModel`).
        endpoint: endpoint rules (trailing silence, maximum utterance length); None: only the stream's end
            finalises.

    ``encode``: B segments -> x (B, S) float32 samples, mask (B, S); ``split``: row -> (T, V) log-probs as numpy.
    """

    name = "asr"
    kind = "audio"
    frame_size = None

    def __init__(self, model: AsrModel | None = None, *, checkpoint: str | Path | None = None,
                 method: str = "greedy", beam: int = 8, endpoint: EndpointConfig | None = DEFAULT_ENDPOINT,
                 lm=None) -> None:
        if model is None:
            model, _ = load_asr_model(checkpoint)
        if model.cfg.full_context:
            raise ValueError("AsrTask: a full-context model attends over whole recordings and cannot stream; "
                             "use model.forward_sequence")
        self.model = model.eval()
        cfg = model.cfg
        self.rate = float(cfg.sample_rate)
        self.segment_size = cfg.segment_samples
        self.samples_per_frame = cfg.segment_samples // cfg.core.segment
        self.vocab = list(cfg.vocab)
        self.frame_seconds = cfg.frame_seconds
        self.method, self.beam, self.endpoint, self.lm = method, beam, endpoint, lm
        self.new_ctc()  # fail now on a bad method/beam, not in the first stream's first segment

    def new_ctc(self, start_time: float = 0.0) -> CtcDecoder:
        return CtcDecoder(self.vocab, frame_seconds=self.frame_seconds, method=self.method, beam=self.beam,
                          endpoint=self.endpoint, start_time=start_time, lm=self.lm)

    def encode(self, segments: list[Segment]) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(np.stack([s.data for s in segments]).astype(np.float32, copy=False))
        mask = torch.from_numpy(np.stack([s.valid for s in segments]))
        return x, mask

    def split(self, outputs, index: int) -> np.ndarray:
        log_probs = outputs.log_probs if hasattr(outputs, "log_probs") else outputs
        return to_numpy(log_probs)[index]

    def new_decoder(self, stream_id: str) -> _AsrDecoder:
        return _AsrDecoder(self)

    def export_metadata(self) -> dict:
        return export_metadata(self.model)

    def check_backend(self, backend, path) -> None:
        """An ONNX graph given by the user must match the model the decoder was built from."""
        check_onnx_matches(backend, self.model, path)


class TranscriptLineSink:
    """The live transcript on one rewritten terminal line per stream; a finished utterance keeps its line.

    On a terminal, ``partial`` text rewrites the line (carriage return) and ``final`` text ends it; elsewhere
    only the finals are written, one per line. With several streams each line starts with the stream id.
    """

    def __init__(self, file: IO[str] | None = None, width: int | None = None) -> None:
        self.file = file if file is not None else sys.stderr
        # A rewritten line must fit the terminal: a wrapped line cannot be rewritten with a carriage return.
        self.width = width or max(20, shutil.get_terminal_size((100, 24)).columns - 1)
        self._open = False
        self._streams: set[str] = set()
        # Not a terminal (a log file, a pipe): finished utterances only, one per line, no control codes.
        self.tty = hasattr(self.file, "isatty") and self.file.isatty()
        self._clear = "\r\033[K" if self.tty else ""

    def _line(self, event: dict, text: str, clip: bool) -> str:
        """The stream prefix and the text; a rewritten line keeps its last ``width`` characters."""
        self._streams.add(event.get("stream", ""))
        prefix = f"[{event['stream']}] " if len(self._streams) > 1 and event.get("stream") else ""
        return prefix + (text[-self.width:] if clip else text)

    def write(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "partial" and self.tty:
            self.file.write(self._clear + self._line(event, event["text"], clip=True))
            self._open = True
        elif kind == "final" and not event.get("text"):  # an endpoint in silence: clear the line
            if self._open:
                self.file.write(self._clear)
                self._open = False
        elif kind == "final":
            start, end = event.get("start", 0.0), event.get("end", 0.0)
            self.file.write(self._clear + self._line(event, f"[{start:7.2f}-{end:7.2f}] {event['text']}", clip=False)
                            + "\n")
            self._open = False
        else:
            return
        self.file.flush()

    def close(self) -> None:
        if self._open:
            self.file.write("\n")
            self._open = False
        self.file.flush()


@torch.inference_mode()
def transcribe(backend, audio: np.ndarray, task: AsrTask) -> dict:
    """One recording (N,) float32 at the model's rate through ``backend.step`` segment by segment.

    Returns ``{"text", "words": [...], "finals": [...]}``: the text is the finals joined by spaces (the
    decoder endpoints long recordings into utterances).
    """
    s = task.segment_size
    padded = np.zeros(-(-len(audio) // s) * s, np.float32)
    padded[:len(audio)] = audio
    valid = np.zeros(len(padded), bool)
    valid[:len(audio)] = True
    state = backend.init_state(1)
    reset = torch.zeros(1, dtype=torch.bool)
    decoder = task.new_decoder("0")
    events = []
    for i in range(0, len(padded), s):
        segment = Segment(padded[i:i + s], valid[i:i + s], i / task.rate, task.rate, i // s)
        x, mask = task.encode([segment])
        outputs, state = backend.step(x, state, reset, mask)
        events += decoder.update(task.split(outputs, 0), segment)
    events += decoder.flush()
    finals = [e for e in events if e["type"] == "final"]
    return {"text": " ".join(e["text"] for e in finals if e["text"]).strip(),
            "words": [e for e in events if e["type"] == "word"], "finals": finals}
