"""Camera-like test frames from real faces: faces composited into 640x480 scenes with ground truth; face-free frames.

Real faces come from packages (scikit-image's astronaut and lfw_subset, matplotlib's grace_hopper); each is pasted
with a feathered elliptical mask onto a background (gradients, smooth noise, textures, tiled LFW non-face
patches, natural photos), at a face size of 48-240 px, turned 0, +-30, 90, 180 or 270 degrees clockwise, and
the whole frame is lit 0.6-1.3x. Every scene carries its ground truth (face box, rotation, scale, brightness,
source index), so detectors and the whole frame path can be scored on the same frames. Seeded: same seed,
same frames.

camera_scenes() makes a video instead of independent scenes: one static background (a fixed camera) with
sensor noise, faces that drift a few pixels and turn a degree or so per frame, leave, and come back elsewhere
in another orientation; the ground truth per frame as in Scene. write_video() stores any scene list as an
MJPG .avi, the format `infantino-bench pipeline --video` reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

ROTATIONS = (0, 30, -30, 90, 180, 270)
SCALES = (48, 64, 96, 144, 240)
BRIGHTNESS = (0.6, 1.3)
FRAME_SIZE = (640, 480)  # width, height
BACKGROUND_KINDS = ("gradient", "noise", "texture", "lfw_nonfaces", "natural")
FACE_FREE_KINDS = ("blank", "noise", "gradient", "texture", "lfw_nonfaces", "natural")
NATURAL_IMAGES = ("coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
TEXTURE_IMAGES = ("brick", "grass", "gravel")

# Face squares (x, y, side) in the package photos, from BlazeFace on the originals (checked by eye); the head
# crop adds HEAD_MARGIN x side on each side so hair, ears and chin come along.
PHOTO_FACES = {"astronaut": (174, 70, 106), "grace_hopper": (158, 118, 210)}
HEAD_MARGIN = 0.5
# lfw_subset's "non-face" patches that do show a face: [125] has both eyes and the nose (checked by eye).
LFW_NONFACE_EXCLUDED = (125,)


@dataclass(frozen=True)
class FaceSource:
    """A real face: a BGR head crop, the face square inside it (x, y, w, h), and a name for per-source tables."""

    image: np.ndarray
    face_box: tuple[int, int, int, int]
    name: str

    @classmethod
    def whole(cls, image: np.ndarray, name: str = "face") -> "FaceSource":
        """An image that is all face (e.g. a tight 25x25 LFW crop)."""
        return cls(_bgr(image), (0, 0, int(image.shape[1]), int(image.shape[0])), name)


@dataclass(frozen=True)
class Scene:
    """One frame and its ground truth; face-free frames have box None and face_index -1.

    box: the face's square (side = scale px, axis-aligned, centred on the face centre) in frame pixels
    (x, y, w, h); rotation: degrees the face is turned clockwise on screen; background: its kind;
    segment: the run of a camera clip the frame belongs to (camera_scenes), -1 for independent scenes.
    """

    frame: np.ndarray
    box: Optional[tuple[int, int, int, int]]
    rotation: int
    scale: int
    brightness: float
    face_index: int
    source: str
    background: str
    segment: int = -1

    @property
    def has_face(self) -> bool:
        return self.box is not None


def _bgr(img: np.ndarray) -> np.ndarray:
    """uint8 BGR from grey/float images (floats in [0, 1])."""
    import cv2  # optional: OpenCV (device/train extras)

    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.clip(a * 255.0 if a.max() <= 1.0 else a, 0, 255).round().astype(np.uint8)
    if a.ndim == 2:
        a = cv2.cvtColor(a, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(a[..., :3])


def photo_face_sources() -> list[FaceSource]:
    """Head crops of scikit-image's astronaut and matplotlib's grace_hopper (face square known)."""
    import cv2  # optional: OpenCV (device/train extras)
    import matplotlib  # heavy: matplotlib, ~0.4 s to import (train extra)
    from skimage import data  # optional: scikit-image (train/test extras)

    photos = {"astronaut": cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR),
              "grace_hopper": cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))}
    out = []
    for name, img in photos.items():
        if img is None:
            raise FileNotFoundError(f"matplotlib's sample image {name}.jpg is missing")
        x, y, s = PHOTO_FACES[name]
        m = int(round(s * HEAD_MARGIN))
        x0, y0 = max(0, x - m), max(0, y - m)
        x1, y1 = min(img.shape[1], x + s + m), min(img.shape[0], y + s + m)
        out.append(FaceSource(np.ascontiguousarray(img[y0:y1, x0:x1]), (x - x0, y - y0, s, s), name))
    return out


def lfw_face_sources(n: int = 100) -> list[FaceSource]:
    """The first n (<= 100) of scikit-image's lfw_subset faces: 25x25 grey, tight crops (blurry when upscaled)."""
    from skimage import data  # optional: scikit-image (train/test extras)

    faces = data.lfw_subset()[: min(int(n), 100)]
    return [FaceSource.whole(f, f"lfw{i:03d}") for i, f in enumerate(faces)]


