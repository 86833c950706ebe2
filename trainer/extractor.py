"""The feature extractor: any timm backbone -> 64-d embedding, plus the 7-way head used only for training.

Design: `timm.create_model(name, num_classes=0)` gives pooled features; a Linear projection maps them to
the 64-d embedding; a Linear(64, 7) classifier trains it. The exported extractor outputs the embedding.
Checkpoints are plain dicts (config + state_dict) that load on CPU whatever device saved them.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from infantino.runtime.contract.atomic import fsync_dir
from infantino.runtime.contract.classes import CLASSES, EMBEDDING_DIM
from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "infantino-extractor"
CHECKPOINT_FORMAT_VERSION = 1


# Backbones whose input convention is not timm's ImageNet RGB: name -> PreprocessSpec factory(img_size).
DEFAULT_PREPROCESS: dict[str, callable] = {"mini_xception": PreprocessSpec.fer2013}


@dataclass
class ExtractorConfig:
    """Everything needed to rebuild the extractor and feed it: backbone, sizes, preprocessing."""

    backbone: str = "efficientnet_b0"
    embed_dim: int = EMBEDDING_DIM
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    img_size: int = 224
    preprocess: dict = field(default_factory=dict)
    pretrained: str | None = None
    backbone_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.preprocess:
            default = DEFAULT_PREPROCESS.get(self.backbone, PreprocessSpec.imagenet)
            self.preprocess = default(self.img_size).model_dump(mode="json")

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.model_validate(self.preprocess)

    @property
    def in_chans(self) -> int:
        return self.spec.channels


# Backbones that build their own EmbeddingNet parts (e.g. the pretrained mini_xception) register here:
# name -> callable(config) -> EmbeddingNet. Everything else goes through timm.create_model.
CUSTOM_BUILDERS: dict[str, callable] = {}


class EmbeddingNet(nn.Module):
    """backbone (pooled features) -> Linear -> 64-d embedding; `classifier` maps the embedding to 7 logits."""

    def __init__(self, backbone: nn.Module, num_features: int, embed_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.embed = nn.Linear(num_features, embed_dim)
        self.classifier = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding: what the compiled extractor outputs."""
        return self.embed(self.backbone(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward(x))

    def freeze_stages(self, n: int) -> None:
        """Freeze the first n stages of the backbone (fine-tuning); only for backbones that define stages."""
        fn = getattr(self.backbone, "freeze_stages", None)
        if fn is None:
            raise InfantinoError(f"backbone {type(self.backbone).__name__} does not support freezing stages")
        fn(n)


def extractor_id(model: nn.Module) -> str:
    """sha256 over the state dict (names + float32 bytes, sorted): the identity heads and bundles refer to.

    Computable by the trainer at training time and by the compiler, so a head registered in MLflow already
    names the extractor it fits (the contract's "sha256 of the ONNX" is kept per artifact in the manifest).
    """
    model = getattr(model, "module", model)
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().to(torch.float32 if t.is_floating_point() else t.dtype).numpy().tobytes())
    return h.hexdigest()


def build_extractor(config: ExtractorConfig) -> EmbeddingNet:
    """Build an EmbeddingNet for `config`; a clear error names unknown backbones."""
    import timm  # heavy: timm, ~3 s to import (train extra)

    _load_custom_builders()
    if config.backbone in CUSTOM_BUILDERS:
        return CUSTOM_BUILDERS[config.backbone](config)
    if not timm.is_model(config.backbone):
        close = difflib.get_close_matches(config.backbone, timm.list_models(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise InfantinoError(f"unknown backbone {config.backbone!r} (not a timm model).{hint}")
    if config.pretrained:
        raise InfantinoError(
            f"pretrained weights {config.pretrained!r} are not available for {config.backbone!r} here "
            "(no model hub); use pretrained=None or the mini_xception backbone with --pretrained fer2013")
    backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0,
                                 in_chans=config.in_chans, **config.backbone_kwargs)
    # Models with a pre-logits layer (MobileNetV3/V4, LCNet, GhostNet) output head_hidden_size, not num_features.
    dim = getattr(backbone, "head_hidden_size", None) or backbone.num_features
    return EmbeddingNet(backbone, dim, config.embed_dim, len(config.classes))


def _load_custom_builders() -> None:
    """Import the modules that register custom backbones (timm registry + CUSTOM_BUILDERS)."""
    for mod in ("infantino.trainer.mini_xception",):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: ExtractorConfig, **extra) -> None:
    """Atomically save config + weights (+ optimizer/epoch/metrics given as extra)."""
    model = getattr(model, "module", model)  # unwrap DDP
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
                "config": asdict(config), "state_dict": model.state_dict(), **extra}, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint dict on CPU; InfantinoError if missing or not an infantino extractor checkpoint.

    weights_only=True: tensors, numbers, strings and containers only, so a checkpoint from a shared registry
    cannot run code when it is loaded (a pickle with other objects is refused with the loader's reason).
    """
    path = Path(path)
    if not path.is_file():
        raise InfantinoError(f"extractor checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise InfantinoError(f"cannot read extractor checkpoint {path}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InfantinoError(f"{path} is not an infantino extractor checkpoint")
    return ckpt


def load_extractor(path: str | os.PathLike) -> tuple[EmbeddingNet, ExtractorConfig]:
    """Rebuild the extractor from a checkpoint file, in eval mode on CPU."""
    ckpt = read_checkpoint(path)
    config = ExtractorConfig(**ckpt["config"])
    model = build_extractor(config)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, config


@torch.no_grad()
def embed_batch(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Embeddings in eval mode without gradients (the seed code forgot both); restores the previous mode."""
    was_training = model.training
    model.eval()
    try:
        return model(batch)
    finally:
        model.train(was_training)
