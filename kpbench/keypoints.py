"""Keypoint schemas (names, left/right flip pairs, normalizing pairs) and mappings between them.

"Left" and "right" are the subject's own: the subject's left eye appears on the image's right.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kpbench.errors import KpbenchError


@dataclass(frozen=True)
class Schema:
    name: str
    points: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    norm_pair: tuple[int, int]  # inter-ocular: the two outer eye corners
    # The points of the subject's right eye and of its left eye (each eye's centre is their mean):
    # roll alignment (``align``) and the inter-pupil distance (``nme_ip``) work for any layout that has them.
    eyes: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    description: str = ""
    _perm: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        perm = list(range(len(self.points)))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        object.__setattr__(self, "_perm", tuple(perm))

    @property
    def num_points(self) -> int:
        return len(self.points)

    @property
    def flip_permutation(self) -> tuple[int, ...]:
        """Index permutation that swaps every left/right pair (apply after mirroring x)."""
        return self._perm

    def eye_centres(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(..., K, 2) points -> the centres (..., 2) of the subject's right and left eye, or None
        for a layout that declares no eyes."""
        if self.eyes is None:
            return None
        p = np.asarray(points, dtype=np.float64)
        right, left = (p[..., list(group), :].mean(axis=-2) for group in self.eyes)
        return right, left


_K15 = (
    "left_eye_center", "right_eye_center", "left_eye_inner_corner", "left_eye_outer_corner",
    "right_eye_inner_corner", "right_eye_outer_corner", "left_eyebrow_inner_end",
    "left_eyebrow_outer_end", "right_eyebrow_inner_end", "right_eyebrow_outer_end", "nose_tip",
    "mouth_left_corner", "mouth_right_corner", "mouth_center_top_lip", "mouth_center_bottom_lip",
)

KAGGLE15 = Schema(
    name="kaggle15",
    points=_K15,
    flip_pairs=((0, 1), (2, 4), (3, 5), (6, 8), (7, 9), (11, 12)),
    norm_pair=(3, 5),
    eyes=((1,), (0,)),
    description="Kaggle Facial Keypoints Detection, 15 points",
)


def _ibug_flip_pairs() -> tuple[tuple[int, int], ...]:
    pairs = [(i, 16 - i) for i in range(8)]  # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
    pairs += [(31, 35), (32, 34)]  # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]  # mouth
    return tuple(pairs)


IBUG68 = Schema(
    name="ibug68",
    points=tuple(f"p{i}" for i in range(68)),
    flip_pairs=_ibug_flip_pairs(),
    norm_pair=(36, 45),
    eyes=(tuple(range(36, 42)), tuple(range(42, 48))),
    description="iBUG 300-W, 68 points (0-based)",
)

SCHEMAS: dict[str, Schema] = {s.name: s for s in (KAGGLE15, IBUG68)}


def _ibug68_to_kaggle15(p: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (..., 15, 2). Eye centers are the mean of each eye's six points."""
    direct = {2: 42, 3: 45, 4: 39, 5: 36, 6: 22, 7: 26, 8: 21, 9: 17, 10: 30, 11: 54, 12: 48,
              13: 51, 14: 57}
    out = np.empty(p.shape[:-2] + (15, 2), dtype=np.float32)
    out[..., 0, :] = p[..., 42:48, :].mean(axis=-2)  # subject's left eye: points 42-47
    out[..., 1, :] = p[..., 36:42, :].mean(axis=-2)
    for dst, src in direct.items():
        out[..., dst, :] = p[..., src, :]
    return out


MAPPINGS: dict[tuple[str, str], Callable[[np.ndarray], np.ndarray]] = {
    ("ibug68", "kaggle15"): _ibug68_to_kaggle15,
}


def register_schema(spec) -> None:
    """Make a :class:`kpbench.SchemaSpec`'s layout and mappings known to :func:`get_schema` and
    :func:`convert` (the plugin manager does this for every registered schema)."""
    schema = spec.factory()
    if not isinstance(schema, Schema) or schema.name != spec.name:
        raise KpbenchError(f"schema plugin {spec.plugin!r}: {spec.name!r} must give a kpbench.Schema of that name")
    bad = [p for group in (*schema.flip_pairs, schema.norm_pair, *(schema.eyes or ())) for p in group
           if not 0 <= p < schema.num_points]
    if bad:
        raise KpbenchError(f"schema {spec.name!r}: point index {bad[0]} out of range for {schema.num_points} points")
    paired = [p for pair in schema.flip_pairs for p in pair]
    twice = sorted({p for p in paired if paired.count(p) > 1})
    if twice:  # a mirrored target would be written into two points
        raise KpbenchError(f"schema {spec.name!r}: point {twice[0]} is in more than one flip pair (or paired with itself)")
    SCHEMAS[spec.name] = schema
    for dst, fn in spec.mappings.items():
        MAPPINGS[(spec.name, dst)] = fn


# Called, in order, when get_schema meets an unknown name; each may register more layouts. The
# package adds the plugin manager here (a layout a plugin brings is known once the plugins load).
SCHEMA_SOURCES: list[Callable[[], object]] = []


def get_schema(name: str) -> Schema:
    if name not in SCHEMAS:
        for load in SCHEMA_SOURCES:
            load()
    if name not in SCHEMAS:
        raise KpbenchError(f"unknown keypoint schema {name!r}; known: {', '.join(SCHEMAS)}")
    return SCHEMAS[name]


def convert(points: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Map points annotated in schema `src` to schema `dst` (NaN stays NaN)."""
    if src == dst:
        return np.asarray(points, dtype=np.float32)
    if (src, dst) not in MAPPINGS:
        known = ", ".join(f"{a}->{b}" for a, b in MAPPINGS)
        raise KpbenchError(f"no keypoint mapping from {src!r} to {dst!r}; known mappings: {known}")
    return MAPPINGS[(src, dst)](np.asarray(points, dtype=np.float32))


def eye_line_angle(points: np.ndarray, schema: Schema | None = None) -> float | None:
    """The roll of a face, in degrees: the angle of the line from the eye on the image's left to
    the one on its right (+ towards +y, clockwise on screen), from annotated points in ``schema``
    (default: the registered layout with that many points); None for a layout that declares no
    eyes (:attr:`Schema.eyes`) or a missing eye."""
    if schema is None:
        n = len(points)
        schema = next((s for s in SCHEMAS.values() if s.num_points == n and s.eyes is not None), None)
    centres = None if schema is None or schema.num_points != len(points) else schema.eye_centres(points)
    if centres is None:
        return None
    d = centres[1] - centres[0]  # the subject's right eye is on the image's left
    return None if not np.isfinite(d).all() else float(np.degrees(np.arctan2(d[1], d[0])))