def lfw_nonfaces() -> list[np.ndarray]:
    """lfw_subset's non-face 25x25 patches (BGR uint8), without those that show a face (LFW_NONFACE_EXCLUDED)."""
    from skimage import data  # optional: scikit-image (train/test extras)

    lfw = data.lfw_subset()
    return [_bgr(lfw[i]) for i in range(100, len(lfw)) if i not in LFW_NONFACE_EXCLUDED]


def package_face_sources(lfw: int = 100) -> list[FaceSource]:
    """astronaut, grace_hopper, then `lfw` LFW faces: the real faces the benchmarks composite."""
    return photo_face_sources() + (lfw_face_sources(lfw) if lfw > 0 else [])


# ---- backgrounds ------------------------------------------------------------------------------------------
class Backgrounds:
    """Seeded background frames of several kinds (BGR uint8, height x width)."""

    def __init__(self, size: tuple[int, int] = FRAME_SIZE):
        self.w, self.h = size
        self._cache_natural: Optional[list[np.ndarray]] = None
        self._cache_textures: Optional[list[np.ndarray]] = None
        self._cache_nonfaces: Optional[list[np.ndarray]] = None

    def make(self, kind: str, rng: np.random.Generator) -> np.ndarray:
        if kind not in FACE_FREE_KINDS:
            raise ValueError(f"unknown background kind {kind!r}; valid: {', '.join(FACE_FREE_KINDS)}")
        return getattr(self, f"_{kind}")(rng)

    def _blank(self, rng) -> np.ndarray:
        return np.full((self.h, self.w, 3), rng.integers(0, 256, 3), np.uint8)

    def _gradient(self, rng) -> np.ndarray:
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:self.h, 0:self.w].astype(np.float32)
        p = (xx * math.cos(t) + yy * math.sin(t))
        p = (p - p.min()) / max(float(np.ptp(p)), 1e-6)
        return (a[None, None] * (1 - p[..., None]) + b[None, None] * p[..., None]).astype(np.uint8)

    def _noise(self, rng) -> np.ndarray:
        import cv2  # optional: OpenCV (device/train extras)

        cells = int(rng.integers(4, 40))
        coarse = rng.uniform(0, 255, (max(2, cells * self.h // self.w), cells, 3)).astype(np.float32)
        img = cv2.resize(coarse, (self.w, self.h), interpolation=cv2.INTER_CUBIC)
        img += rng.normal(0, rng.uniform(2, 25), img.shape).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)

    def _texture(self, rng) -> np.ndarray:
        import cv2  # optional: OpenCV (device/train extras)

        if self._cache_textures is None:
            from skimage import data  # optional: scikit-image (train/test extras)

            self._cache_textures = [_bgr(getattr(data, n)()) for n in TEXTURE_IMAGES]
        tex = self._cache_textures[int(rng.integers(len(self._cache_textures)))]
        s = rng.uniform(0.5, 1.5)
        tex = cv2.resize(tex, (max(8, int(tex.shape[1] * s)), max(8, int(tex.shape[0] * s))))
        reps = (math.ceil(self.h / tex.shape[0]), math.ceil(self.w / tex.shape[1]), 1)
        img = np.tile(tex, reps)[: self.h, : self.w]
        tint = rng.uniform(0.6, 1.2, 3)
        return np.clip(img * tint[None, None], 0, 255).astype(np.uint8)

    def _lfw_nonfaces(self, rng) -> np.ndarray:
        import cv2  # optional: OpenCV (device/train extras)

        if self._cache_nonfaces is None:
            self._cache_nonfaces = lfw_nonfaces()
        cell = int(rng.choice([40, 60, 80, 120, 160]))
        img = np.zeros((self.h, self.w, 3), np.uint8)
        for y in range(0, self.h, cell):
            for x in range(0, self.w, cell):
                p = self._cache_nonfaces[int(rng.integers(len(self._cache_nonfaces)))]
                p = cv2.resize(p, (cell, cell), interpolation=cv2.INTER_CUBIC)
                img[y:y + cell, x:x + cell] = p[: self.h - y, : self.w - x]
        return img

    def _natural(self, rng) -> np.ndarray:
        import cv2  # optional: OpenCV (device/train extras)

        if self._cache_natural is None:
            from skimage import data  # optional: scikit-image (train/test extras)

            self._cache_natural = [_bgr(cv2.cvtColor(getattr(data, n)(), cv2.COLOR_RGB2BGR)) for n in NATURAL_IMAGES]
        img = self._cache_natural[int(rng.integers(len(self._cache_natural)))]
        s = max(self.w / img.shape[1], self.h / img.shape[0]) * rng.uniform(1.0, 1.6)
        img = cv2.resize(img, (math.ceil(img.shape[1] * s), math.ceil(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        y = int(rng.integers(0, img.shape[0] - self.h + 1))
        x = int(rng.integers(0, img.shape[1] - self.w + 1))
        out = img[y:y + self.h, x:x + self.w]
        return np.ascontiguousarray(out[:, ::-1] if rng.random() < 0.5 else out)


# ---- compositing ------------------------------------------------------------------------------------------
def _feather_mask(h: int, w: int, tight: bool) -> np.ndarray:
    """float32 alpha (h, w): a soft ellipse (tight crops: an ellipse 1.3x larger, i.e. a soft rounded rectangle)."""
    import cv2  # optional: OpenCV (device/train extras)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    k = 1.3 if tight else 1.0
    r = np.sqrt(((xx + 0.5 - w / 2) / (w / 2 * k)) ** 2 + ((yy + 0.5 - h / 2) / (h / 2 * k)) ** 2)
    alpha = np.clip((1.0 - r) / 0.12, 0.0, 1.0)
    if tight:  # also fade the straight edges a little
        edge = np.minimum.reduce([xx + 0.5, w - xx - 0.5, yy + 0.5, h - yy - 0.5]) / max(2.0, 0.04 * min(h, w))
        alpha = np.minimum(alpha, np.clip(edge, 0.0, 1.0))
    return cv2.GaussianBlur(alpha, (0, 0), max(0.5, 0.01 * min(h, w)))


def paste(frame: np.ndarray, src: FaceSource, scale: int, rotation: float, centre: tuple[float, float],
          mask: Optional[np.ndarray] = None) -> None:
    """Blend `src` into `frame` (in place) so its face square has side `scale` px, is turned `rotation` degrees
    clockwise and centred at `centre` (frame pixels)."""
    import cv2  # optional: OpenCV (device/train extras)

    fx, fy, fw, fh = src.face_box
    s = scale / max(fw, fh)
    img = src.image.astype(np.float32)
    alpha = _feather_mask(*src.image.shape[:2], tight=src.face_box == (0, 0, src.image.shape[1], src.image.shape[0])) \
        if mask is None else mask
    # source -> frame: scale about the face centre, turn clockwise (OpenCV's positive angle is counter-clockwise),
    # then move the face centre to `centre`
    m = cv2.getRotationMatrix2D((fx + fw / 2.0, fy + fh / 2.0), -float(rotation), s)
    m[:, 2] += np.asarray(centre) - np.asarray([fx + fw / 2.0, fy + fh / 2.0])
    H, W = frame.shape[:2]
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    warped = cv2.warpAffine(img, m, (W, H), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    a = cv2.warpAffine(alpha, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = frame.astype(np.float32) * (1.0 - a[..., None]) + np.clip(warped, 0, 255) * a[..., None]
    frame[:] = np.clip(out, 0, 255).round().astype(np.uint8)


def _lit(frame: np.ndarray, brightness: float) -> np.ndarray:
    return np.clip(frame.astype(np.float32) * brightness, 0, 255).round().astype(np.uint8)


def composite_scenes(faces: Sequence[np.ndarray | FaceSource], n_per_face: int = len(ROTATIONS) * len(SCALES),
                     seed: int = 0, rotations: Sequence[int] = ROTATIONS, scales: Sequence[int] = SCALES,
                     brightness: tuple[float, float] = BRIGHTNESS, size: tuple[int, int] = FRAME_SIZE,
                     backgrounds: Sequence[str] = BACKGROUND_KINDS) -> list[Scene]:
    """`n_per_face` scenes per face: one face each, ground truth in Scene; seeded.

    Rotations and scales cycle in a grid (face i, scene j: rotation j % R, scale (j // R + i) % S) so every
    rotation x scale cell is covered evenly; position, background and brightness are random. A plain array
    in `faces` is taken as all face (FaceSource.whole).
    """
    if not faces:
        raise ValueError("composite_scenes: no faces given")
    if n_per_face < 1:
        raise ValueError(f"n_per_face must be >= 1, got {n_per_face}")
    if not rotations or not scales:
        raise ValueError("composite_scenes: rotations and scales must not be empty")
    w, h = size
    if max(scales) * 1.42 > min(w, h):
        raise ValueError(f"scale {max(scales)} px does not fit a turned face into a {w}x{h} frame")
    srcs = [f if isinstance(f, FaceSource) else FaceSource.whole(f, f"face{i}") for i, f in enumerate(faces)]
    rng = np.random.default_rng(seed)
    bg = Backgrounds(size)
    out = []
    for i, src in enumerate(srcs):
        for j in range(n_per_face):
            rot = int(rotations[j % len(rotations)])
            scale = int(scales[(j // len(rotations) + i) % len(scales)])
            kind = backgrounds[int(rng.integers(len(backgrounds)))]
            frame = bg.make(kind, rng).copy()
            half = scale / 2.0 * (abs(math.cos(math.radians(rot))) + abs(math.sin(math.radians(rot))))
            cx = float(rng.uniform(half, w - half))
            cy = float(rng.uniform(half, h - half))
            paste(frame, src, scale, rot, (cx, cy))
            b = float(rng.uniform(*brightness))
            box = (int(round(cx - scale / 2)), int(round(cy - scale / 2)), scale, scale)
            out.append(Scene(_lit(frame, b), box, rot, scale, b, i, src.name, kind))
    return out


def face_free_scenes(n: int, seed: int = 1, size: tuple[int, int] = FRAME_SIZE,
                     kinds: Sequence[str] = FACE_FREE_KINDS, brightness: tuple[float, float] = BRIGHTNESS
                     ) -> list[Scene]:
    """`n` frames without a face (kinds cycle); "lfw_nonfaces" frames also get LFW non-face patches pasted like
    faces (48-240 px, turned), so a detector is tempted exactly where faces would be."""
    rng = np.random.default_rng(seed)
    bg = Backgrounds(size)
    nonfaces = None
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        frame = bg.make(kind, rng).copy()
        if kind == "lfw_nonfaces":
            nonfaces = nonfaces or [FaceSource.whole(p, "nonface") for p in lfw_nonfaces()]
            for _ in range(int(rng.integers(1, 4))):
                scale = int(rng.choice(SCALES))
                rot = int(rng.choice(ROTATIONS))
                half = scale * 0.71
                paste(frame, nonfaces[int(rng.integers(len(nonfaces)))], scale, rot,
                      (float(rng.uniform(half, size[0] - half)), float(rng.uniform(half, size[1] - half))))
        b = float(rng.uniform(*brightness))
        out.append(Scene(_lit(frame, b), None, 0, 0, b, -1, "none", kind))
    return out


# ---- camera-like clips ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CameraSegment:
    """A run of frames of a camera clip: `source` None = no face; else where the face starts and how it moves
    (centre in px, velocity in px/frame, rotation in degrees clockwise and its change per frame, size in px)."""

    start: int
    length: int
    source: Optional[int]
    centre: tuple[float, float] = (0.0, 0.0)
    velocity: tuple[float, float] = (0.0, 0.0)
    rotation: float = 0.0
    spin: float = 0.0
    scale: int = 0


def camera_segments(n_frames: int, n_sources: int, seed: int = 0, size: tuple[int, int] = FRAME_SIZE,
                    segment: tuple[int, int] = (25, 45), face_free_every: int = 3,
                    speed: tuple[float, float] = (1.0, 3.0), spin: tuple[float, float] = (0.0, 1.0),
                    scales: tuple[int, int] = (72, 200), rotations: Sequence[int] = (0, 90, 180, 270),
                    still_every: int = 0) -> list[CameraSegment]:
    """The plan of a clip: segments of `segment` frames, every `face_free_every`-th without a face (0 = none;
    with the default 3: face, face, none, face, ...), each face segment with a random source, start
    orientation, size, drift and spin; every `still_every`-th face segment (0 = none) neither drifts nor turns
    (a sleeping infant: only the sensor noise changes)."""
    if n_frames < 1 or n_sources < 1:
        raise ValueError(f"camera_segments: need frames and faces, got {n_frames} frames, {n_sources} sources")
    if not 0 < segment[0] <= segment[1]:
        raise ValueError(f"segment lengths must be 0 < min <= max, got {segment}")
    w, h = size
    if scales[1] * 1.42 > min(w, h):
        raise ValueError(f"scale {scales[1]} px does not fit a turned face into a {w}x{h} frame")
    rng = np.random.default_rng(seed)
    out: list[CameraSegment] = []
    start = 0
    while start < n_frames:
        length = min(int(rng.integers(segment[0], segment[1] + 1)), n_frames - start)
        if face_free_every > 0 and len(out) % face_free_every == face_free_every - 1:
            out.append(CameraSegment(start, length, None))
        else:
            scale = int(rng.integers(scales[0], scales[1] + 1))
            half = scale * 0.71  # a face turned any way stays inside the frame
            a = rng.uniform(0, 2 * math.pi)
            v = rng.uniform(*speed)
            turn = float(rng.uniform(*spin) * rng.choice([-1, 1]))
            faces_so_far = sum(seg.source is not None for seg in out)
            if still_every > 0 and faces_so_far % still_every == still_every - 1:
                v, turn = 0.0, 0.0
            out.append(CameraSegment(start, length, int(rng.integers(n_sources)),
                                     (float(rng.uniform(half, w - half)), float(rng.uniform(half, h - half))),
                                     (v * math.cos(a), v * math.sin(a)), float(rng.choice(rotations)),
                                     turn, scale))
        start += length
    return out


def camera_scenes(faces: Sequence[np.ndarray | FaceSource], n_frames: int = 150, seed: int = 0,
                  size: tuple[int, int] = FRAME_SIZE, background: str = "natural", noise: float = 2.0,
                  **plan) -> list[Scene]:
    """A camera-like clip of `n_frames` frames (consecutive frames similar) with ground truth per frame.

    One background of kind `background` for the whole clip (a fixed camera), Gaussian sensor noise of
    `noise` grey levels per frame; faces follow camera_segments(**plan): they drift 1-3 px and turn up to
    1 degree per frame (bouncing off the frame edges), disappear for a while and reappear elsewhere in
    another orientation. Scene.rotation is the face's rotation rounded to a degree, Scene.segment the
    segment's index and Scene.background "face" or "none".
    """
    if not faces:
        raise ValueError("camera_scenes: no faces given")
    srcs = [f if isinstance(f, FaceSource) else FaceSource.whole(f, f"face{i}") for i, f in enumerate(faces)]
    w, h = size
    rng = np.random.default_rng(seed)
    base = Backgrounds(size).make(background, rng)
    out = []
    for k, seg in enumerate(camera_segments(n_frames, len(srcs), seed=seed + 1, size=size, **plan)):
        cx, cy = seg.centre
        vx, vy = seg.velocity
        rot = seg.rotation
        for _ in range(seg.length):
            frame = base.copy()
            box = None
            if seg.source is not None:
                paste(frame, srcs[seg.source], seg.scale, rot, (cx, cy))
                box = (int(round(cx - seg.scale / 2)), int(round(cy - seg.scale / 2)), seg.scale, seg.scale)
            noisy = frame.astype(np.float32) + rng.normal(0.0, noise, frame.shape).astype(np.float32)
            frame = np.clip(noisy, 0, 255).round().astype(np.uint8)
            if seg.source is None:
                out.append(Scene(frame, None, 0, 0, 1.0, -1, "none", "none", k))
                continue
            r = int(round(rot)) % 360
            out.append(Scene(frame, box, r - 360 if r > 180 else r, seg.scale, 1.0, seg.source,
                             srcs[seg.source].name, "face", k))
            half = seg.scale * 0.71
            if not half <= cx + vx <= w - half:
                vx = -vx
            if not half <= cy + vy <= h - half:
                vy = -vy
            cx, cy, rot = cx + vx, cy + vy, rot + seg.spin
    return out


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: float = 15.0) -> Path:
    """Write BGR frames (one size) as an MJPG .avi through OpenCV, atomically (temp file, then rename)."""
    import cv2  # optional: OpenCV (device/train extras)

    path = Path(path)
    if not frames:
        raise ValueError("write_video: no frames")
    if path.suffix.lower() != ".avi":
        raise ValueError(f"write_video writes MJPG .avi files, got {path.name}")
    h, w = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG .avi here ({tmp})")
    try:
        for f in frames:
            if f.shape[:2] != (h, w):
                raise ValueError(f"write_video: frame of shape {f.shape[:2]} in a {w}x{h} clip")
            writer.write(f)
    finally:
        writer.release()
    tmp.replace(path)
    return path
