"""Real annotated faces: ``folder68`` (images + a CSV of 136 numbers per file, as in the YouTube
Faces frames), ``ibug`` (images with ``.pts`` files beside them, as in 300-W), and the 15-point
``kaggle`` CSV and ``kaggle-npz`` distributions.
Images are read lazily; every annotation is parsed and checked up front, and a bad row names its
file and line."""

from __future__ import annotations

import csv
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import kpbench
from kpbench.data import IMAGE_SUFFIXES, Sample, pixel_origin
from kpbench.data import read_image as _read_image
from kpbench.log import log




class _Annotated:
    schema = "ibug68"

    def __init__(self, files: list[Path], points: list[np.ndarray], groups: list[str] | None,
                 frames: list[tuple[str, int]] | None = None, origin: float = 0.0):
        if not files:
            raise kpbench.KpbenchError("dataset has no annotated images")
        self.files, self.points, self.groups, self.frames = files, points, groups, frames
        self.origin = float(origin)  # see Sample.origin

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Sample:
        f = self.files[i]
        return Sample(image=_read_image(f), points=self.points[i], id=f.name, schema=self.schema,
                      group=self.groups[i] if self.groups else None, frame=self.frames[i] if self.frames else None,
                      origin=self.origin)


def _person(name: str) -> str:
    """YouTube Faces frame 'Luis_Fonsi_21.jpg' -> person 'Luis_Fonsi'."""
    return re.sub(r"_\d+$", "", Path(name).stem)


def clip_frame(name: str) -> tuple[str, int]:
    """YouTube Faces frame 'Luis_Fonsi_21.jpg' -> clip 'Luis_Fonsi_2', frame 1: the shared frames come
    in clips of three (names ending in 0, 1, 2; one image size per clip), the last digit the frame."""
    stem = Path(name).stem
    return (stem[:-1], int(stem[-1])) if stem[-1:].isdigit() else (stem, 0)


def folder68(path=None, images: str | None = None, group_by_person: bool = True, origin: float = 1.0):
    """``folder68:DIR`` (holding one CSV) or ``folder68:FILE.csv``; images beside the CSV, in
    ``images=DIR``, or in the one subfolder that holds them. ``origin`` (Sample.origin): 1 as in
    the YouTube Faces frames, whose points are numbered as 300-W's .pts (dlib's points sit
    -1.3, -0.7 px from theirs and -1.4, -0.8 px from HELEN's); 0 for a CSV that counts pixels from 0."""
    origin = pixel_origin(origin, "folder68: origin")
    if not path:
        raise kpbench.KpbenchError("folder68 needs a path: folder68:/path/to/dir-or-csv")
    p = Path(path)
    if p.is_dir():
        csvs = sorted(p.glob("*.csv"))
        if len(csvs) != 1:
            raise kpbench.KpbenchError(f"{p}: expected exactly one .csv file, found {len(csvs)}")
        p = csvs[0]
    if not p.is_file():
        raise kpbench.KpbenchError(f"folder68: no such file or folder: {path}")
    rows, with_nan = [], []
    with p.open(newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or (lineno == 1 and not row[0].lower().endswith(IMAGE_SUFFIXES)):
                continue  # header
            if len(row) != 137:
                raise kpbench.KpbenchError(f"{p}:{lineno}: expected a file name and 136 numbers, got {len(row)} fields")
            try:
                pts = np.asarray(row[1:], dtype=np.float32).reshape(68, 2)
            except ValueError as exc:
                raise kpbench.KpbenchError(f"{p}:{lineno}: {exc}") from None
            if np.isinf(pts).any():
                raise kpbench.KpbenchError(f"{p}:{lineno}: coordinates must be finite numbers (or nan: missing)")
            if np.isnan(pts).any():
                with_nan.append(lineno)
            rows.append((row[0], pts))
    if not rows:
        raise kpbench.KpbenchError(f"{p}: no annotation rows")
    if with_nan:  # a convention (points not annotated), but say so: it may be a broken export
        log.warning(f"kpbench: warning: {p}: {len(with_nan)} row(s) have nan coordinates, read as missing points "
                    f"(first at line {with_nan[0]})")
    candidates = [Path(images)] if images else [p.parent, *sorted(d for d in p.parent.iterdir() if d.is_dir())]
    root = next((d for d in candidates if (d / rows[0][0]).is_file()), None)
    if root is None:
        raise kpbench.KpbenchError(f"{p}: image {rows[0][0]!r} not found in {', '.join(map(str, candidates))}")
    missing = [name for name, _ in rows if not (root / name).is_file()]
    if missing:
        raise kpbench.KpbenchError(f"{p}: {len(missing)} images missing from {root}, e.g. {missing[0]!r}")
    groups = [_person(n) for n, _ in rows] if group_by_person else None
    frames = [clip_frame(n) for n, _ in rows] if group_by_person else None  # the same YouTube Faces naming
    return _Annotated([root / n for n, _ in rows], [pts for _, pts in rows], groups, frames, origin)


def read_pts(path: Path) -> np.ndarray:
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise kpbench.KpbenchError(f"{path}: not a text file (an iBUG .pts file is plain text)") from None
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "{") + 1
        end = next(i for i, line in enumerate(lines) if line.strip() == "}")
    except StopIteration:
        raise kpbench.KpbenchError(f"{path}: not an iBUG .pts file (no '{{' ... '}}' block)") from None
    pts = []
    for i in range(start, end):
        parts = lines[i].split()
        if len(parts) != 2:
            raise kpbench.KpbenchError(f"{path}:{i + 1}: expected 'x y', got {lines[i]!r}")
        try:
            xy = [float(parts[0]), float(parts[1])]
        except ValueError:
            raise kpbench.KpbenchError(f"{path}:{i + 1}: expected two numbers 'x y', got {lines[i]!r}") from None
        if not all(np.isfinite(xy)):
            raise kpbench.KpbenchError(f"{path}:{i + 1}: coordinates must be finite numbers, got {lines[i]!r}")
        pts.append(xy)
    if len(pts) != 68:
        raise kpbench.KpbenchError(f"{path}: expected 68 points, found {len(pts)}")
    return np.asarray(pts, dtype=np.float32)


