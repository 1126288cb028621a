"""Videos for ``kpbench predict``: frames decoded one at a time and the annotated video written with
PyAV (the optional ``kpbench[video]`` extra), faces numbered across frames, and the smoothing of each
face's keypoints over time (a One-Euro filter on the face's shape, on by default; ``--no-smooth``)."""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from kpbench.data import to_gray
from kpbench.errors import KpbenchError
from kpbench.geometry import centre_and_spread

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
ENCODERS = ("libx264", "mpeg4")  # H.264 where this PyAV build has it, else MPEG-4 Part 2; both play in .mp4
DEFAULT_FPS = 25.0  # a stream that states no frame rate
READ_AHEAD = 2  # frames decoded before they are asked for (frames)
# One-Euro defaults for a face's shape (its points about their centroid, in units of their spread,
# see ShapeFilter): at rest the cutoff is 1 Hz (flicker smoothed hard: at 30 fps a frame moves 17 %
# of the way to a new value); a shape changing by half its spread per second (a mouth opening)
# raises it to 6 Hz (56 %), so expressions lag little. Where the face moves or zooms, nothing lags.
SMOOTH = {"min_cutoff": 1.0, "beta": 10.0, "d_cutoff": 1.0}


def is_video(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def require_av():
    try:
        import av
    except ImportError:
        raise KpbenchError("videos need PyAV, the kpbench[video] extra: pip install 'kpbench[video]'") from None
    return av


class OneEuro:
    """The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012): exponential smoothing whose cutoff
    frequency rises with the signal's speed, ``cutoff = min_cutoff + beta * |speed|``, so a still
    signal is smoothed hard (less jitter) and a moving one lightly (less lag). The speed is itself
    smoothed at ``d_cutoff``. Frequencies in Hz, speed in the signal's units per second; each element
    of an array is filtered on its own. The first value passes unchanged."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.x = self.dx = self.t = None

    @staticmethod
    def _alpha(dt: float, cutoff) -> np.ndarray:
        return 1.0 / (1.0 + 1.0 / (2 * math.pi * cutoff * dt))

    def __call__(self, x, t: float) -> np.ndarray:
        """The filtered value of ``x`` sampled at time ``t`` (seconds, increasing)."""
        x = np.asarray(x, dtype=np.float64)
        if self.x is None:
            self.x, self.dx, self.t = x, np.zeros_like(x), t
            return x
        dt = t - self.t
        if dt <= 0:  # a repeated timestamp: nothing new to filter
            return self.x
        self.dx = self.dx + self._alpha(dt, self.d_cutoff) * ((x - self.x) / dt - self.dx)
        a = self._alpha(dt, self.min_cutoff + self.beta * np.abs(self.dx))
        self.x, self.t = self.x + a * (x - self.x), t
        return self.x


def smoothing(options: dict) -> dict:
    """``--smooth-options`` over :data:`SMOOTH`; an unknown name or a value that is not a positive
    number (``beta`` may be 0) is one error."""
    unknown = sorted(set(options) - set(SMOOTH))
    if unknown:
        raise KpbenchError(f"--smooth-options: unknown option {unknown[0]!r} (known: {', '.join(SMOOTH)})")
    merged = {**SMOOTH, **options}
    for k, v in merged.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 or (k == "beta" and v == 0)):
            raise KpbenchError(f"--smooth-options: {k}: {v!r} is not a positive number")
    return {k: float(v) for k, v in merged.items()}


class ShapeFilter:
    """One face's points (K, 2) smoothed over time in the face's own frame: each frame's points are
    taken about their centroid in units of their spread (RMS distance from it), that shape goes
    through a One-Euro filter, and is put back at this frame's centroid and spread. The face's motion
    across the picture and its zoom pass unfiltered, so they never lag; only the shape is smoothed,
    which is where most of a keypoint model's frame-to-frame flicker is (``benchmarks/video_track.py``
    measures both parts). A frame with a missing point passes as it is."""

    def __init__(self, options: dict):
        self.filter = OneEuro(options["min_cutoff"], options["beta"], options["d_cutoff"])

    def __call__(self, points, t: float) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        if not np.isfinite(points).all():
            return points
        centre, spread = centre_and_spread(points)
        if not spread > 0:
            return points
        return centre + spread * self.filter((points - centre) / spread, t)


def smoothed(filters: dict, options: dict, numbers, points: np.ndarray, t: float) -> np.ndarray:
    """Each face's points (F, K, 2) through its own :class:`ShapeFilter` in ``filters`` (by face
    number, made on the face's first frame), at time ``t`` in seconds."""
    for k in numbers:
        if k not in filters:
            filters[k] = ShapeFilter(options)
    return np.stack([filters[k](p, t) for k, p in zip(numbers, points)])


class FaceTracks:
    """Numbers faces across frames: a face keeps the number of the previous frame's face whose box
    centre is nearest to its own, if within half a box side; any other face gets a new number."""

    def __init__(self):
        self.last: dict[int, np.ndarray] = {}  # number -> (cx, cy) in the previous frame
        self.count = 0

    def follow(self, boxes: np.ndarray) -> list[int]:
        """The numbers of this frame's faces, given their boxes (F, 3|4) in the frame's pixels."""
        boxes = np.asarray(boxes, dtype=np.float64)
        centres = boxes[:, :2] + boxes[:, 2:3] / 2
        numbers, free = [], dict(self.last)
        for centre, side in zip(centres, boxes[:, 2]):
            near = min(free, key=lambda k: math.dist(free[k], centre), default=None)  # no BLAS call
            if near is not None and math.dist(free[near], centre) <= side / 2:
                del free[near]
                numbers.append(near)
            else:
                numbers.append(self.count)
                self.count += 1
        self.last = dict(zip(numbers, centres))
        return numbers


