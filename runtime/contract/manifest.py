"""The bundle manifest (compiler writes, runtime reads): a typed schema so a bad bundle fails with a field name."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from .preprocess import PreprocessSpec

SCHEMA_VERSION = 1
from .layout import MANIFEST_FILE, SIGNATURE_FILE  # noqa: F401  (re-exported: bundle readers use them)

ArtifactFormat = Literal["onnx", "tflite", "tensorrt_plan", "tensorrt_onnx"]
Precision = Literal["fp32", "fp16", "int8"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelInfo(_Model):
    name: str
    version: str
    backbone: str
    source: str = Field(description="where the extractor came from: a models:/ URI or a path")


class ArtifactInfo(_Model):
    """One file of the bundle that a backend can run."""

    file: str
    format: ArtifactFormat
    precision: Precision
    layout: Literal["NCHW", "NHWC"]
    sha256: str
    size_bytes: int
    input_name: str = "input"
    output_name: str = "embedding"
    converter: str = ""
    dynamic_batch: bool = True
    # TensorRT only: build settings the device uses to build and cache the plan at first start.
    tensorrt: Optional[dict] = None


class ParityEntry(_Model):
    """How one artifact's outputs compare with PyTorch on held-out images."""

    file: str
    precision: Precision
    n_images: int
    max_abs_diff: float
    mean_cosine: float
    min_cosine: float
    top1_agreement: float
    thresholds: dict[str, float]
    passed: bool
    skipped_reason: Optional[str] = None


class FileEntry(_Model):
    file: str
    sha256: str


class HeadRef(_Model):
    file: str
    sha256: str
    version: int
    conformal_qhat: Optional[float] = None


class RealFaceEntry(_Model):
    """One artifact's top-1 agreement with the FER-2013 teacher on the held-out real faces, through the head."""

    file: str
    precision: Precision
    agreement: float
    agreement_confident: float
    passed: bool


class RealFaceReport(_Model):
    """The real-face guard's figures at compile time (trainer.realface_guard; docs/real-faces.md)."""

    teacher: str
    n_faces: int
    n_confident: int
    baseline: Optional[float] = Field(default=None, description="the pretrained model's agreement on these faces")
    max_drop: float
    min_confident: float
    entries: list[RealFaceEntry] = []
    regression_allowed: bool = False


class Manifest(_Model):
    """manifest.json of a bundle; every file it lists is covered by its sha256, and the whole by manifest.sig."""

    schema_version: Literal[1] = SCHEMA_VERSION
    model: ModelInfo
    extractor_id: str = Field(description="sha256 of the extractor state dict (trainer.extractor.extractor_id): heads name the extractor they fit")
    preprocess: PreprocessSpec
    embedding_dim: int
    classes: list[str]
    target: str
    precision: Precision
    default_backend: str
    artifacts: list[ArtifactInfo]
    parity: list[ParityEntry] = []
    toolchain: dict[str, str] = {}
    head: HeadRef
    reference: Optional[FileEntry] = Field(
        default=None, description="npz with reference inputs (preprocessed) and PyTorch embeddings")
    real_faces: Optional[RealFaceReport] = Field(
        default=None, description="agreement with the FER-2013 teacher on held-out real faces, per artifact")
    created_at: str = ""

    def artifact(self, fmt: str, precision: str | None = None) -> ArtifactInfo | None:
        """The first artifact of a format (and precision, if given)."""
        for a in self.artifacts:
            if a.format == fmt and (precision is None or a.precision == precision):
                return a
        return None
