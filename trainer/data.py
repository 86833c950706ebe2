"""Labelled face data sets as users have them: an image folder (one sub-folder per class) or the FER-2013 CSV.

Unreadable images are skipped with a warning naming each file (and counted); unknown class folders, an empty
class folder or an empty data set are errors. Images are BGR uint8 (colour) or uint8 (H, W) gray, as
`infantino.runtime.contract.preprocess` takes them. Torch is not needed here.
"""

from __future__ import annotations

import csv
import difflib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.errors import InfantinoError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"})
# Folder names other data sets use for the same classes (lower case).
ALIASES = {"anger": "angry", "angry": "angry", "disgusted": "disgust", "fearful": "fear", "afraid": "fear",
           "happiness": "happy", "joy": "happy", "sadness": "sad", "surprised": "surprise", "neutrality": "neutral",
           "calm": "neutral"}
# Above this many bytes of image files, a folder is read lazily (decoded again when used).
IN_MEMORY_LIMIT = 1 << 30
FER_SIDE = 48
SPLIT_NAMES = {"train", "training", "test", "testing", "val", "valid", "validation", "publictest", "privatetest"}


@dataclass
class ImageSet:
    """Labelled images kept in memory (`images`) or on disk (`paths`, decoded on access)."""

    labels: np.ndarray
    names: list[str]
    source: str
    images: list[np.ndarray] | None = None
    paths: list[Path] | None = None
    splits: np.ndarray | None = None  # per-sample split tag (FER-2013 `Usage`), if the source has one
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if (self.images is None) == (self.paths is None):
            raise ValueError("ImageSet needs exactly one of images or paths")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def image(self, i: int) -> np.ndarray:
        """The i-th image (BGR uint8 or gray uint8)."""
        if self.images is not None:
            return self.images[i]
        img = read_image(self.paths[i])
        if img is None:
            raise InfantinoError(f"image became unreadable since it was scanned: {self.paths[i]}")
        return img

    def subset(self, idx: Sequence[int] | np.ndarray, source: str | None = None) -> "ImageSet":
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet(
            labels=self.labels[idx], names=[self.names[i] for i in idx], source=source or self.source,
            images=None if self.images is None else [self.images[i] for i in idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            splits=None if self.splits is None else self.splits[idx],
        )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(CLASSES))
        return {c: int(n) for c, n in zip(CLASSES, counts)}

    def summary(self) -> str:
        counts = ", ".join(f"{c} {n}" for c, n in self.class_counts().items() if n)
        skipped = f"; skipped {len(self.skipped)} unreadable" if self.skipped else ""
        return f"{len(self)} images from {self.source} ({counts}){skipped}"


def read_image(path: str | os.PathLike) -> np.ndarray | None:
    """Decode an image file to BGR uint8 (gray files stay 2-D); None if it cannot be read."""
    import cv2  # optional: OpenCV (device/train extras)

    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # also works for non-ASCII paths
    except OSError:
        return None
    if data.size == 0:
        return None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0 or img.ndim not in (2, 3):
        return None
    if img.dtype != np.uint8:  # 16-bit PNG/TIFF
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(float(img.max()), 1.0))
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        elif img.shape[2] == 1:
            img = img[:, :, 0]
        elif img.shape[2] != 3:
            return None
    return np.ascontiguousarray(img)


def class_for_folder(name: str) -> str:
    """Map a sub-folder name to a class (case-insensitive, common aliases); a clear error otherwise."""
    key = name.strip().lower()
    if key in CLASSES:
        return key
    if key in ALIASES:
        return ALIASES[key]
    hint = ""
    if key in SPLIT_NAMES:
        hint = f" It looks like a split folder: point --data at {name}/ itself (one sub-folder per class)."
    else:
        close = difflib.get_close_matches(key, list(CLASSES) + list(ALIASES), n=1)
        if close:
            hint = f" Did you mean {ALIASES.get(close[0], close[0])!r}?"
    raise InfantinoError(f"unknown class folder {name!r}; class folders must be named after the classes "
                         f"({', '.join(CLASSES)}).{hint}")


