"""Pipeline: real face -> box, label, probabilities, set, timings; head swaps under load are atomic per frame."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from infantino.runtime.backends import unavailable_reason
from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.errors import HeadError
from infantino.runtime.face import Box, FaceOptions, crop_face, upright_crop
from infantino.runtime.pipeline import STAGES, FaceResult, Pipeline
from infantino.runtime.contract.preprocess import preprocess


def _backends(bundle):
    out = ["onnxruntime"]
    if unavailable_reason("tflite") is None and bundle.manifest.artifact("tflite"):
        out.append("tflite")
    return out


@pytest.fixture(scope="module")
def two_faces(real_faces):
    """astronaut and grace_hopper side by side: a frame with two faces."""
    a, g = real_faces["astronaut"], real_faces["grace_hopper"]
    f = np.zeros((max(a.shape[0], g.shape[0]), a.shape[1] + g.shape[1], 3), np.uint8)
    f[: a.shape[0], : a.shape[1]] = a
    f[: g.shape[0], a.shape[1]:] = g
    return f


@pytest.mark.parametrize("backend", ["onnxruntime", "tflite"])
def test_predict_on_real_faces(runtime_loaded, runtime_model, real_faces, backend):
    import torch

    if backend not in _backends(runtime_loaded):
        pytest.skip(unavailable_reason(backend) or "bundle has no tflite artifact")
    model, cfg = runtime_model
    with Pipeline(runtime_loaded, backend=backend, threads=1) as pipe:
        assert pipe.backend.name == backend
        for name, img in real_faces.items():
            res = pipe.predict(img)
            assert len(res) == 1, name
            r = res[0]
            assert isinstance(r, FaceResult)
            assert set(r.probabilities) == set(CLASSES) and abs(sum(r.probabilities.values()) - 1) < 1e-6
            assert r.label == max(r.probabilities, key=r.probabilities.get) == CLASSES[r.index]
            assert r.label in r.prediction_set and r.head_version == 1
            assert 0 <= r.entropy <= np.log(7) + 1e-9
            assert r.embedding.dtype == np.float32 and r.embedding.shape == (64,)
            assert set(r.timings) == set(STAGES) and all(v >= 0 for v in r.timings.values())
            x0, y0, w, h = r.crop_box
            assert x0 <= r.box[0] and y0 <= r.box[1] and w >= r.box[2] and h >= r.box[3]
            # The embedding is PyTorch's embedding of the same crop (turned upright by the face's roll angle),
            # preprocessed by the trainer's config.
            assert r.angle is not None and len(r.keypoints) == 6  # the default detector (BlazeFace) gives them
            crop, _ = upright_crop(img, Box(*r.box, angle=r.angle), pipe.face_options.margin)
            with torch.no_grad():
                want = model(torch.from_numpy(preprocess([crop], cfg.spec, "NCHW"))).numpy()[0]
            cos = float(want @ r.embedding / (np.linalg.norm(want) * np.linalg.norm(r.embedding)))
            assert cos > 0.9999, cos
            assert np.allclose(list(r.probabilities.values()), pipe.head.forward(r.embedding)[0], atol=1e-12)
            assert r.to_message().label == r.label


def test_backends_agree_on_real_faces(runtime_loaded, real_faces):
    names = _backends(runtime_loaded)
    if len(names) < 2:
        pytest.skip("needs two backends")
    res = {}
    for n in names:
        with Pipeline(runtime_loaded, backend=n, threads=1) as pipe:
            res[n] = [pipe.predict(img)[0] for img in real_faces.values()]
    for a, b in zip(*res.values()):
        assert a.box == b.box and a.label == b.label
        assert np.abs(a.embedding - b.embedding).max() < 1e-4 * np.abs(a.embedding).max()


def test_no_face_frame_yields_no_result(runtime_loaded):
    import cv2
    from skimage import data

    with Pipeline(runtime_loaded, backend="onnxruntime") as pipe:
        frame = cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR)
        assert pipe.predict(frame) == []
        fr = pipe.predict_frame(frame)
        assert fr.faces == [] and fr.head_version is None and set(fr.timings) == {"detect"}
        with pytest.raises(ValueError, match="uint8"):
            pipe.predict(frame.astype(np.float32))


def test_all_faces_of_a_frame_in_one_batch(runtime_loaded, two_faces):
    with Pipeline(runtime_loaded, backend="onnxruntime", face=FaceOptions(largest_only=False)) as pipe:
        res = pipe.predict(two_faces)
        assert len(res) == 2 and res[0].timings == res[1].timings
        # Same embeddings as classifying each crop on its own.
        crops = [upright_crop(two_faces, Box(*r.box, angle=r.angle), pipe.face_options.margin)[0] for r in res]
        alone = pipe.classify_crops(crops)
        for r, s in zip(res, alone):
            assert np.abs(r.embedding - s.embedding).max() < 1e-5 * np.abs(r.embedding).max() + 1e-9
        assert pipe.classify_crops([]) == []


def _heads(base, n):
    rng = np.random.default_rng(5)
    heads = {base.version: base}
    for v in range(base.version + 1, base.version + 1 + n):
        w = tuple(np.asarray(a) + rng.normal(scale=0.5, size=a.shape).astype(np.float32) for a in base.weights)
        heads[v] = base.replace(weights=w, version=v)
    return heads


def test_swap_head_refuses_heads_that_do_not_fit(runtime_loaded):
    with Pipeline(runtime_loaded, backend="onnxruntime") as pipe:
        h = pipe.head
        with pytest.raises(HeadError, match="extractor"):
            pipe.swap_head(h.replace(extractor_id="0" * 64, version=2))
        with pytest.raises(HeadError, match="classes"):
            pipe.swap_head(h.replace(classes=tuple(reversed(h.classes)), version=2))
        with pytest.raises(HeadError, match="expected a Head"):
            pipe.swap_head("head.infh")
        assert pipe.head is h
        new = h.replace(version=2)
        assert pipe.swap_head(new) is h and pipe.head is new


def test_head_swap_under_concurrent_predict_is_atomic_per_frame(runtime_loaded, two_faces):
    """Swaps from another thread: every frame yields its faces, all faces of a frame use one head version,
    probabilities are exactly that version's output, and versions only move forward."""
    heads = _heads(runtime_loaded.head, 12)
    pipe = Pipeline(runtime_loaded, backend="onnxruntime", face=FaceOptions(largest_only=False, detect_max_side=512),
                    threads=1)
    n_frames = 24
    frames_out: list[list[FaceResult]] = []
    errors = []
    started = threading.Event()

    def predictor():
        try:
            for i in range(n_frames):
                frames_out.append(pipe.predict(two_faces))
                started.set()
        except Exception as e:  # reported below
            errors.append(e)
            started.set()

    t = threading.Thread(target=predictor)
    t.start()
    started.wait(30)
    for v in sorted(heads)[1:]:
        pipe.swap_head(heads[v])
        if not t.is_alive():
            break
        threading.Event().wait(0.01)
    t.join()
    pipe.close()
    assert not errors, errors
    assert len(frames_out) == n_frames and all(len(f) == 2 for f in frames_out), "a frame lost its faces"
    versions = []
    for faces in frames_out:
        vs = {r.head_version for r in faces}
        assert len(vs) == 1, f"one frame mixed head versions {vs}"
        v = vs.pop()
        versions.append(v)
        for r in faces:
            got = np.array([r.probabilities[c] for c in CLASSES])
            diffs = {k: np.abs(h.forward(r.embedding)[0] - got).max() for k, h in heads.items()}
            assert diffs[v] < 1e-9 and min(diffs, key=diffs.get) == v, f"probabilities are not head v{v}'s"
    assert versions == sorted(versions), "head versions went backwards"
    assert len(set(versions)) >= 2, "no swap happened while predicting (test did not exercise the swap)"


