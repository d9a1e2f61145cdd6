"""Sources: everything that turns a camera, file, URL, folder, microphone or stdin into packets.

=====================  ===========================================  =====================
spec                   source                                       kind
=====================  ===========================================  =====================
``0``, ``"camera:1"``  :class:`CameraSource` (camera index)         video
``"-"``, ``"stdin"``   :class:`StdinPcmSource` (raw PCM on stdin)   audio
``"mic"``, ``"mic:2"``  :class:`MicrophoneSource` (device 2 / name)  audio
``"rtsp://..."`` ...   :class:`UrlVideoSource`                      video
a directory            :class:`ImageFolderSource`                   video
a file                 :class:`VideoFileSource` / :class:`AudioFileSource` by ``kind``
=====================  ===========================================  =====================

Every source yields :class:`~memstream.pipelines.streams.Packet` s: video (H, W, 3) uint8 RGB frames,
audio (n, C) float32 samples at the native rate, with stream times in seconds, and reports its
native rate in ``info``. Problems raise :class:`~memstream.pipelines.streams.SourceError` (one line:
the source and the cause) when opening; mid-stream they end the stream cleanly, logged and kept in
``stats.errors``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from memstream.pipelines.sources.audio import PCM_FORMATS, AudioFileSource, MicrophoneSource, StdinPcmSource
from memstream.pipelines.sources.common import FrameBuffer, Reconnect, log
from memstream.pipelines.sources.live import URL_SCHEMES, CameraSource, UrlVideoSource
from memstream.pipelines.sources.video import ImageFolderSource, VideoFileSource
from memstream.pipelines.streams import Source, SourceError

__all__ = ["AudioFileSource", "CameraSource", "FrameBuffer", "ImageFolderSource", "MicrophoneSource", "PCM_FORMATS",
           "Reconnect", "StdinPcmSource", "URL_SCHEMES", "UrlVideoSource", "VideoFileSource", "make_source",
           "open_source"]


def _parameters(cls: type) -> set[str]:
    """Keyword parameters ``cls(...)`` accepts, following ``**options`` up the class hierarchy."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def _build(cls: type, spec: Any, options: dict[str, Any], **fixed: Any) -> Source:
    accepted = _parameters(cls)
    used = {k: v for k, v in options.items() if k in accepted and v is not None} | fixed
    ignored = sorted(k for k, v in options.items() if k not in accepted and v is not None)
    if ignored:
        log.debug("%s: options %s do not apply to %s", spec, ignored, cls.__name__)
    return cls(**used)


def make_source(spec: str | int | Path, kind: str = "video", **options: Any) -> Source:
    """The source for ``spec`` (see the module table), constructed but not opened.

    ``options`` go to the source's constructor (``fps``, ``mode``, ``reconnect``, ``rate``,
    ``channels``, ``format``, ``backend``, ...); options a source does not take, or that are None, are
    ignored, so one set of command-line options serves every kind of source (``rate`` is an image
    folder's frame rate where ``fps`` is not given). ``microphone[:N]`` and ``camera[:N]`` are accepted too.
    """
    name = str(spec)
    if kind not in ("audio", "video"):
        raise SourceError(name, f"kind={kind!r} is not 'audio' or 'video'")

    def need(wanted: str, what: str) -> None:
        if kind != wanted:
            raise SourceError(name, f"{what} gives {wanted}, but {kind} was asked for")

    if isinstance(spec, bool):
        raise SourceError(name, "not a source: give a path, URL, camera index, 'mic' or '-'")
    head, _, tail = name.partition(":") if "://" not in name else (name, "", "")
    if isinstance(spec, int) or name.isdigit() or (head == "camera" and (tail.isdigit() or not tail)):
        need("video", "a camera index")
        return _build(CameraSource, name, options, index=int(tail or 0) if head == "camera" else int(spec))
    if name in ("-", "stdin"):
        need("audio", "stdin (raw PCM)")
        if options.get("rate") is None:
            raise SourceError("stdin", "raw PCM has no header: give its sample rate (--rate)")
        return _build(StdinPcmSource, name, options)
    if head in ("mic", "microphone"):
        need("audio", "a microphone")
        device = tail or None
        return _build(MicrophoneSource, name, options, device=int(device) if device and device.isdigit() else device)
    if "://" in name:
        scheme = name.split("://", 1)[0].lower()
        if scheme == "file":
            return make_source(name[len("file://"):], kind, **options)
        if scheme not in URL_SCHEMES:
            raise SourceError(name, f"unsupported URL scheme {scheme!r} (supported: {', '.join(URL_SCHEMES)})")
        need("video", "a network stream (audio from URLs is not supported)")
        return _build(UrlVideoSource, name, options, url=name)
    path = Path(name).expanduser()
    if path.is_dir():
        need("video", "an image folder")
        fps = options.get("fps") or options.get("rate")  # --rate is the frame rate of a folder
        return _build(ImageFolderSource, name, {**options, "fps": fps}, directory=path)
    if not path.exists():
        raise SourceError(name, "no such file or directory (nor a camera index, URL, 'mic' or '-')")
    if kind == "audio":
        return _build(AudioFileSource, name, options, path=path)
    return _build(VideoFileSource, name, options, path=path)


def open_source(spec: str | int | Path, kind: str = "video", **options: Any) -> Source:
    """:func:`make_source`, opened: raises SourceError (one line: the source and the cause) when it cannot be.

    ``open`` is idempotent, so ``with open_source(...) as src:`` works too.
    """
    source = make_source(spec, kind, **options)
    source.open()
    return source
