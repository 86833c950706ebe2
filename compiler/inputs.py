"""The compiler's inputs: the extractor (local checkpoint, trainer output folder or models:/ URI) and its head.

Local paths never import MLflow; URIs go through trainer.tracking, like every other part. The head must have
been fitted on this very extractor (same extractor_id), or the bundle would predict garbage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from infantino.runtime.contract.errors import HeadError, InfantinoError
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.layout import EXTRACTOR_FILE, HEAD_FILE
from infantino.trainer import tracking
from infantino.trainer.tracking import is_mlflow_uri, parse_models_uri

log = logging.getLogger(__name__)

HEAD_MODEL = "infantino-head"


@dataclass
class LoadedModel:
    """The extractor in eval mode, its config, identity and provenance."""

    model: Any
    config: Any  # trainer.extractor.ExtractorConfig
    checkpoint: Path
    extractor_id: str
    name: str
    version: str
    source: str


def resolve_checkpoint(model: str) -> Path:
    """extractor.pt for a file, a folder holding one (e.g. `infantino-train fit --out`), or an MLflow URI."""
    try:
        return Path(tracking.resolve_extractor(model))
    except (FileNotFoundError, InfantinoError) as e:
        raise type(e)(f"--model: {e}") from None


def load_model(model: str) -> LoadedModel:
    """Resolve and load the extractor; name/version come from the registry for models:/ URIs."""
    from infantino.trainer.extractor import extractor_id, load_extractor  # heavy: trainer.extractor imports torch

    ckpt = resolve_checkpoint(model)
    net, config = load_extractor(ckpt)
    name, version = ckpt.parent.name or "extractor", "local"
    parsed = parse_models_uri(model)
    if parsed:
        name, alias, num = parsed
        version = num or alias
        if alias:
            try:
                version = tracking.model_version_info(name, alias)["version"]
            except Exception as e:  # provenance only: keep the alias if the registry lookup fails
                log.warning("cannot look up %s@%s's version: %s", name, alias, e)
    return LoadedModel(model=net, config=config, checkpoint=ckpt, extractor_id=extractor_id(net), name=name,
                       version=str(version), source=str(model))


def default_head(model: str) -> Optional[str]:
    """The head that goes with --model: models:/<extractor>@ALIAS -> models:/infantino-head@ALIAS, else None."""
    parsed = parse_models_uri(model)
    if parsed and parsed[1]:
        return f"models:/{HEAD_MODEL}@{parsed[1]}"
    return None


def resolve_head_file(head: Optional[str], checkpoint: Path, model: str = "") -> Path:
    """head.infh from --head (file, folder, or models:/ URI); by default the registry head with the same alias
    as a models:/ --model, or head.infh beside the extractor checkpoint."""
    if head is None and default_head(model):
        head = default_head(model)
    if head is None:
        p = checkpoint.parent / HEAD_FILE
        if p.is_file():
            return p
        if is_mlflow_uri(model):
            raise InfantinoError(f"--model {model} names no alias to find its head by and carries no {HEAD_FILE}; "
                                 f"pass --head (models:/{HEAD_MODEL}@ALIAS or a {HEAD_FILE})")
        raise InfantinoError(f"no initial head: {p} does not exist; pass --head (a {HEAD_FILE}, a trainer output "
                             "folder, or models:/infantino-head@champion)")
    try:
        return Path(tracking.resolve_head_file(head))
    except (FileNotFoundError, InfantinoError) as e:
        raise type(e)(f"--head: {e}") from None


def load_head(path: Path, loaded: LoadedModel) -> Head:
    """Parse the head and check it fits the extractor: extractor_id, embedding size and classes."""
    try:
        head = Head.from_bytes(path.read_bytes())
    except HeadError as e:
        raise InfantinoError(f"--head {path}: {e}") from None
    problems = head.fit_problems(loaded.extractor_id, loaded.config.embed_dim, loaded.config.classes)
    if problems:
        raise InfantinoError(f"--head {path} does not fit --model {loaded.source}: {'; '.join(problems)}; use the "
                             "head trained with this extractor (or re-fit one)")
    return head