def load_image_folder(root: str | os.PathLike, in_memory: bool | None = None, progress: bool = False) -> ImageSet:
    """Scan root/<class>/* images; every file is decoded once so unreadable ones are found (and skipped) now.

    in_memory: keep decoded images (default: when the files total less than IN_MEMORY_LIMIT bytes).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data folder not found: {root}")
    if not root.is_dir():
        raise InfantinoError(f"{root} is not a folder (expected one sub-folder per class, or a FER-2013 .csv)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InfantinoError(f"empty data set: {root} has no class sub-folders ({', '.join(CLASSES)})")
    mapping: dict[str, list[Path]] = {}
    for d in folders:
        cls = class_for_folder(d.name)
        mapping.setdefault(cls, []).append(d)
    files: list[tuple[Path, int]] = []
    for cls, dirs in mapping.items():
        k = CLASSES.index(cls)
        found = [p for d in dirs for p in sorted(d.rglob("*")) if p.is_file() and not p.name.startswith(".")]
        imgs = [p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS]
        if len(imgs) < len(found):
            log.debug("%s: ignoring %d non-image files", cls, len(found) - len(imgs))
        if not imgs:
            raise InfantinoError(f"empty class: folder {', '.join(str(d) for d in dirs)} holds no images")
        files += [(p, k) for p in imgs]
    if in_memory is None:
        in_memory = sum(p.stat().st_size for p, _ in files) < IN_MEMORY_LIMIT
    images, paths, labels, names, skipped = [], [], [], [], []
    for p, k in _maybe_progress(files, progress, f"reading {root}"):
        img = read_image(p)
        if img is None:
            log.warning("skipping unreadable image %s", p)
            skipped.append(str(p))
            continue
        (images.append(img) if in_memory else paths.append(p))
        labels.append(k)
        names.append(str(p))
    if skipped:
        log.warning("skipped %d unreadable image(s) of %d in %s", len(skipped), len(files), root)
    labels = np.asarray(labels, dtype=np.int64)
    for cls in mapping:  # a class whose every file is corrupt is empty too
        if not np.any(labels == CLASSES.index(cls)):
            raise InfantinoError(f"empty class: every image of {cls!r} in {root} is unreadable")
    return ImageSet(labels=labels, names=names, source=str(root),
                    images=images if in_memory else None, paths=None if in_memory else paths, skipped=skipped)


def load_fer2013_csv(path: str | os.PathLike, usage: str | Sequence[str] | None = None) -> ImageSet:
    """Read FER-2013's CSV (`emotion,pixels[,Usage]`: class index 0-6, 48x48 gray pixels as text).

    Malformed rows are skipped with a warning naming the row; `usage` keeps only rows of that Usage
    (e.g. "Training"). The FER class order is CLASSES' order.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FER-2013 CSV not found: {path}")
    wanted = None if usage is None else {usage} if isinstance(usage, str) else set(usage)
    images, labels, names, splits, skipped = [], [], [], [], []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise InfantinoError(f"empty data set: {path} is empty") from None
        except (csv.Error, UnicodeDecodeError) as e:
            raise InfantinoError(f"{path} is not a readable CSV: {e}") from None
        if "emotion" not in header or "pixels" not in header:
            raise InfantinoError(f"{path}: expected FER-2013 columns emotion,pixels[,Usage]; got {','.join(header)}")
        ie, ip = header.index("emotion"), header.index("pixels")
        iu = header.index("usage") if "usage" in header else None
        try:
            for rowno, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                where = f"{path} row {rowno}"
                try:
                    k = int(row[ie])
                    if not 0 <= k < len(CLASSES):
                        raise ValueError(f"emotion {k} outside 0..{len(CLASSES) - 1}")
                    px = np.array(row[ip].split(), dtype=np.int64)
                    if px.size != FER_SIDE * FER_SIDE:
                        raise ValueError(f"{px.size} pixels instead of {FER_SIDE * FER_SIDE}")
                    if px.min() < 0 or px.max() > 255:
                        raise ValueError("pixel values outside 0..255")
                    split = row[iu].strip() if iu is not None and iu < len(row) else ""
                except (ValueError, IndexError) as e:
                    log.warning("skipping malformed %s: %s", where, e)
                    skipped.append(where)
                    continue
                if wanted is not None and split not in wanted:
                    continue
                images.append(px.astype(np.uint8).reshape(FER_SIDE, FER_SIDE))
                labels.append(k)
                names.append(where)
                splits.append(split)
        except (csv.Error, UnicodeDecodeError) as e:
            raise InfantinoError(f"{path} is not a readable CSV: {e}") from None
    if skipped:
        log.warning("skipped %d malformed row(s) in %s", len(skipped), path)
    if not images:
        what = f" with Usage {sorted(wanted)}" if wanted else ""
        raise InfantinoError(f"empty data set: no usable rows{what} in {path}")
    return ImageSet(labels=np.asarray(labels), names=names, source=str(path), images=images,
                    splits=np.asarray(splits) if iu is not None else None, skipped=skipped)


def load_dataset(path: str | os.PathLike, **kwargs) -> ImageSet:
    """An image folder or a FER-2013 .csv, by what `path` is."""
    p = Path(path)
    if p.is_dir():
        return load_image_folder(p, **kwargs)
    if p.suffix.lower() == ".csv":
        return load_fer2013_csv(p, **{k: v for k, v in kwargs.items() if k == "usage"})
    if not p.exists():
        raise FileNotFoundError(f"data not found: {p}")
    raise InfantinoError(f"{p}: expected an image folder (one sub-folder per class) or a FER-2013 .csv file")


def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): `fraction` of each class (at least one if it has 2+ images) goes to validation."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be within (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train, val = [], []
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_val = 0 if idx.size < 2 else min(idx.size - 1, max(1, int(round(fraction * idx.size))))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    train_idx, val_idx = np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
    if val_idx.size == 0:
        raise InfantinoError(f"too few images ({labels.size}) to hold out a validation set")
    return train_idx, val_idx


def _maybe_progress(items, progress: bool, what: str):
    if not progress or len(items) < 500:
        yield from items
        return
    # optional: rich comes with the train extra only:
    from rich.console import Console
    from rich.progress import Progress

    with Progress(transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(what, total=len(items))
        for it in items:
            yield it
            bar.advance(task)
