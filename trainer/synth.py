"""Procedural cartoon faces for the 7 expressions: seeded, deterministic, with an adult/infant domain knob.

Why: tests and the demo need labelled faces without downloading a data set, and the domain knob (head
proportions, eye size, skin tones, lighting) lets us measure how much an adult-trained model loses on
infants. Expressions follow the usual action units: brow angle/height, eye openness, mouth curvature and
opening (e.g. surprise = raised arched brows, wide eyes, round open mouth). `difficulty` scales the pose,
lighting, clutter and within-class jitter: `easy` is learnable from scratch on a CPU in a minute or two.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from infantino.runtime.contract.classes import CLASSES, class_index
from infantino.runtime.contract.errors import InfantinoError

log = logging.getLogger(__name__)

DOMAINS = ("adult", "infant")
DIFFICULTIES = ("easy", "medium", "hard")
SUPERSAMPLE = 2  # draw at 2x and shrink with area interpolation: anti-aliased edges
META_FILE = "synth.json"


def _cv2():
    import cv2  # optional: OpenCV (device/train extras)

    return cv2


@dataclass(frozen=True)
class Difficulty:
    """Nuisance strength: pose, framing, lighting, clutter, noise, and within-class expression jitter."""

    rot_deg: float        # max in-plane rotation
    scale: tuple[float, float]  # head size factor range
    shift: float          # max centre shift, fraction of the image
    yaw: float            # max feature shift sideways (fake head turn), fraction of the head width
    light: float          # max directional light gradient (0 = flat)
    clutter: int          # max random background shapes
    noise: float          # max Gaussian noise sigma (0-255 scale)
    blur_p: float         # probability of a slight blur
    occlude_p: float      # probability of an occluding blob (hand, toy, blanket)
    expr_jitter: float    # within-class jitter of expression parameters (1 = classes overlap a lot)


DIFFICULTY = {
    "easy": Difficulty(rot_deg=5, scale=(0.95, 1.05), shift=0.03, yaw=0.03, light=0.15, clutter=0,
                       noise=4, blur_p=0.0, occlude_p=0.0, expr_jitter=0.25),
    "medium": Difficulty(rot_deg=12, scale=(0.85, 1.1), shift=0.06, yaw=0.10, light=0.35, clutter=4,
                         noise=8, blur_p=0.3, occlude_p=0.1, expr_jitter=0.5),
    "hard": Difficulty(rot_deg=22, scale=(0.72, 1.15), shift=0.10, yaw=0.18, light=0.55, clutter=10,
                       noise=14, blur_p=0.5, occlude_p=0.3, expr_jitter=0.8),
}


@dataclass(frozen=True)
class Expression:
    """Class means of the expression parameters (units: fractions of eye/head/mouth size)."""

    brow_raise: float     # brow height above the eye (+ = higher)
    brow_tilt: float      # inner end lower (+, frown) or higher (-, worry)
    brow_arch: float      # curvature of the brow (+ = arched)
    brow_asym: float      # one brow lower than the other (disgust)
    eye_open: float       # eye height / eye width
    mouth_width: float    # half-width, fraction of the head half-width
    mouth_curve: float    # corners up (+, smile) or down (-)
    mouth_open: float     # opening height, fraction of the mouth half-width
    mouth_asym: float     # one corner raised (sneer)
    teeth: float          # probability the open mouth shows teeth
    nose_wrinkle: float   # probability of wrinkle lines on the nose


EXPRESSIONS: dict[str, Expression] = {
    "angry":    Expression(brow_raise=-0.35, brow_tilt=0.55, brow_arch=-0.1, brow_asym=0.0, eye_open=0.32,
                           mouth_width=0.36, mouth_curve=-0.15, mouth_open=0.3, mouth_asym=0.0, teeth=0.9,
                           nose_wrinkle=0.2),
    "disgust":  Expression(brow_raise=-0.15, brow_tilt=0.25, brow_arch=0.0, brow_asym=0.45, eye_open=0.28,
                           mouth_width=0.34, mouth_curve=-0.35, mouth_open=0.12, mouth_asym=0.6, teeth=0.3,
                           nose_wrinkle=1.0),
    "fear":     Expression(brow_raise=0.45, brow_tilt=-0.45, brow_arch=0.0, brow_asym=0.0, eye_open=0.95,
                           mouth_width=0.44, mouth_curve=-0.2, mouth_open=0.75, mouth_asym=0.0, teeth=0.8,
                           nose_wrinkle=0.0),
    "happy":    Expression(brow_raise=0.1, brow_tilt=0.0, brow_arch=0.25, brow_asym=0.0, eye_open=0.32,
                           mouth_width=0.50, mouth_curve=0.75, mouth_open=0.35, mouth_asym=0.0, teeth=0.7,
                           nose_wrinkle=0.0),
    "sad":      Expression(brow_raise=0.1, brow_tilt=-0.55, brow_arch=-0.15, brow_asym=0.0, eye_open=0.40,
                           mouth_width=0.34, mouth_curve=-0.7, mouth_open=0.0, mouth_asym=0.0, teeth=0.0,
                           nose_wrinkle=0.0),
    "surprise": Expression(brow_raise=0.75, brow_tilt=0.0, brow_arch=0.6, brow_asym=0.0, eye_open=1.0,
                           mouth_width=0.21, mouth_curve=0.0, mouth_open=2.0, mouth_asym=0.0, teeth=0.0,
                           nose_wrinkle=0.0),
    "neutral":  Expression(brow_raise=0.0, brow_tilt=0.0, brow_arch=0.05, brow_asym=0.0, eye_open=0.55,
                           mouth_width=0.34, mouth_curve=0.0, mouth_open=0.0, mouth_asym=0.0, teeth=0.0,
                           nose_wrinkle=0.0),
}

# Skin tones (BGR) from light to dark; adults span the whole range, infants lean lighter and rosier.
_SKIN = np.array([[196, 224, 255], [160, 196, 236], [105, 172, 224], [66, 134, 198], [36, 85, 141],
                  [37, 56, 90]], dtype=np.float64)
_HAIR = np.array([[20, 20, 25], [30, 45, 70], [40, 70, 110], [90, 140, 190], [140, 140, 140], [20, 30, 60]],
                 dtype=np.float64)


@dataclass(frozen=True)
class DomainStyle:
    """What makes a domain look like itself: proportions, skin, lighting, background palette."""

    head_h: float         # head half-height, fraction of the image
    aspect: float         # head half-width / half-height
    taper: float          # narrowing of the jaw (0 = round)
    eye_y: float          # eye line, fraction of the head half-height below the centre
    eye_dx: float         # eye centre offset, fraction of the head half-width
    eye_w: float          # eye half-width, fraction of the head half-width
    mouth_y: float        # mouth line, fraction of the head half-height below the centre
    nose_len: float       # nose length, fraction of the head half-height
    skin_beta: tuple[float, float]  # Beta(a, b) over the tone ramp (0 light .. 1 dark)
    rosy: float           # cheek blush strength
    hair_p: float         # probability of visible hair
    warmth: float         # white balance shift towards warm (+)
    contrast: float       # global contrast factor
    softness: float       # blur sigma of the soft lighting (pixels at output size)
    pastel: bool          # nursery-like pastel backgrounds


DOMAIN_STYLE = {
    "adult": DomainStyle(head_h=0.33, aspect=0.76, taper=0.22, eye_y=-0.02, eye_dx=0.40, eye_w=0.19,
                         mouth_y=0.50, nose_len=0.30, skin_beta=(1.2, 1.2), rosy=0.0, hair_p=0.85,
                         warmth=-0.02, contrast=1.0, softness=0.0, pastel=False),
    "infant": DomainStyle(head_h=0.37, aspect=0.86, taper=0.08, eye_y=0.03, eye_dx=0.38, eye_w=0.22,
                          mouth_y=0.50, nose_len=0.18, skin_beta=(1.3, 4.0), rosy=0.35, hair_p=0.3,
                          warmth=0.08, contrast=0.85, softness=0.6, pastel=True),
}


def _check(label: str, domain: str, difficulty: str, size: int) -> None:
    class_index(label)
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid: {', '.join(DOMAINS)}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; valid: {', '.join(DIFFICULTIES)}")
    if not isinstance(size, (int, np.integer)) or size < 24:
        raise ValueError(f"size must be an integer >= 24 pixels, got {size!r}")


def render_face(label: str, rng: np.random.Generator, domain: str = "adult", size: int = 96,
                difficulty: str = "easy") -> np.ndarray:
    """One face showing `label`, as a BGR uint8 (size, size, 3) image; all randomness comes from `rng`."""
    _check(label, domain, difficulty, size)
    cv2 = _cv2()
    d = DIFFICULTY[difficulty]
    st = DOMAIN_STYLE[domain]
    ex = _jitter_expression(EXPRESSIONS[label], rng, d.expr_jitter)
    R = int(size) * SUPERSAMPLE

    img = _background(rng, R, st, d)
    # Face geometry in the canonical frame, then a similarity transform for pose.
    scale = rng.uniform(*d.scale)
    b = st.head_h * R * scale * rng.uniform(0.96, 1.04)
    a = b * st.aspect * rng.uniform(0.95, 1.05)
    angle = rng.uniform(-d.rot_deg, d.rot_deg)
    cx = R * (0.5 + rng.uniform(-d.shift, d.shift))
    cy = R * (0.52 + rng.uniform(-d.shift, d.shift))
    yaw = rng.uniform(-d.yaw, d.yaw) * a

    layer = np.zeros((R, R, 3), np.uint8)
    mask = np.zeros((R, R), np.uint8)
    skin = _skin(rng, st)
    c = (R / 2, R / 2)  # draw centred, then warp into place
    _draw_body(layer, mask, rng, c, a, b, skin, st)
    _draw_head(layer, mask, rng, c, a, b, skin, st)
    _draw_features(layer, rng, c, a, b, yaw, skin, st, ex)

    M = cv2.getRotationMatrix2D(c, angle, 1.0)
    M[:, 2] += (cx - c[0], cy - c[1])
    layer = cv2.warpAffine(layer, M, (R, R), flags=cv2.INTER_LINEAR, borderValue=0)
    mask = cv2.warpAffine(mask, M, (R, R), flags=cv2.INTER_LINEAR, borderValue=0)
    alpha = (mask.astype(np.float32) / 255.0)[:, :, None]
    img = img.astype(np.float32) * (1 - alpha) + layer.astype(np.float32) * alpha

    if rng.random() < d.occlude_p:
        _occlude(img, rng, R, (cx, cy), a, b)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    img = np.clip(_light(img, rng, size, st, d), 0, 255).astype(np.uint8)
    sigma = st.softness + (rng.uniform(0.3, 0.8) if rng.random() < d.blur_p else 0.0)
    if sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    if d.noise > 0:
        n = rng.normal(0.0, rng.uniform(0.3, 1.0) * d.noise, img.shape)
        img = np.clip(img.astype(np.float32) + n, 0, 255).astype(np.uint8)
    return img


def _jitter_expression(ex: Expression, rng: np.random.Generator, j: float) -> Expression:
    """Per-face expression parameters: class mean plus jitter proportional to the difficulty."""
    v = asdict(ex)
    spread = {"brow_raise": 0.3, "brow_tilt": 0.3, "brow_arch": 0.2, "brow_asym": 0.2, "eye_open": 0.15,
              "mouth_width": 0.06, "mouth_curve": 0.35, "mouth_open": 0.3, "mouth_asym": 0.25}
    for k, s in spread.items():
        v[k] = v[k] + rng.normal(0.0, s * j)
    v["eye_open"] = float(np.clip(v["eye_open"], 0.08, 1.2))
    v["mouth_width"] = float(np.clip(v["mouth_width"], 0.15, 0.6))
    v["mouth_open"] = float(np.clip(v["mouth_open"], 0.0, 2.4))
    v["teeth"] = float(rng.random() < ex.teeth)
    v["nose_wrinkle"] = float(rng.random() < ex.nose_wrinkle)
    return Expression(**v)


def _skin(rng: np.random.Generator, st: DomainStyle) -> np.ndarray:
    t = rng.beta(*st.skin_beta) * (len(_SKIN) - 1)
    i = min(int(t), len(_SKIN) - 2)
    tone = _SKIN[i] * (1 - (t - i)) + _SKIN[i + 1] * (t - i)
    tone = tone * rng.uniform(0.92, 1.06, 3) ** 0.5
    if st.rosy:
        tone = tone + np.array([-4.0, -6.0, 10.0]) * st.rosy * 2
    return np.clip(tone, 0, 255)


def _col(c) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(round(float(x))))) for x in c)


def _blend(layer: np.ndarray, src: np.ndarray, mask: np.ndarray, box) -> None:
    """layer = src where mask (anti-aliased, 0-255), inside box (x0, y0, x1, y1) only: cheap partial composite."""
    h, w = mask.shape
    x0, y0, x1, y1 = max(0, int(box[0])), max(0, int(box[1])), min(w, int(box[2]) + 2), min(h, int(box[3]) + 2)
    if x1 <= x0 or y1 <= y0:
        return
    a = mask[y0:y1, x0:x1, None].astype(np.float32) / 255.0
    dst = layer[y0:y1, x0:x1]
    dst[:] = (dst * (1 - a) + src[y0:y1, x0:x1] * a).astype(np.uint8)


def _background(rng: np.random.Generator, R: int, st: DomainStyle, d: Difficulty) -> np.ndarray:
    cv2 = _cv2()
    if st.pastel:
        base = rng.uniform(90, 245, 3)
    else:
        base = rng.uniform(40, 220) + rng.normal(0, 25, 3)
    c2 = np.clip(base + rng.normal(0, 30, 3), 0, 255)
    t = np.linspace(0.0, 1.0, R, dtype=np.float32)
    ramp = t[:, None] if rng.random() < 0.5 else t[None, :]
    img = np.clip(base, 0, 255)[None, None, :] * (1 - ramp[..., None]) + c2[None, None, :] * ramp[..., None]
    img = np.ascontiguousarray(np.broadcast_to(img, (R, R, 3)).astype(np.uint8))
    for _ in range(int(rng.integers(0, d.clutter + 1))):
        color = _col(rng.uniform(0, 255, 3))
        p = tuple(int(v) for v in rng.integers(0, R, 2))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.rectangle(img, p, tuple(int(v) for v in rng.integers(0, R, 2)), color, -1)
        elif kind == 1:
            cv2.circle(img, p, int(rng.integers(R // 20, R // 5)), color, -1, cv2.LINE_AA)
        else:
            cv2.line(img, p, tuple(int(v) for v in rng.integers(0, R, 2)), color, int(rng.integers(1, 6)), cv2.LINE_AA)
    return img


def _pts(xy) -> np.ndarray:
    return np.round(np.asarray(xy, dtype=np.float64) * 16).astype(np.int32).reshape(-1, 1, 2)


def _poly(img, pts, color, thickness=-1):
    """Anti-aliased polygon (filled if thickness < 0) with sub-pixel precision (shift=4)."""
    cv2 = _cv2()
    p = _pts(pts)
    if thickness < 0:
        cv2.fillPoly(img, [p], _col(color) if img.ndim == 3 else int(color), cv2.LINE_AA, shift=4)
    else:
        cv2.polylines(img, [p], False, _col(color) if img.ndim == 3 else int(color), max(1, int(round(thickness))),
                      cv2.LINE_AA, shift=4)


def _ellipse_pts(cx, cy, ax, ay, n=48, t0=0.0, t1=2 * math.pi, taper=0.0):
    t = np.linspace(t0, t1, n)
    sx = 1 - taper * np.clip(np.sin(t), 0, None) ** 2
    return np.stack([cx + ax * np.cos(t) * sx, cy + ay * np.sin(t)], axis=1)


def _draw_body(layer, mask, rng, c, a, b, skin, st):
    """Neck and shoulders in clothing colour: faces in photos come with them."""
    cx, cy = c
    cloth = rng.uniform(20, 235, 3)
    neck = [(cx - 0.42 * a, cy + 0.6 * b), (cx + 0.42 * a, cy + 0.6 * b), (cx + 0.48 * a, cy + 1.25 * b),
            (cx - 0.48 * a, cy + 1.25 * b)]
    _poly(layer, neck, skin * 0.82)
    _poly(mask, neck, 255)
    sh = _ellipse_pts(cx, cy + 1.55 * b, 1.9 * a, 0.5 * b, n=40, t0=math.pi, t1=2 * math.pi)
    sh = np.vstack([sh, [(cx + 1.9 * a, cy + 2.5 * b), (cx - 1.9 * a, cy + 2.5 * b)]])
    _poly(layer, sh, cloth)
    _poly(mask, sh, 255)


def _draw_head(layer, mask, rng, c, a, b, skin, st):
    cx, cy = c
    hair = _HAIR[rng.integers(0, len(_HAIR))] * rng.uniform(0.8, 1.1)
    has_hair = rng.random() < st.hair_p
    if has_hair:  # hair volume behind the head
        back = _ellipse_pts(cx, cy - 0.12 * b, a * 1.12, b * 1.0, n=48)
        _poly(layer, back, hair)
        _poly(mask, back, 255)
    for s in (-1, 1):  # ears
        ear = _ellipse_pts(cx + s * a * 0.97, cy + 0.05 * b, a * 0.14, b * 0.2, n=20)
        _poly(layer, ear, skin * 0.9)
        _poly(mask, ear, 255)
    face = _ellipse_pts(cx, cy, a, b, n=72, taper=st.taper)
    _poly(layer, face, skin)
    _poly(mask, face, 255)
    if has_hair:  # fringe over the forehead
        top = b * rng.uniform(0.55, 0.75)
        fringe = _ellipse_pts(cx, cy - b * 0.25, a * 1.04, b * 0.78, n=40, t0=math.pi, t1=2 * math.pi)
        fringe = np.vstack([fringe, [(cx + a * 0.9, cy - top), (cx, cy - top - 0.1 * b), (cx - a * 0.9, cy - top)]])
        _poly(layer, fringe, hair)
    elif st.rosy:  # a few wisps of infant hair
        for k in range(int(rng.integers(1, 4))):
            x0 = cx + rng.uniform(-0.3, 0.3) * a
            curl = _ellipse_pts(x0, cy - 0.92 * b, 0.12 * a, 0.08 * b, n=12, t0=math.pi, t1=2.2 * math.pi)
            _poly(layer, curl, hair * 0.9, thickness=max(1, a * 0.02))


def _draw_features(layer, rng, c, a, b, yaw, skin, st, ex: Expression):
    cv2 = _cv2()
    cx, cy = c
    fx = cx + yaw  # features move sideways when the head turns
    dark = np.clip(skin * 0.55, 0, 255)
    line = max(1.0, a * 0.045)
    # Cheeks: blush (infants) and soft shading under the cheekbones.
    for s in (-1, 1):
        if st.rosy:
            cheek = layer.copy()
            cv2.ellipse(cheek, (int(fx + s * 0.5 * a), int(cy + 0.35 * b)), (int(0.2 * a), int(0.13 * b)), 0, 0, 360,
                        _col(skin + np.array([-20, -25, 25])), -1, cv2.LINE_AA)
            cv2.addWeighted(cheek, st.rosy, layer, 1 - st.rosy, 0, dst=layer)
    # Eye sockets: a darker band that gives the eyes-darker-than-cheeks pattern of real faces.
    ey = cy + st.eye_y * b
    ew = st.eye_w * a
    eh = ew * ex.eye_open
    socket = layer.copy()
    for s in (-1, 1):
        ex_c = fx + s * st.eye_dx * a
        cv2.ellipse(socket, (int(ex_c), int(ey - 0.1 * ew)), (int(ew * 1.35), int(ew * 0.9)), 0, 0, 360,
                    _col(skin * 0.78), -1, cv2.LINE_AA)
    cv2.addWeighted(socket, 0.6, layer, 0.4, 0, dst=layer)
    iris_col = _HAIR[rng.integers(0, 3)] * rng.uniform(0.6, 1.2)
    gaze = rng.uniform(-0.2, 0.2) * ew
    for s in (-1, 1):
        ex_c = fx + s * st.eye_dx * a
        _draw_eye(layer, ex_c, ey, ew, eh, iris_col, gaze, line)
    # Brows: inner end, middle, outer end; tilt lowers the inner end (frown) or raises it (worry).
    gap = ew * (0.55 + 0.45 * max(ex.eye_open, 0.3))
    for s in (-1, 1):
        bx_in, bx_out = fx + s * (st.eye_dx * a - 0.95 * ew), fx + s * (st.eye_dx * a + 1.15 * ew)
        raise_ = ex.brow_raise * ew * 0.8 + (ex.brow_asym * ew * 0.7 if s > 0 else 0)
        base = ey - gap - ew * 0.45 - raise_
        y_in = base + ex.brow_tilt * ew * 0.75
        y_out = base - ex.brow_tilt * ew * 0.15
        t = np.linspace(0, 1, 12)
        xs = bx_in + (bx_out - bx_in) * t
        ys = y_in + (y_out - y_in) * t - ex.brow_arch * ew * 0.6 * np.sin(math.pi * t)
        thick = ew * (0.28 if st.rosy == 0 else 0.2)
        upper = np.stack([xs, ys - thick / 2], 1)
        lower = np.stack([xs, ys + thick / 2], 1)[::-1]
        brow_col = dark * 0.6 if st.rosy == 0 else dark * 0.85
        _poly(layer, np.vstack([upper, lower]), brow_col)
    # Nose: bridge shading and nostrils; disgust wrinkles it.
    ny = cy + (st.eye_y + st.nose_len + 0.12) * b
    nw = a * (0.14 if st.rosy == 0 else 0.12)
    _poly(layer, [(fx - 0.2 * nw, ey + 0.3 * ew), (fx - 0.5 * nw, ny - 0.25 * nw), (fx - 1.0 * nw, ny)],
          skin * 0.78, thickness=line * 0.8)
    for s in (-1, 1):
        cv2.ellipse(layer, (int(fx + s * 0.55 * nw), int(ny)), (max(1, int(0.28 * nw)), max(1, int(0.18 * nw))), 0, 0,
                    360, _col(skin * 0.45), -1, cv2.LINE_AA)
    if ex.nose_wrinkle:
        for k in range(3):
            yy = ey + (0.5 + 0.35 * k) * ew
            _poly(layer, [(fx - 0.6 * nw, yy), (fx, yy - 0.15 * nw), (fx + 0.6 * nw, yy)], skin * 0.6,
                  thickness=line * 0.7)
    _draw_mouth(layer, fx, cy + st.mouth_y * b, a, b, skin, ex, line, st)


def _draw_eye(layer, x, y, ew, eh, iris_col, gaze, line):
    cv2 = _cv2()
    top = _ellipse_pts(x, y, ew, eh, n=24, t0=math.pi, t1=2 * math.pi)
    bottom = _ellipse_pts(x, y, ew, eh * 0.7, n=24, t0=0, t1=math.pi)
    outline = np.vstack([top, bottom])
    m = np.zeros(layer.shape[:2], np.uint8)
    _poly(m, outline, 255)
    eye = layer.copy()
    _poly(eye, outline, (235, 240, 245))
    r = ew * 0.55
    cv2.circle(eye, (int(x + gaze), int(y)), max(1, int(r)), _col(iris_col), -1, cv2.LINE_AA)
    cv2.circle(eye, (int(x + gaze), int(y)), max(1, int(r * 0.5)), (10, 10, 10), -1, cv2.LINE_AA)
    cv2.circle(eye, (int(x + gaze + r * 0.3), int(y - r * 0.3)), max(1, int(r * 0.18)), (250, 250, 250), -1,
               cv2.LINE_AA)
    _blend(layer, eye, m, (x - ew - 2, y - eh - 2, x + ew + 2, y + eh + 2))
    _poly(layer, top, (25, 20, 20), thickness=line * 1.3)  # upper lid and lashes


def _draw_mouth(layer, mx, my, a, b, skin, ex: Expression, line, st):
    cv2 = _cv2()
    w = ex.mouth_width * a * (0.85 if st.rosy else 1.0)
    t = np.linspace(-1, 1, 25)
    corner = -ex.mouth_curve * w * 0.45  # corners up (negative y) when smiling
    asym = -ex.mouth_asym * w * 0.35 * (t > 0) * t  # one corner raised (sneer)
    open_h = ex.mouth_open * w * 0.5
    if ex.mouth_curve > 0.3:   # a smile opens downwards
        up = corner * t ** 2 - open_h * 0.1 * (1 - t ** 2)
        low = corner * t ** 2 + open_h * (1 - t ** 2) + abs(corner) * 0.6 * (1 - t ** 2)
    else:
        up = corner * t ** 2 - open_h * 0.45 * (1 - t ** 2) ** 0.8
        low = corner * t ** 2 + open_h * 0.55 * (1 - t ** 2) ** 0.8
    xs = mx + w * t
    up_pts = np.stack([xs, my + up + asym], 1)
    low_pts = np.stack([xs, my + low + asym], 1)
    lip = np.clip(skin * np.array([0.7, 0.65, 0.95]), 0, 255)
    if open_h > 0.06 * w:
        inside = np.vstack([up_pts, low_pts[::-1]])
        _poly(layer, inside, (40, 30, 90))
        if ex.teeth:
            m = np.zeros(layer.shape[:2], np.uint8)
            _poly(m, inside, 255)
            teeth = layer.copy()
            band = up_pts.copy()
            band2 = np.stack([xs, my + up + asym + max(open_h * 0.35, 2.0)], 1)
            _poly(teeth, np.vstack([band, band2[::-1]]), (225, 235, 240))
            lo, hi = inside.min(axis=0), inside.max(axis=0)
            _blend(layer, teeth, m, (lo[0] - 2, lo[1] - 2, hi[0] + 2, hi[1] + 2))
        _poly(layer, up_pts, lip * 0.8, thickness=line)
        _poly(layer, low_pts, lip, thickness=line * 1.2)
    else:
        _poly(layer, up_pts, lip * 0.55, thickness=line * 1.4)
        lower_lip = np.stack([xs * 0.9 + mx * 0.1, my + up + asym + line * 1.4], 1)
        _poly(layer, lower_lip, lip, thickness=line * 1.2)
    if ex.mouth_curve > 0.4:  # smile lines
        for s in (-1, 1):
            cv2.ellipse(layer, (int(mx + s * (w + 0.08 * a)), int(my - 0.05 * b)), (int(0.06 * a), int(0.14 * b)),
                        0, 90 - s * 70, 90 + s * 20, _col(skin * 0.75), max(1, int(line * 0.7)), cv2.LINE_AA)


def _occlude(img, rng, R, centre, a, b):
    cv2 = _cv2()
    col = _col(rng.uniform(30, 230, 3))
    x = int(centre[0] + rng.uniform(-1, 1) * a)
    y = int(centre[1] + rng.uniform(0.2, 1.0) * b)
    cv2.ellipse(img, (x, y), (int(a * rng.uniform(0.3, 0.6)), int(b * rng.uniform(0.2, 0.4))),
                float(rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA)


def _light(img, rng, R, st: DomainStyle, d: Difficulty) -> np.ndarray:
    """Directional light gradient, global brightness/contrast and the domain's white balance."""
    theta = rng.uniform(0, 2 * math.pi)
    g = rng.uniform(0, d.light) * (0.6 if st.pastel else 1.0)
    yy, xx = np.mgrid[0:R, 0:R].astype(np.float32) / R - 0.5
    field = 1.0 + g * (np.cos(theta) * xx + np.sin(theta) * yy) * 2
    img = img * field[:, :, None]
    contrast = st.contrast * rng.uniform(0.85, 1.1)
    bright = rng.uniform(-20, 20)
    img = (img - 128.0) * contrast + 128.0 + bright
    warm = st.warmth + rng.normal(0, 0.02)
    img = img * np.array([1 - warm, 1.0, 1 + warm], dtype=np.float32)
    return img


