"""memstream.pipelines: sources, segmenter, runtime, decoders, sinks, evaluation, training and the CLI.

The streaming API, in the manner of Ultralytics' ``model.track(source, stream=True)``::

    from memstream.pipelines import stream

    for result in stream("core-tiny", "talk.wav"):          # a task, a core module, a preset or checkpoint
        print(result.stream, result.index, result.time, result.events)

    for result in stream(task, "cameras.streams", max_streams=16):   # many streams, batched in one process
        ...

Importing this package is cheap: the runtime (torch, OpenCV) loads on the first call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def stream(task_or_model: Any, source: Any, **options: Any) -> Iterator[Any]:
    """Run a model over one or many streams and yield each segment's result as soon as it is ready.

    Args:
        task_or_model: a task (see :class:`memstream.pipelines.streams.Task`), a ``MemoryCore``, a core preset
            name (``"core-tiny"``) or a checkpoint folder; a bare core runs as :class:`CoreProbeTask`.
        source: a spec (file, image folder, URL, camera index, ``mic``, ``-`` for stdin PCM), a ``Source``, a
            ``.streams`` file (one spec per line, ``#`` comments) or a list of any of these.
        **options: ``backend`` (a TorchBackend/OnnxBackend; default TorchBackend of ``task.model``),
            ``kind`` (``audio``/``video``, default guessed), ``device``, ``sinks``, ``max_streams``,
            ``batch_timeout``, ``max_batch``, ``decoder`` (``opencv``/``pyav`` for video files and URLs, ``pyav``
            for audio files); anything else goes to the sources (``mode``, ``rate``, ``reconnect``...; see
            :func:`memstream.pipelines.sources.make_source`).

    Yields:
        :class:`memstream.pipelines.runner.StreamResult`: ``stream`` id, segment ``index``, ``time``, ``end``,
        ``outputs`` (the stream's row of the model outputs, numpy), ``events`` (the decoder's, with ``stream`` and
        ``time``), ``segment``. Breaking out of the loop stops the run and flushes the sinks.
    """
    from memstream.pipelines.launch import stream as _stream

    return _stream(task_or_model, source, **options)


__all__ = ["stream"]