def test_signed_update_applied_and_swapped(runtime_loaded, keypair, real_faces):
    """The device's path: apply a signed delta to the pipeline's head, swap it in, predictions use it."""
    from infantino.runtime.contract import head_update as hu

    base = runtime_loaded.head
    new = _heads(base, 1)[base.version + 1]
    blob, published = hu.encode_delta(base, new, keypair[2], dtype="float16", fleet="nursery")
    with Pipeline(runtime_loaded, backend="onnxruntime") as pipe:
        got = hu.apply_update(pipe.head, blob, keypair[3], runtime_loaded.extractor_id)
        pipe.swap_head(got)
        r = pipe.predict(real_faces["astronaut"])[0]
        assert r.head_version == 2 and pipe.head.sha256 == published.sha256


def test_pipeline_from_a_path_uses_the_configured_key(runtime_bundle, keypair, monkeypatch, real_faces):
    monkeypatch.setenv("INFANTINO_PUBLIC_KEY", str(keypair[1]))
    with Pipeline(runtime_bundle, backend="auto") as pipe:
        assert pipe.backend.name == "onnxruntime"
        assert len(pipe.predict(real_faces["grace_hopper"])) == 1


def test_turned_face_is_classified_upright(runtime_loaded, face_scene):
    """A face lying at 90/180/270 degrees gets (nearly) the embedding of the same face upright; Haar crops stay
    axis-aligned (no angle)."""
    upright = face_scene(0, scale=160, seed=4)
    with Pipeline(runtime_loaded, backend="onnxruntime", threads=1) as pipe:
        ref = pipe.predict(upright.frame)[0]
        for rotation in (90, 180, 270):
            turned = cv2.rotate(upright.frame, {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180,
                                                270: cv2.ROTATE_90_COUNTERCLOCKWISE}[rotation])
            r = pipe.predict(turned)[0]
            assert abs((r.angle - ref.angle - rotation + 180) % 360 - 180) < 10, (rotation, r.angle)
            cos = float(ref.embedding @ r.embedding / (np.linalg.norm(ref.embedding) * np.linalg.norm(r.embedding)))
            assert cos > 0.97, (rotation, cos)
            x, y, w, h = r.crop_box  # the display region: axis-aligned, inside the frame
            assert x >= 0 and y >= 0 and x + w <= turned.shape[1] and y + h <= turned.shape[0]
        flat = FaceOptions(upright=False)
    with Pipeline(runtime_loaded, backend="onnxruntime", threads=1, face=flat) as pipe:
        r = pipe.predict(turned)[0]
        crop, _ = crop_face(turned, Box(*r.box), flat.margin)
        assert np.allclose(r.embedding, pipe.embed([crop])[0], atol=1e-5)
    with Pipeline(runtime_loaded, backend="onnxruntime", threads=1, face=FaceOptions(detector="haar")) as pipe:
        r = pipe.predict(upright.frame)
        assert len(r) == 1 and r[0].angle is None and r[0].keypoints is None
