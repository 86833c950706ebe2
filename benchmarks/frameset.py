"""The frames of `infantino-bench frames`: held-out real faces in 640x480 scenes and a camera clip, with ground truth.

Two sets, made once and saved as one .npz that our process and the peer's read alike:
- "scenes": independent frames (benchmarks.scenes.composite_scenes) of the real-face guard's held-out faces:
  astronaut and grace_hopper at every rotation (0, +-30, 90, 180, 270) and face size, LFW faces 0-49 upright at
  cycling sizes, plus face-free frames;
- "camera": two benchmarks.scenes.camera_scenes clips of the two photo faces (drifting, turning, leaving, coming
  back), the first half starting upright, the second turned 90/180/270 degrees, each on its own background and
  written as MJPG .avi and decoded again, so the frames carry a camera's compression.
Every face frame carries its box and the teacher's label: the fer TFLite on that face's held-out crop
(benchmarks.realfaces.heldout_scene_sources), i.e. "label kept" of the real-face work.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import scenes as sc

log = logging.getLogger(__name__)

GROUPS = ("scenes", "camera")
CAMERA_UPRIGHT = (0,)  # the camera set's first half: faces start upright (then turn up to 1 degree a frame)
CAMERA_TURNED = (90, 180, 270)  # its second half: an infant lying sideways or upside down


@dataclass(frozen=True)
class FrameSet:
    """Frames (N, H, W, 3) uint8 BGR and per frame: box (x, y, w, h; -1 = no face), teacher label (-1 = no face),
    rotation in degrees clockwise, group ("scenes"/"camera") and source name."""

    frames: np.ndarray
    boxes: np.ndarray
    teacher: np.ndarray
    rotation: np.ndarray
    group: np.ndarray
    source: np.ndarray

    def __len__(self) -> int:
        return int(len(self.frames))

    def indices(self, group: str) -> np.ndarray:
        return np.flatnonzero(self.group == group)

    def has_face(self, i: int) -> bool:
        return bool(self.boxes[i][2] > 0)

    def save(self, path: str | Path) -> Path:
        """Uncompressed .npz (the peer loads it with numpy alone)."""
        path = Path(path)
        np.savez(path, frames=self.frames, boxes=self.boxes, teacher=self.teacher, rotation=self.rotation,
                 group=self.group.astype("U8"), source=self.source.astype("U32"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FrameSet":
        with np.load(path) as z:
            return cls(z["frames"], z["boxes"], z["teacher"], z["rotation"], z["group"], z["source"])

    @classmethod
    def from_scenes(cls, parts: list[tuple[str, list, list[int]]]) -> "FrameSet":
        """From (group, [Scene], teacher label per scene face_index) parts."""
        frames, boxes, teacher, rot, group, source = [], [], [], [], [], []
        for name, scenes_, labels in parts:
            for s in scenes_:
                frames.append(s.frame)
                boxes.append(s.box if s.has_face else (-1, -1, -1, -1))
                teacher.append(labels[s.face_index] if s.has_face else -1)
                rot.append(s.rotation if s.has_face else 0)
                group.append(name)
                source.append(s.source)
        if not frames:
            raise ValueError("no frames")
        return cls(np.stack(frames), np.asarray(boxes, np.int32), np.asarray(teacher, np.int32),
                   np.asarray(rot, np.int32), np.asarray(group), np.asarray(source))


def _through_mjpg(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Encode as an MJPG .avi and decode again (a camera's compression)."""
    import cv2  # optional: OpenCV (device/train extras)

    with tempfile.TemporaryDirectory() as d:
        path = sc.write_video(Path(d) / "clip.avi", frames)
        cap = cv2.VideoCapture(str(path))
        out = []
        try:
            while len(out) < len(frames):
                ok, f = cap.read()
                if not ok:
                    break
                out.append(f)
        finally:
            cap.release()
    if len(out) != len(frames):
        raise RuntimeError(f"decoded {len(out)} of {len(frames)} frames of the camera clip")
    return out


def build_frameset(photo_scenes: int = 12, lfw_faces: int = 50, face_free: int = 10, camera_frames: int = 90,
                   seed: int = 2024) -> FrameSet:
    """The two sets (see the module docstring); seeded, so the same arguments give the same frames."""
    from .realfaces import heldout_scene_sources  # heavy: the teacher's answers on the held-out faces

    sources = heldout_scene_sources()
    photos = [s for s in sources if not s[0].name.startswith("lfw")]
    lfw = [s for s in sources if s[0].name.startswith("lfw")][:lfw_faces]
    parts = []
    scenes_: list = []
    labels: list[int] = []
    if photo_scenes:
        scenes_ += sc.composite_scenes([s for s, _, _ in photos], n_per_face=photo_scenes, seed=seed)
        labels += [lab for _, lab, _ in photos]
    if lfw:
        n = len(labels)
        lfw_sc = sc.composite_scenes([s for s, _, _ in lfw], n_per_face=1, seed=seed + 1, rotations=(0,))
        scenes_ += [replace(s, face_index=s.face_index + n) for s in lfw_sc]
        labels += [lab for _, lab, _ in lfw]
    if face_free:
        scenes_ += sc.face_free_scenes(face_free, seed=seed + 2)
    if scenes_:
        parts.append(("scenes", scenes_, labels))
    if camera_frames:
        clip = []
        half = (camera_frames + 1) // 2
        for k, (n, rots) in enumerate(((half, CAMERA_UPRIGHT), (camera_frames - half, CAMERA_TURNED))):
            if n:
                part = sc.camera_scenes([s for s, _, _ in photos], n_frames=n, seed=seed + 3 + k, rotations=rots)
                clip += [replace(s, frame=f) for s, f in zip(part, _through_mjpg([s.frame for s in part]))]
        parts.append(("camera", clip, [lab for _, lab, _ in photos]))
    fs = FrameSet.from_scenes(parts)
    log.info("frame set: %d scenes, %d camera frames", len(fs.indices("scenes")), len(fs.indices("camera")))
    return fs