def _photo_hash(path: Path) -> np.ndarray:
    """A 256-bit difference hash of a photo (16x17 gray thumbnail, each bit: brighter than its left
    neighbour), so that re-uploads of one photograph (rescaled, recompressed, cut a little
    differently) land a few tens of bits apart while different faces differ in about 60-100."""
    from PIL import Image

    with Image.open(path) as im:
        im.draft("L", (128, 128))  # JPEG: decode at a fraction of the size
        small = np.asarray(im.convert("L").resize((17, 16), Image.BILINEAR), dtype=np.float32)
    return (small[:, 1:] > small[:, :-1]).ravel()


def photo_groups(files: list[Path], max_bits: int = 40) -> list[str]:
    """One group per photograph: faces cut from one photo (300-W's ``NAME_K`` files) and
    near-duplicate re-uploads (difference hashes at most ``max_bits`` of 256 apart: LFPW's re-uploads
    measured 11-35 apart) share a group, so a split
    never puts one photo on both sides."""
    parent = list(range(len(files)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, f in enumerate(files):
        m = re.fullmatch(r"(\d+)_\d+", f.stem)
        j = first.setdefault(m.group(1) if m else f.stem, i)
        parent[root(i)] = root(j)
    hashes = np.array([_photo_hash(f) for f in files]).reshape(len(files), -1)
    for i in range(len(files)):
        near = (hashes[i + 1:] != hashes[i]).sum(axis=1) <= max_bits
        for j in np.flatnonzero(near) + i + 1:
            parent[root(int(j))] = root(i)
    return [files[root(i)].stem for i in range(len(files))]


def ibug(path=None, group_photos: bool = True, origin: float = 1.0):
    """``ibug:DIR`` (images with .pts files beside them) or ``ibug:LIST.txt`` (one image path a line).
    ``group_photos``: splits keep each photograph together (:func:`photo_groups`). ``origin``
    (Sample.origin): .pts files count pixels from 1 (300-W's Matlab convention: a model trained on
    them with the annotation numbers mirrored as they are sat 1.2 px left of them at every face size)."""
    origin = pixel_origin(origin, "ibug: origin")
    if not path:
        raise kpbench.KpbenchError("ibug needs a path: ibug:/path/to/dir-or-list")
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.with_suffix(".pts").is_file())
    elif p.is_file():
        files = [(p.parent / line.strip()) for line in p.read_text().splitlines() if line.strip()]
        for f in files:
            if not f.is_file() or not f.with_suffix(".pts").is_file():
                raise kpbench.KpbenchError(f"{p}: {f} or its .pts file is missing")
    else:
        raise kpbench.KpbenchError(f"ibug: no such file or folder: {path}")
    points = [read_pts(f.with_suffix(".pts")) for f in files]
    return _Annotated(files, points, photo_groups(files) if group_photos else None, origin=origin)


class _Arrays:
    """In-memory images (N, H, W) uint8 and points (N, K, 2) with NaN for missing."""

    schema = "kaggle15"

    def __init__(self, images: np.ndarray, points: np.ndarray, ids: list[str]):
        self.images, self.points, self.ids = images, points, ids

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Sample:
        return Sample(image=self.images[i], points=self.points[i], id=self.ids[i], schema=self.schema)


def _kaggle_columns() -> list[str]:
    from kpbench.keypoints import KAGGLE15

    return [f"{name}_{axis}" for name in KAGGLE15.points for axis in "xy"]


def _pixels(rows: list) -> np.ndarray | None:
    """Rows of integers 0-255 separated by single spaces, parsed with a few whole-array numpy operations
    (no per-value Python work): each value is read at its last digit as d0 + 10 d1 + 100 d2 from the
    two bytes before it. Returns uint16 so that a value above 255 can be reported; another
    character or a token of four or more digits gives None."""
    s = np.frombuffer(b" ".join([b"", b"", *rows, b""]), np.uint8)  # "  row row ... row "
    d = s - np.uint8(48)
    digit = d < 10
    pair = digit[1:-1] & digit[:-2]  # pair[i]: bytes i and i+1 are both digits
    if np.count_nonzero(digit) + np.count_nonzero(s == 32) != len(s) or (pair[:-2] & pair[2:]).any():
        return None
    d *= digit
    value = d[2:].astype(np.uint16)
    value += d[1:-1] * np.uint16(10)
    value += (d[:-2] * pair) * np.uint16(100)
    return value[:-1][digit[2:-1] & ~digit[3:]]


def _bad_pixel_row(path: Path, line: int, text: bytes) -> kpbench.KpbenchError:
    tokens = bytes(text).split()
    for tok in tokens:
        if not tok.isdigit() or int(tok) > 255:
            return kpbench.KpbenchError(f"{path}:{line}: 'Image' value {tok.decode(errors='replace')!r} "
                                        "is not an integer 0-255")
    return kpbench.KpbenchError(f"{path}:{line}: 'Image' has {len(tokens)} values, expected 9216")


def parse_kaggle_csv(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Kaggle ``training.csv`` (30 keypoint columns + ``Image``) or ``test.csv`` (ImageId, Image).
    ``Image`` is the last column, as in both Kaggle files. The other columns go through pandas;
    the pixels (97 % of the bytes) are parsed by ``_pixels``, 128 rows at a time."""
    import io

    import pandas as pd

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise kpbench.KpbenchError(f"{path}: cannot read: {exc.strerror}") from None
    # Line ends and each line's last comma from two whole-buffer scans; rows are then views into
    # ``raw``, not copies.
    data = np.frombuffer(raw, np.uint8)
    ends = np.append(np.flatnonzero(data == 10), len(raw))
    starts = np.concatenate(([0], ends[:-1] + 1))
    commas = np.flatnonzero(data == 44)
    before = np.searchsorted(commas, ends) - 1
    last_comma = np.where(before >= 0, commas[np.maximum(before, 0)] if len(commas) else 0, -1)
    view = memoryview(raw)
    header = bytes(view[starts[0]:ends[0]]).decode(errors="replace").strip().split(",")
    if header[-1].strip('"') != "Image":
        raise kpbench.KpbenchError(f"{path}: the last column must be 'Image' (found: {', '.join(header[:5])} ...)")
    numbers, heads, images = [], [], []
    for i in range(1, len(ends)):
        start, comma, end = int(starts[i]), int(last_comma[i]), int(ends[i])
        while end > start and raw[end - 1] in b'\r" ':
            end -= 1
        if end == start:
            continue  # a blank line
        if comma < start:
            raise kpbench.KpbenchError(f"{path}:{i + 1}: expected {len(header)} columns, found 1")
        numbers.append(i + 1)
        heads.append(view[start:comma])
        images.append(view[comma + 1 + (comma + 1 < end and raw[comma + 1] == 34):end])
    chunks = [images[start:start + 128] for start in range(0, len(images), 128)]
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:  # numpy releases the GIL
        pixels = list(pool.map(_pixels, chunks))
    for k, values in enumerate(pixels):
        if values is None or len(values) != 9216 * len(chunks[k]) or values.max(initial=0) > 255:
            for j, text in enumerate(chunks[k]):
                one = _pixels([text])
                if one is None or len(one) != 9216 or one.max(initial=0) > 255:
                    raise _bad_pixel_row(path, numbers[128 * k + j], text)
        pixels[k] = values.astype(np.uint8)
    images = (np.concatenate(pixels) if pixels else np.zeros(0, np.uint8)).reshape(len(numbers), 96, 96)
    try:
        df = pd.read_csv(io.BytesIO(b"\n".join([view[starts[0]:last_comma[0]]] + heads)))
    except ValueError as exc:
        raise kpbench.KpbenchError(f"{path}: cannot read CSV: {exc}") from None
    if len(df) != len(numbers):
        raise kpbench.KpbenchError(f"{path}: {len(df)} rows of keypoints but {len(numbers)} images")
    cols = _kaggle_columns()
    present = [c for c in cols if c in df]
    if present and len(present) != len(cols):
        missing = sorted(set(cols) - set(present))
        raise kpbench.KpbenchError(f"{path}: keypoint columns missing: {missing[:4]}")
    try:
        points = (df[cols].to_numpy(np.float32).reshape(len(df), 15, 2) if present
                  else np.full((len(df), 15, 2), np.nan, np.float32))
    except ValueError as exc:
        raise kpbench.KpbenchError(f"{path}: a keypoint value is not a number: {exc}") from None
    ids = [str(v) for v in df["ImageId"]] if "ImageId" in df else [f"row{i}" for i in numbers]
    return images, points, ids


def _cached(path: Path, parse):
    """Parse once; keep the arrays next to the file, keyed by its size and modification time."""
    st = path.stat()
    cache = path.with_name(f".{path.name}.kpbench-{st.st_size}-{int(st.st_mtime)}.npz")
    if cache.is_file():
        with np.load(cache) as z:
            return z["images"], z["points"], list(z["ids"])
    images, points, ids = parse(path)
    try:
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, points=points, ids=np.array(ids))
        tmp.replace(cache)
    except OSError:
        pass  # a read-only data folder: parse again next time
    return images, points, ids


def _drop_incomplete(images, points, ids, complete_only: bool):
    if not complete_only:
        return _Arrays(images, points, ids)
    keep = ~np.isnan(points).any(axis=(1, 2))
    return _Arrays(images[keep], points[keep], [i for i, k in zip(ids, keep) if k])


def kaggle(path=None, complete_only: bool = False, cache: bool = True):
    """``kaggle:training.csv``; rows with missing points are kept (masked) unless ``complete_only``."""
    if not path or not Path(path).is_file():
        raise kpbench.KpbenchError(f"kaggle needs the path of training.csv or test.csv, got {path!r}")
    arrays = _cached(Path(path), parse_kaggle_csv) if cache else parse_kaggle_csv(Path(path))
    return _drop_incomplete(*arrays, complete_only)


def kaggle_npz(path=None, complete_only: bool = False):
    """``kaggle-npz:DIR`` holding ``face_images.npz`` (96, 96, N) and ``facial_keypoints.csv``."""
    import pandas as pd

    d = Path(path or "")
    npz, csv_path = d / "face_images.npz", d / "facial_keypoints.csv"
    for f in (npz, csv_path):
        if not f.is_file():
            raise kpbench.KpbenchError(f"kaggle-npz: {f} not found")
    with np.load(npz) as z:
        images = z[z.files[0]]
    images = np.moveaxis(images, -1, 0) if images.shape[:2] == (96, 96) else images
    df = pd.read_csv(csv_path)
    if len(df) != len(images):
        raise kpbench.KpbenchError(f"{csv_path}: {len(df)} rows but {npz} has {len(images)} images")
    points = df[_kaggle_columns()].to_numpy(np.float32).reshape(len(df), 15, 2)
    return _drop_incomplete(images.astype(np.uint8), points, [f"face{i}" for i in range(len(df))], complete_only)


@kpbench.hookimpl
def kpbench_datasets():
    return [
        kpbench.DatasetSpec("folder68", folder68,
                            "Images + CSV of 68 points per file (YouTube Faces style); splits keep each person together"),
        kpbench.DatasetSpec("ibug", ibug, "Images with iBUG .pts files beside them (300-W style), or a list file; splits keep each photo together"),
        kpbench.DatasetSpec("kaggle", kaggle, "Kaggle Facial Keypoints training.csv / test.csv (96x96, 15 points)"),
        kpbench.DatasetSpec("kaggle-npz", kaggle_npz, "CC0 face_images.npz + facial_keypoints.csv (96x96, 15 points)"),
    ]


@kpbench.hookimpl
def kpbench_schemas():
    from kpbench.keypoints import IBUG68, KAGGLE15, MAPPINGS

    return [kpbench.SchemaSpec(KAGGLE15.name, lambda: KAGGLE15, KAGGLE15.description),
            kpbench.SchemaSpec(IBUG68.name, lambda: IBUG68, IBUG68.description,
                               mappings={dst: fn for (src, dst), fn in MAPPINGS.items() if src == IBUG68.name})]
