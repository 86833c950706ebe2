"""Face detection and crop (Haar and BlazeFace alike): real faces shipped in packages are found where they are; no
face means no result; upright crops level the eye line."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.face import Box, FaceOptions, create_detector, crop_face, list_detectors, upright_crop

DETECTORS = ["haar", "blazeface"]

# Where the faces are in the package photos (x0, y0, x1, y1), measured by eye on the originals.
FACE_REGIONS = {"astronaut": (160, 50, 290, 190), "grace_hopper": (140, 80, 390, 350)}


def frame_640x480(img: np.ndarray) -> tuple[np.ndarray, float, int, int]:
    """The image scaled to fit a 640x480 camera frame (aspect kept, black bars): frame, scale, x-offset, y-offset."""
    s = min(640 / img.shape[1], 480 / img.shape[0])
    r = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    f = np.zeros((480, 640, 3), np.uint8)
    y, x = (480 - r.shape[0]) // 2, (640 - r.shape[1]) // 2
    f[y:y + r.shape[0], x:x + r.shape[1]] = r
    return f, s, x, y


def _inside(box: Box, region) -> bool:
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    x0, y0, x1, y1 = region
    return x0 <= cx <= x1 and y0 <= cy <= y1 and box.w <= (x1 - x0) * 1.3


@pytest.fixture(params=DETECTORS)
def detector_name(request):
    """Each registered real detector; BlazeFace needs its models (fetched once, see fixtures_faces)."""
    if request.param == "blazeface":
        request.getfixturevalue("blazeface_models")
    return request.param


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_finds_the_real_face(real_faces, name, detector_name):
    det = create_detector(FaceOptions(detector=detector_name))
    img = real_faces[name]
    boxes = det.detect(img)
    assert len(boxes) == 1 and _inside(boxes[0], FACE_REGIONS[name]), boxes
    # The same photo inside a 640x480 camera frame: found at the same place (scaled).
    frame, s, ox, oy = frame_640x480(img)
    boxes = det.detect(frame)
    x0, y0, x1, y1 = FACE_REGIONS[name]
    assert len(boxes) == 1 and _inside(boxes[0], (x0 * s + ox, y0 * s + oy, x1 * s + ox, y1 * s + oy)), boxes
    # Grey input works too.
    assert len(det.detect(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))) == 1


def test_no_face_yields_nothing(detector_name):
    from skimage import data

    det = create_detector(FaceOptions(detector=detector_name, largest_only=False))
    for img in (cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR), cv2.cvtColor(data.rocket(), cv2.COLOR_RGB2BGR),
                np.full((480, 640, 3), 127, np.uint8),
                np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)):
        assert det.detect(img) == []


def test_largest_only_versus_all_faces_and_min_size(real_faces, detector_name):
    opts = FaceOptions(detector=detector_name)
    a, g = real_faces["astronaut"], real_faces["grace_hopper"]
    h = max(a.shape[0], g.shape[0])
    both = np.zeros((h, a.shape[1] + g.shape[1], 3), np.uint8)
    both[: a.shape[0], : a.shape[1]] = a
    both[: g.shape[0], a.shape[1]:] = g
    all_faces = create_detector(opts, largest_only=False).detect(both)
    assert len(all_faces) == 2 and all_faces[0].area >= all_faces[1].area
    largest = create_detector(opts, largest_only=True).detect(both)
    assert largest == all_faces[:1] and largest[0].x >= a.shape[1]  # grace_hopper's face is the larger one
    big_only = create_detector(opts, largest_only=False, min_size=150).detect(both)
    assert big_only == all_faces[:1]


def test_downscaled_detection_maps_back_to_frame_pixels(real_faces, detector_name):
    img = real_faces["grace_hopper"]
    full = create_detector(FaceOptions(detector=detector_name)).detect(img)[0]
    small = create_detector(FaceOptions(detector=detector_name, detect_max_side=256)).detect(img)[0]
    assert abs(small.x - full.x) < 0.1 * full.w and abs(small.w - full.w) < 0.15 * full.w


def test_crop_with_margin_is_clamped_to_the_frame():
    frame = np.arange(100 * 80 * 3, dtype=np.uint32).astype(np.uint8).reshape(100, 80, 3)
    crop, b = crop_face(frame, Box(10, 20, 40, 40), margin=0.25)
    assert b == Box(0, 10, 60, 60) and crop.shape == (60, 60, 3)
    assert np.array_equal(crop, frame[10:70, 0:60])
    crop, b = crop_face(frame, Box(60, 80, 30, 30), margin=0.5)
    assert (b.x + b.w, b.y + b.h) == (80, 100)
    crop[:] = 0  # a copy: the frame is untouched
    assert frame[99, 79].any()
    with pytest.raises(ValueError, match="outside the frame"):
        crop_face(frame, Box(200, 200, 10, 10))


def test_bad_frames_are_refused_clearly(detector_name):
    det = create_detector(FaceOptions(detector=detector_name))
    for bad, msg in [(np.zeros((10, 10, 3), np.float32), "uint8"), (np.zeros((10, 10, 2), np.uint8), "shape"),
                     ("frame.jpg", "numpy image"), (np.zeros((0, 10, 3), np.uint8), "shape")]:
        with pytest.raises(ValueError, match=msg):
            det.detect(bad)


def test_detector_registry():
    assert {"blazeface", "haar", "full_frame"} <= set(list_detectors())
    assert FaceOptions().detector == "blazeface"
    with pytest.raises(InfantinoError, match="valid: blazeface, full_frame, haar.*Did you mean 'haar'"):
        create_detector(FaceOptions(detector="harr"))
    ff = create_detector(FaceOptions(detector="full_frame"))
    assert ff.detect(np.zeros((64, 48, 3), np.uint8)) == [Box(0, 0, 48, 64)]


@pytest.mark.parametrize("angle", [30.0, -30.0, 90.0, 180.0, -120.0])
def test_upright_crop_levels_the_eye_line(angle):
    """Two marks on a line turned `angle` degrees clockwise come out level, the right one on the left."""
    frame = np.full((240, 320, 3), 40, np.uint8)
    cx, cy, r = 160.0, 120.0, 30.0
    a = np.radians(angle)
    right_eye = (cx - r * np.cos(a), cy - r * np.sin(a))  # the eye line points along `angle` (y down)
    left_eye = (cx + r * np.cos(a), cy + r * np.sin(a))
    cv2.circle(frame, tuple(int(round(v)) for v in right_eye), 4, (0, 0, 255), -1)
    cv2.circle(frame, tuple(int(round(v)) for v in left_eye), 4, (255, 0, 0), -1)
    box = Box(110, 70, 100, 100, angle=angle)
    crop, crop_box = upright_crop(frame, box, margin=0.2)
    assert crop.shape == (140, 140, 3)
    assert crop_box == box.expand(0.2, frame.shape) == Box(90, 50, 140, 140, angle=angle)
    red = np.argwhere((crop[..., 2] > 150) & (crop[..., 0] < 100)).mean(axis=0)  # (y, x)
    blue = np.argwhere((crop[..., 0] > 150) & (crop[..., 2] < 100)).mean(axis=0)
    assert abs(red[0] - blue[0]) < 1.5 and red[1] < blue[1]
    assert abs(red[1] - (70 - r)) < 1.5 and abs(red[0] - 70) < 1.5  # centred: the box centre is the crop centre
    # no angle: the same square, not turned
    plain, _ = upright_crop(frame, Box(110, 70, 100, 100), margin=0.2)
    assert np.array_equal(plain, frame[50:190, 90:230])
    with pytest.raises(ValueError, match="outside the frame"):
        upright_crop(frame, Box(400, 400, 10, 10, angle=10.0))


def test_upright_crop_of_a_turned_real_face_is_upright(face_scene):
    det = create_detector(FaceOptions(detector="blazeface"))
    upright_only = create_detector(FaceOptions(detector="blazeface", rotations=(0,), min_size=20))
    for rotation in (30, 90, 180, 270):
        scene = face_scene(rotation, scale=150, seed=1)
        box = det.detect(scene.frame)[0]
        crop, _ = upright_crop(scene.frame, box, margin=0.3)
        again = upright_only.detect(crop)
        assert len(again) == 1 and abs(again[0].angle) < 10, (rotation, box.angle, again)


def test_box_scaling_keeps_keypoints_and_angle():
    b = Box(10, 20, 30, 40, 0.9, ((1.0, 2.0),) * 6, 12.5)
    s = b.scaled(2.0)
    assert s.as_tuple() == (20, 40, 60, 80) and s.keypoints[0] == (2.0, 4.0) and s.angle == 12.5 and s.score == 0.9
    assert b.expand(0.5, (100, 100)).keypoints == b.keypoints


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w, h = min(ax + aw, bx + bw) - max(ax, bx), min(ay + ah, by + bh) - max(ay, by)
    inter = max(0, w) * max(0, h)
    return inter / (aw * ah + bw * bh - inter)


def test_haar_default_contrast_keeps_mjpg_camera_faces():
    """Issue 15: a global histogram equalisation lost most upright faces of an MJPG camera clip (fer, which does
    not equalise, found them); the default local (CLAHE) step finds every one, and true/false still load."""
    from infantino.benchmarks import scenes as sc
    from infantino.benchmarks.frameset import _through_mjpg

    clip = sc.camera_scenes(sc.photo_face_sources(), n_frames=45, seed=5, rotations=(0,))
    frames = _through_mjpg([s.frame for s in clip])

    def recall(mode) -> float:
        det = create_detector(FaceOptions(detector="haar", equalize=mode))
        hits = [bool(b := det.detect(f)) and _iou(b[0].as_tuple(), s.box) >= 0.5 for s, f in zip(clip, frames)]
        return float(np.mean(hits))

    assert FaceOptions().equalize == "clahe"
    default, global_ = recall("clahe"), recall(True)
    assert FaceOptions(equalize=True).equalize == "global" and FaceOptions(equalize=False).equalize == "none"
    assert default >= 0.95 and global_ <= default - 0.3, (default, global_)
    with pytest.raises(ValueError, match="equalize"):
        FaceOptions(equalize="sometimes")
