"""The runtime feeds its extractor exactly the tensors the trainer trained on (max abs diff 0 on the same images).

Trainer side: trainer.fit.FaceTensors (augmentation off) with the spec FitConfig chooses for the backbone.
Runtime side: the Pipeline, driven only by the bundle manifest's preprocess block after a signed JSON round
trip, hands its backend a batch; a recording backend captures it.
"""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from infantino.runtime.backends.base import Backend
from infantino.runtime.face import FaceOptions
from infantino.runtime.contract.manifest import Manifest
from infantino.runtime.pipeline import Pipeline
from infantino.runtime.contract.preprocess import PreprocessSpec


class RecordingBackend(Backend):
    """Not registered: keeps the batches the pipeline hands to a backend (returns zero embeddings)."""

    name = "recording"
    formats = ("onnx", "tflite")
    thread_safe = True

    def _load(self):
        self.batches = []

    def _run(self, batch):
        self.batches.append(batch.copy())
        return np.zeros((batch.shape[0], self.embedding_dim), np.float32)


def _images(real_faces) -> list[np.ndarray]:
    """Real faces at several sizes, a grey image and a BGRA-free BGR crop: what cameras and data sets give."""
    from infantino.runtime.face import FaceOptions, create_detector, crop_face

    det = create_detector(FaceOptions())
    out = []
    for img in real_faces.values():
        b = det.detect(img)[0]
        crop, _ = crop_face(img, b, 0.2)
        out += [crop, cv2.resize(crop, (50, 61)), cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)]
    out.append(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))  # already at input size
    return out


def _bundle_with_spec(bundle, spec: PreprocessSpec, layout: str):
    """The session bundle, its manifest carrying `spec` after the JSON round trip a signed manifest makes."""
    data = json.loads(bundle.manifest.model_dump_json())
    data["preprocess"] = json.loads(json.dumps(spec.model_dump(mode="json")))
    for a in data["artifacts"]:
        a["layout"] = layout
    return dataclasses.replace(bundle, manifest=Manifest.model_validate_json(json.dumps(data)))


@pytest.mark.parametrize("backbone", ["test_efficientnet", "mini_xception"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_pipeline_tensors_equal_the_trainers(runtime_loaded, real_faces, backbone, layout):
    from infantino.trainer.data import ImageSet
    from infantino.trainer.fit import FaceTensors, FitConfig

    spec = FitConfig(data=".", backbone=backbone, img_size=64).preprocess_spec()
    assert spec.color == ("gray" if backbone == "mini_xception" else "rgb")
    imgs = _images(real_faces)
    trainer_ds = FaceTensors(ImageSet(labels=np.zeros(len(imgs)), names=[str(i) for i in range(len(imgs))],
                                      source="test", images=imgs), spec, aug=None)
    want = np.stack([trainer_ds[i][0].numpy() for i in range(len(imgs))])

    bundle = _bundle_with_spec(runtime_loaded, spec, layout)
    rec = RecordingBackend(bundle)
    pipe = Pipeline(bundle, backend=rec, face=FaceOptions(detector="full_frame", margin=0.0))
    for img in imgs:  # one frame per image, through detection (whole frame), crop and preprocessing
        assert len(pipe.predict(img)) == 1
    got = np.concatenate(rec.batches)
    if layout == "NHWC":
        got = got.transpose(0, 3, 1, 2)
    assert got.shape == want.shape and got.dtype == want.dtype == np.float32
    assert float(np.abs(got - want).max()) == 0.0


def test_compiled_reference_inputs_match_runtime_preprocessing(runtime_loaded, runtime_model, real_faces):
    """The bundle's reference inputs (made by the builder with the trainer's spec) are what the runtime makes."""
    from fixtures_runtime import _reference_images
    from infantino.runtime.contract.preprocess import preprocess

    x, _ = runtime_loaded.reference()
    _, cfg = runtime_model
    assert runtime_loaded.manifest.preprocess == cfg.spec
    again = preprocess(_reference_images(real_faces), runtime_loaded.manifest.preprocess, "NCHW")
    assert float(np.abs(again - x).max()) == 0.0
