"""Training augmentation on uint8 images, before `runtime.preprocess` (so train and device tensors agree).

Label-safe for expressions: horizontal flip, a small similarity transform (rotation, scale, shift), brightness,
contrast and a little noise. Strength is one dataclass; every draw comes from the caller's numpy Generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms (0 disables one)."""

    flip: float = 0.5                 # probability of a horizontal flip
    rotate_deg: float = 10.0          # max |rotation|
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.06               # max |shift|, fraction of the image side
    brightness: float = 0.15          # max |additive change|, fraction of 255
    contrast: float = 0.2             # contrast factor within 1 +- contrast
    noise: float = 3.0                # max Gaussian noise sigma (0-255 scale)

    @classmethod
    def none(cls) -> "AugmentConfig":
        return cls(flip=0.0, rotate_deg=0.0, scale=(1.0, 1.0), shift=0.0, brightness=0.0, contrast=0.0, noise=0.0)

    @classmethod
    def light(cls) -> "AugmentConfig":
        """Flips and small jitter: the default; small nets learn 64 px expressions much faster with it."""
        return cls(flip=0.5, rotate_deg=5.0, scale=(0.95, 1.05), shift=0.03, brightness=0.1, contrast=0.1, noise=2.0)

    @classmethod
    def strong(cls) -> "AugmentConfig":
        """The class defaults: for real photos and bigger backbones with time to learn invariances."""
        return cls()

    @classmethod
    def preset(cls, name: str) -> "AugmentConfig":
        if name not in AUGMENT_PRESETS:
            raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENT_PRESETS)}")
        return getattr(cls, name)()


AUGMENT_PRESETS = ("none", "light", "strong")


def augment(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """A randomly transformed copy of a BGR (H,W,3) or gray (H,W) uint8 image, same shape and dtype."""
    import cv2  # optional: OpenCV (device/train extras)

    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 image (H,W) or (H,W,C), got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    img = image
    if cfg.flip and rng.random() < cfg.flip:
        img = img[:, ::-1]
    angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg) if cfg.rotate_deg else 0.0
    scale = rng.uniform(*cfg.scale)
    dx, dy = (rng.uniform(-cfg.shift, cfg.shift, 2) * (w, h)) if cfg.shift else (0.0, 0.0)
    if angle or scale != 1.0 or dx or dy:
        M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        M[:, 2] += (dx, dy)
        img = cv2.warpAffine(np.ascontiguousarray(img), M, (w, h), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT_101)
    x = None
    if cfg.contrast or cfg.brightness:
        c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
        b = rng.uniform(-cfg.brightness, cfg.brightness) * 255.0
        x = img.astype(np.float32)
        mean = float(x.mean())
        x = (x - mean) * c + mean + b
    if cfg.noise:
        x = img.astype(np.float32) if x is None else x
        x += rng.normal(0.0, rng.uniform(0, cfg.noise), x.shape).astype(np.float32)
    if x is not None:
        img = np.clip(x, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)
