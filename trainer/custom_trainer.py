"""The seed project's API kept for its users: `from infantino.trainer import CustomTrainer`.

A thin layer over the real classes: run_full() -> trainer.fit.fit(FitConfig), run_partial() ->
trainer.online_session.OnlineSession (OnlineHead.learn_one per sample, one MLflow run, batched registry writes),
inference_partial() -> trainer.predictor.Predictor (largest face -> extractor -> head).
"""

from __future__ import annotations

import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Iterable

import numpy as np

from infantino.runtime.contract.layout import HEAD_FILE

from .online_head import OnlineHead
from .online_session import OnlineSession, SessionConfig
from .predictor import Predictor, resolve_model_pair
from .tracking import configure_tracking, is_mlflow_uri

log = logging.getLogger(__name__)


class CustomTrainer:
    """Train the extractor and head on a dataset, learn online from labelled samples, predict one image.

    Settings given here are defaults for every call; each call can override them with keyword arguments
    (FitConfig fields for run_full, SessionConfig fields for run_partial).
    """

    def __init__(self, data: str | os.PathLike | None = None, out: str | os.PathLike = "runs/custom",
                 tracking_uri: str | None = None, experiment: str = "infantino", registry_prefix: str = "infantino",
                 tracking: bool = True, **fit_options):
        self.data = str(data) if data is not None else None
        self.out = Path(out)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.registry_prefix = registry_prefix
        self.tracking = tracking
        self.fit_options = fit_options
        self.last_fit = None
        self.last_session = None
        self._predictors: dict = {}

    def run_full(self, **overrides):
        """Train the extractor and the MLP head (trainer.fit); returns FitResult (files, metrics, run id)."""
        from .fit import FitConfig, fit  # heavy: trainer.fit imports torch

        names = {f.name for f in fields(FitConfig)}
        opts = {"out": str(self.out / "full"), "tracking_uri": self.tracking_uri, "experiment": self.experiment,
                "registry_prefix": self.registry_prefix, "tracking": self.tracking, **self.fit_options, **overrides}
        if opts.get("data", self.data) is None:
            raise ValueError("run_full needs data= (an image folder or a FER-2013 CSV)")
        opts["data"] = str(opts.get("data", self.data))
        unknown = set(opts) - names
        if unknown:
            raise ValueError(f"unknown fit settings: {', '.join(sorted(unknown))}")
        self.last_fit = fit(FitConfig(**opts))
        return self.last_fit

    def run_partial(self, stream: Iterable | str | os.PathLike | None = None, head=None, extractor=None,
                    **overrides):
        """Run the online learner over `stream` (a source path or an iterable of (embedding_or_image, label)).

        head/extractor: local paths or MLflow URIs; default: the last run_full's output, else the registry's
        champion. Returns SessionResult; the learned head is in `out/partial` and registered in MLflow.
        """
        stream = stream if stream is not None else self.data
        if stream is None:
            raise ValueError("run_partial needs a stream (a folder, .npz, .jsonl, '-' or an iterable of samples)")
        if head is None and self.last_fit is not None:
            head = str(self.last_fit.out_dir)
            extractor = extractor or str(self.last_fit.extractor_path)
        cfg = SessionConfig(head=str(head) if isinstance(head, (str, os.PathLike)) else None,
                            extractor=str(extractor) if extractor else None, out=str(self.out / "partial"),
                            tracking_uri=self.tracking_uri, experiment=self.experiment,
                            registry_prefix=self.registry_prefix, tracking=self.tracking)
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise ValueError(f"unknown partial settings: {k}")
            setattr(cfg, k, v)
        session = OnlineSession(cfg, head=head if isinstance(head, OnlineHead) else None)
        self.last_session = session.run(stream)
        return self.last_session

    def inference_partial(self, path=None, model_uri: str | os.PathLike | None = None,
                          extractor_uri: str | os.PathLike | None = None, image: np.ndarray | None = None):
        """(label, uncertainty) for one image file (or BGR array `image`).

        model_uri: the head (a folder with head.infh, or models:/<prefix>-head@champion / a version); default:
        the last run_partial's head, else the last run_full's, else the champion. uncertainty = {"entropy",
        "prediction_set", "probabilities", "head_version", "face_box", "coverage"}.
        """
        if (path is None) == (image is None):
            raise ValueError("give exactly one of path= (an image file) or image= (a BGR array)")
        if model_uri is None:
            if self.last_session is not None:
                model_uri = str(self.last_session.out_dir)
            elif self.last_fit is not None:
                model_uri = str(self.last_fit.out_dir)
        if extractor_uri is None and self.last_fit is not None:
            extractor_uri = str(self.last_fit.extractor_path)
        if self.tracking_uri or is_mlflow_uri(str(model_uri or "models:")):
            configure_tracking(self.tracking_uri)
        ext_path, head_dir = resolve_model_pair(model_uri, extractor_uri, self.registry_prefix)
        key = (str(ext_path), str(head_dir), os.path.getmtime(head_dir / HEAD_FILE))
        if key not in self._predictors:
            self._predictors = {key: Predictor(ext_path, head_dir)}
        pred = self._predictors[key].predict_image(path if path is not None else image)
        return pred.prediction.label, pred.uncertainty()