@contextlib.contextmanager
def open_video(path: Path):
    """The first video stream of ``path`` (its PyAV stream, with ``frames`` possibly 0 when the
    container does not say); a file PyAV cannot read is one error naming it."""
    av = require_av()
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise KpbenchError(f"{path}: not a readable video ({exc})") from None
    try:
        if not container.streams.video:
            raise KpbenchError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        # One decoding thread (frames' own): FFmpeg's frame threads took the cores from the model (ONNX
        # Runtime's threads) on a 2-core CPU: 13 against 7 ms a frame of `kpbench predict` on a 256 px clip.
        stream.thread_type = "NONE"
        yield container, stream
    finally:
        container.close()


def frame_rate(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else DEFAULT_FPS


# 8-bit pixel formats whose first plane is the frame's luma, full range or not (a "j" format, or
# the stream says so), else limited (16-235, as FFmpeg assumes when a stream does not say)
LUMA_PLANES = ("yuv420p", "yuv422p", "yuv444p", "yuv440p", "yuv411p", "nv12", "nv21",
               "yuvj420p", "yuvj422p", "yuvj444p", "yuvj440p", "gray")


class Frame:
    """One decoded video frame as kpbench's predictor takes it, without converting what it does
    not use: ``np.asarray(frame)`` is its RGB pixels (H, W, 3) uint8, converted on first use (for
    the detector and the drawing); :meth:`gray` is a region's gray read from the luma plane, so a
    tracked frame is never converted to RGB. ``shape`` is the RGB pixels' shape."""

    def __init__(self, frame):
        self.frame = frame
        self.shape = (frame.height, frame.width, 3)
        self._rgb = None
        name = frame.format.name
        self.full_range = name.startswith("yuvj") or name == "gray" or int(frame.color_range or 0) == 2
        self.has_luma = name in LUMA_PLANES

    def __array__(self, dtype=None, copy=None):
        if self._rgb is None:
            self._rgb = self.frame.to_ndarray(format="rgb24")
        if dtype is not None:
            return self._rgb.astype(dtype)
        return self._rgb.copy() if copy else self._rgb  # the one made is kept: a copy where one is asked for

    def gray(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        """Rows ``top:bottom``, columns ``left:right`` as float32 gray in [0, 1]: the luma plane
        (limited range stretched to full), as :func:`kpbench.data.to_gray` of the RGB pixels within
        a grey level or two (the luma plane is what RGB was computed from)."""
        if not self.has_luma:
            return to_gray(np.asarray(self)[top:bottom, left:right])
        plane = self.frame.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[top:bottom, left:right]
        if self.full_range:
            return luma.astype(np.float32) * np.float32(1 / 255)
        return np.clip((luma.astype(np.float32) - 16) * np.float32(1 / 219), 0, 1)


def read_ahead(items: Iterator, ahead: int) -> Iterator:
    """``items`` in order, each made on a thread of its own up to ``ahead`` items before it is
    asked for; an error making one is raised here in its place. Closing this generator (or its end)
    stops and joins the thread, so what the items are made from can be closed after it."""
    made: queue.Queue = queue.Queue(maxsize=ahead)
    stop, end = threading.Event(), object()

    def make() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        made.put((item, None), timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            made.put((end, None))
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            made.put((end, exc))

    thread = threading.Thread(target=make, name="kpbench-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = made.get()
            if exc is not None:
                raise exc
            if item is end:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # drain, so that a thread waiting to put can see the stop
            with contextlib.suppress(queue.Empty):
                made.get_nowait()
            thread.join(0.01)


def frames(path: Path, container, stream) -> Iterator[tuple[int, float, Frame]]:
    """Index, time in seconds and :class:`Frame` of each frame, decoded on a thread of its own a
    few frames ahead (:func:`read_ahead`: PyAV decodes without holding the GIL, so the next frame
    is decoded while the model runs on this one). Close it (``contextlib.closing``) before the
    container."""
    av = require_av()
    fps, index = frame_rate(stream), 0
    try:
        for frame in read_ahead(container.decode(stream), READ_AHEAD):
            t = float(frame.time) if frame.time is not None else index / fps
            yield index, t, Frame(frame)
            index += 1
    except av.error.FFmpegError as exc:
        raise KpbenchError(f"{path}: frame {index} cannot be decoded ({exc})") from None


class VideoWriter:
    """An .mp4 written frame by frame (H.264, else MPEG-4 Part 2; see :data:`ENCODERS`), at ``fps``;
    odd frame sizes lose their last row or column (the encoders need even ones)."""

    def __init__(self, path: Path, fps: float, width: int, height: int):
        av = require_av()
        from fractions import Fraction

        codec = next((c for c in ENCODERS if c in av.codecs_available), None)
        if codec is None:
            raise KpbenchError(f"{path}: this PyAV has no {' or '.join(ENCODERS)} encoder; leave out --overlay")
        self.container = av.open(str(path), "w", format="mp4")
        self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        self.stream.width, self.stream.height = max(2, width - width % 2), max(2, height - height % 2)
        self.stream.pix_fmt = "yuv420p"
        self.codec = codec

    def write(self, rgb: np.ndarray) -> None:
        av = require_av()
        image = np.ascontiguousarray(rgb[:self.stream.height, :self.stream.width])
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():  # flush the encoder
            self.container.mux(packet)
        self.container.close()