def synth_arrays(n: int, domain: str = "adult", seed: int = 0, size: int = 96,
                 difficulty: str = "easy") -> tuple[list[np.ndarray], np.ndarray]:
    """n faces with balanced classes (counts differ by at most one), shuffled; deterministic for a seed.

    Returns (list of BGR uint8 images, labels as class indices into CLASSES).
    """
    rng, labels = _stream(n, domain, seed, size, difficulty)
    images = [render_face(CLASSES[int(k)], rng, domain=domain, size=size, difficulty=difficulty) for k in labels]
    return images, labels


def _stream(n, domain, seed, size, difficulty) -> tuple[np.random.Generator, np.ndarray]:
    """Validated arguments -> the generator and the shuffled balanced labels every rendering path uses."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    _check(CLASSES[0], domain, difficulty, size)
    rng = np.random.default_rng([int(seed), DOMAINS.index(domain), DIFFICULTIES.index(difficulty)])
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    return rng, labels


def write_dataset(out_dir: str | os.PathLike, n: int, domain: str = "adult", seed: int = 0, size: int = 96,
                  difficulty: str = "easy", overwrite: bool = False, progress: bool = False) -> Path:
    """Write an image folder (one sub-folder per class, PNG files) atomically: temp dir, then rename."""
    cv2 = _cv2()
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise InfantinoError(f"{out} already exists and is not empty; choose another --out or remove it")
    images, labels = _render_all(n, domain, seed, size, difficulty, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name in CLASSES:
            (tmp / name).mkdir()
        for i, (img, k) in enumerate(zip(images, labels)):
            name = CLASSES[int(k)]
            if not cv2.imwrite(str(tmp / name / f"{name}_{i:06d}.png"), img):
                raise InfantinoError(f"cannot write images into {tmp}")
        meta = {"generator": "infantino.trainer.synth", "n": int(n), "domain": domain, "seed": int(seed),
                "size": int(size), "difficulty": difficulty,
                "counts": {c: int((labels == i).sum()) for i, c in enumerate(CLASSES)}}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d %s faces (%s, %dpx, seed %d) to %s", n, domain, difficulty, size, seed, out)
    return out


def _render_all(n, domain, seed, size, difficulty, progress):
    if not progress:
        return synth_arrays(n, domain, seed, size, difficulty)
    from rich.progress import Progress  # optional: rich comes with the train extra only

    rng, labels = _stream(n, domain, seed, size, difficulty)  # same stream as synth_arrays
    images = []
    from rich.console import Console  # optional: rich comes with the train extra only

    with Progress(transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(f"rendering {n} faces", total=n)
        for k in labels:
            images.append(render_face(CLASSES[int(k)], rng, domain=domain, size=size, difficulty=difficulty))
            bar.advance(task)
    return images, labels


def contact_sheet(images: list[np.ndarray], labels: np.ndarray | None = None, cols: int = 7) -> np.ndarray:
    """Tile images into one BGR picture (with class names if labels are given): to eyeball the generator."""
    cv2 = _cv2()
    if not images:
        raise ValueError("no images")
    h, w = images[0].shape[:2]
    rows = (len(images) + cols - 1) // cols
    sheet = np.full((rows * (h + 14), cols * w, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y = r * (h + 14)
        sheet[y:y + h, c * w:(c + 1) * w] = img if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        if labels is not None:
            cv2.putText(sheet, CLASSES[int(labels[i])], (c * w + 2, y + h + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (0, 0, 0), 1, cv2.LINE_AA)
    return sheet
