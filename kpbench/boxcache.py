"""Face boxes of slow detectors kept on disk, so that MTCNN runs once per image and detector
setting, whatever run, config or split asks for it again (training on detector boxes, the
``eval.detectors`` test paths, ``kpbench evaluate``).

A box is keyed by the image's pixels and the annotated points (which face matches depends on
them), in one file per detector name and options under kpbench's cache folder
(``$KPBENCH_CACHE_DIR``, default ``~/.cache/kpbench``)/``boxes``; a changed image or option simply misses the cache.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from kpbench.io import atomic_write_json, cache_root


class CachedDetector:
    """Wraps a detector ``(image, points) -> box | None``; other attributes pass through."""

    def __init__(self, detector, name: str, options: dict):
        self.detector = detector
        key = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.path = cache_root() / "boxes" / f"{name}-{key}.json"
        self.boxes: dict = {}
        self.added = 0
        if self.path.is_file():
            try:
                self.boxes = json.loads(self.path.read_text())
            except ValueError:  # a damaged cache is rebuilt, not an error
                self.boxes = {}

    def __getattr__(self, name):
        return getattr(self.detector, name)

    @staticmethod
    def key(image: np.ndarray, points: np.ndarray) -> str:
        h = hashlib.sha1(np.ascontiguousarray(image).tobytes())
        h.update(str(np.shape(image)).encode())
        h.update(np.ascontiguousarray(points, dtype=np.float32).tobytes())
        return h.hexdigest()

    def __call__(self, image: np.ndarray, points: np.ndarray):
        k = self.key(image, points)
        if k not in self.boxes:
            box = self.detector(image, points)
            self.boxes[k] = None if box is None else [float(v) for v in box]
            self.added += 1
            if self.added >= 500:  # a killed run keeps most of what it found
                self.flush()
        box = self.boxes[k]
        return None if box is None else tuple(box)

    def flush(self) -> None:
        """Write the boxes found since the last flush (atomically)."""
        if self.added:
            atomic_write_json(self.path, self.boxes)
            self.added = 0
