"""MLflow on the session's local SQLite store: run logging, registry, aliases, resolve_* round trips, no network."""

from __future__ import annotations

import socket
import uuid

import numpy as np
import pytest

from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.head import Head
from infantino.trainer import tracking
from infantino.trainer.extractor import extractor_id, load_extractor


@pytest.fixture
def trainer_no_network(monkeypatch):
    """Fail any connection or name look-up that leaves this machine (loopback and Unix sockets are fine)."""
    local = {"localhost", "127.0.0.1", "::1", "", None}
    real_connect, real_connect_ex, real_gai = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
    attempts = []

    def is_local(address):
        return isinstance(address, (str, bytes)) or address[0] in local or str(address[0]).startswith("127.")

    def connect(self, address):
        if not is_local(address):
            attempts.append(address)
            raise OSError(f"network access attempted: {address}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if not is_local(address):
            attempts.append(address)
            raise OSError(f"network access attempted: {address}")
        return real_connect_ex(self, address)

    def getaddrinfo(host, *a, **k):
        if host not in local and not str(host).startswith("127."):
            attempts.append(host)
            raise socket.gaierror(f"name look-up attempted: {host}")
        return real_gai(host, *a, **k)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


def test_uri_rules(tmp_path, monkeypatch, mlflow_uri):
    assert tracking.normalize_uri(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path / 'x.db'}"
    assert tracking.normalize_uri("http://mlflow.internal:5000") == "http://mlflow.internal:5000"
    with pytest.raises(InfantinoError, match="file store, which MLflow 3 refuses"):
        tracking.normalize_uri(str(tmp_path))
    with pytest.raises(InfantinoError, match="file store"):
        tracking.normalize_uri("file:///tmp/mlruns")
    try:
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert tracking.configure_tracking() == f"sqlite:///{tmp_path / 'mlflow.db'}"
        root = tracking._artifact_root_for(f"sqlite:///{tmp_path / 'mlflow.db'}", None)
        assert root == (tmp_path / "mlartifacts").as_uri()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
        assert tracking.configure_tracking() == f"sqlite:///{tmp_path / 'env.db'}"
        assert tracking.configure_tracking(mlflow_uri) == mlflow_uri  # explicit beats the environment
    finally:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking.configure_tracking(mlflow_uri)
    assert not (tmp_path / "mlflow.db").exists()  # configuring alone creates nothing


def test_fit_logs_registers_and_round_trips_by_alias(mlflow_uri, tmp_path, trainer_dataset, trainer_no_network):
    import mlflow
    from mlflow import MlflowClient

    from infantino.trainer.fit import FitConfig, fit
    from infantino.trainer.online_head import OnlineHead

    res = fit(FitConfig(data=str(trainer_dataset), out=str(tmp_path / "run"), backbone="test_efficientnet",
                        img_size=32, epochs=2, batch_size=32, head_epochs=2, progress=False,
                        tracking_uri=mlflow_uri))
    assert res.run_id and res.extractor_version and res.head_version
    client = MlflowClient(mlflow_uri)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["backbone"] == "test_efficientnet" and run.data.params["img_size"] == "32"
    assert {"val_f1", "val_acc", "val_loss", "train_loss", "head_acc", "head_f1"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(res.run_id, "val_loss")] == [1, 2]
    assert {"confusion.png", "metrics.json"} <= {a.path for a in client.list_artifacts(res.run_id)}
    ev = client.get_model_version(tracking.EXTRACTOR_MODEL, res.extractor_version)
    hv = client.get_model_version(tracking.HEAD_MODEL, res.head_version)
    assert ev.tags["extractor_id"] == res.extractor_id and ev.run_id == res.run_id
    assert hv.tags["extractor_version"] == res.extractor_version and hv.tags["extractor_id"] == res.extractor_id
    # versions carry their checkpoint's metrics (the best epoch's), which promote prefers to the run's last value
    assert float(ev.tags["val_f1"]) == pytest.approx(res.metrics["val_f1"])
    assert float(hv.tags["head_acc"]) == pytest.approx(res.metrics["head_acc"])
    assert res.metrics["val_f1"] == max(h["val_f1"] for h in res.history)

    # the real-face guard measured the head on held-out real faces and logged it; a net trained on drawn faces
    # fails it, so promote refuses it unless told otherwise (and the first version was not made champion)
    assert {"realface_agreement", "realface_agreement_confident", "realface_baseline"} <= set(run.data.metrics)
    assert float(hv.tags["realface_agreement"]) == pytest.approx(res.metrics["realface_agreement"])
    assert res.metrics["realface_agreement"] < res.metrics["realface_baseline"] - 0.03
    from infantino.trainer.realface_guard import RealFaceRegression

    with pytest.raises(RealFaceRegression, match="real-face guard.*--allow-real-face-regression"):
        tracking.promote(version=res.extractor_version)
    p = tracking.promote(version=res.extractor_version, allow_real_face_regression=True)
    assert (p.extractor_version, p.head_version) == (res.extractor_version, res.head_version)
    assert p.value == pytest.approx(res.metrics["val_f1"])
    ckpt = tracking.resolve_extractor("models:/infantino-extractor@champion")
    net, _ = load_extractor(ckpt)
    assert extractor_id(net) == res.extractor_id
    head_dir = tracking.resolve_head("models:/infantino-head@champion")
    head = Head.from_bytes((head_dir / "head.infh").read_bytes())
    assert head.extractor_id == res.extractor_id
    assert OnlineHead.load(head_dir / "head_state.npz").to_head().sha256 == head.sha256
    assert tracking.resolve_extractor("models:/infantino-extractor@champion") == ckpt  # cached per version
    info = tracking.model_version_info(tracking.HEAD_MODEL)
    assert info["version"] == res.head_version and info["tags"]["extractor_version"] == res.extractor_version
    # the MLflow flavours load too (PyTorch extractor, scikit-learn head)
    x = np.random.default_rng(0).normal(size=(3, 64))
    mlp = mlflow.sklearn.load_model(f"models:/infantino-head/{res.head_version}")
    assert np.allclose(mlp.predict_proba(x), head.forward(x), atol=1e-5)
    import torch

    flavour = mlflow.pytorch.load_model(f"models:/infantino-extractor/{res.extractor_version}", map_location="cpu")
    inp = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(flavour.eval()(inp), net(inp), atol=1e-6)
    # local paths resolve without MLflow
    assert tracking.resolve_extractor(tmp_path / "run") == tmp_path / "run" / "extractor.pt"
    assert tracking.resolve_head(tmp_path / "run" / "head.infh") == tmp_path / "run"
    assert trainer_no_network == []


GUARD_OK = {"realface_agreement": 0.97, "realface_agreement_confident": 1.0, "realface_baseline": 0.98}


def _register_copy(run, mlflow_uri, prefix, metrics, guard=GUARD_OK):
    """Log trainer_run's files as a new run with the given metrics (+ real-face figures) and register them."""
    from infantino.trainer.online_head import OnlineHead

    net, _ = load_extractor(run.extractor_path)
    online = OnlineHead.load(run.head_state_path)
    t = tracking.FitTracker(mlflow_uri, experiment="trainer-tests")
    t.log_metrics(metrics, step=1)
    reg = t.log_models(run.extractor_path, net, run.out_dir, online.mlp, extractor_id=run.extractor_id,
                       head_version=online.version, head_sha256=online.to_head().sha256, prefix=prefix,
                       version_metrics={**metrics, **guard})
    t.finish()
    return reg


def test_promote_picks_the_best_version_by_metric(mlflow_uri, trainer_run):
    from mlflow import MlflowClient

    prefix = f"trainer-test-{uuid.uuid4().hex[:8]}"
    ext_name, head_name = tracking.model_names(prefix)
    regs = [_register_copy(trainer_run, mlflow_uri, prefix, m) for m in
            ({"val_f1": 0.3, "val_loss": 1.0}, {"val_f1": 0.7, "val_loss": 0.8}, {"val_f1": 0.5, "val_loss": 0.6})]
    assert [r["extractor_version"] for r in regs] == ["1", "2", "3"]
    client = MlflowClient(mlflow_uri)
    champ = lambda name: str(client.get_model_version_by_alias(name, "champion").version)  # noqa: E731
    assert champ(ext_name) == "1" and champ(head_name) == "1"  # the first registration became champion

    p = tracking.promote("val_f1", prefix=prefix)
    assert (p.extractor_version, p.head_version, p.value) == ("2", "2", 0.7)
    assert champ(ext_name) == "2" and champ(head_name) == "2"
    assert tracking.promote("val_loss", prefix=prefix).extractor_version == "3"  # auto: lower is better
    assert tracking.promote("val_f1", mode="min", prefix=prefix).extractor_version == "1"
    with pytest.raises(InfantinoError, match="no trainer-test-.*-extractor version has metric 'auc'.*val_f1"):
        tracking.promote("auc", prefix=prefix)
    with pytest.raises(InfantinoError, match="has no version 9"):
        tracking.promote(version=9, prefix=prefix)
    # an extractor version without a head is refused, and the aliases stay where they were
    mv = client.create_model_version(ext_name, regs[0]["extractor_model_uri"])
    with pytest.raises(InfantinoError, match=f"v{mv.version} has no .*head version"):
        tracking.promote(version=mv.version, prefix=prefix)
    assert champ(ext_name) == "1"

    from infantino.trainer.cli import main

    assert main(["promote", "--tracking-uri", mlflow_uri, "--registry-prefix", prefix, "--metric", "val_f1"]) == 0
    assert champ(ext_name) == "2" and champ(head_name) == "2"


def test_promote_skips_versions_the_real_face_guard_refuses(mlflow_uri, trainer_run):
    from mlflow import MlflowClient

    from infantino.trainer.realface_guard import RealFaceRegression

    prefix = f"guard-test-{uuid.uuid4().hex[:8]}"
    ext_name, _ = tracking.model_names(prefix)
    client = MlflowClient(mlflow_uri)
    champ = lambda: str(client.get_model_version_by_alias(ext_name, "champion").version)  # noqa: E731
    # v1 passes; v2 is better by val_f1 but lost a confident face; v3 is 4 points below the pretrained model
    _register_copy(trainer_run, mlflow_uri, prefix, {"val_f1": 0.5})
    _register_copy(trainer_run, mlflow_uri, prefix, {"val_f1": 0.9}, {**GUARD_OK, "realface_agreement_confident": 0.96})
    _register_copy(trainer_run, mlflow_uri, prefix, {"val_f1": 0.8}, {**GUARD_OK, "realface_agreement": 0.94})
    assert champ() == "1"
    assert tracking.promote("val_f1", prefix=prefix).extractor_version == "1"
    for v, why in (("2", "confident agreement 0.960 < 1.000"), ("3", "more than 3 points below")):
        with pytest.raises(RealFaceRegression, match=why):
            tracking.promote(version=v, prefix=prefix)
        assert champ() == "1"
    assert tracking.promote("val_f1", prefix=prefix, allow_real_face_regression=True).extractor_version == "2"
    # a first registration that fails the guard is not made champion automatically
    prefix2 = f"guard-test-{uuid.uuid4().hex[:8]}"
    _register_copy(trainer_run, mlflow_uri, prefix2, {"val_f1": 0.5}, {**GUARD_OK, "realface_agreement": 0.5})
    with pytest.raises(Exception):
        client.get_model_version_by_alias(tracking.model_names(prefix2)[0], "champion")
    with pytest.raises(RealFaceRegression, match="every .* fails the real-face guard"):
        tracking.promote("val_f1", prefix=prefix2)


def test_resolve_errors(tmp_path, mlflow_uri):
    tracking.configure_tracking(mlflow_uri)
    with pytest.raises(FileNotFoundError, match="extractor not found"):
        tracking.resolve_extractor(tmp_path / "missing.pt")
    with pytest.raises(InfantinoError, match="no extractor.pt in"):
        tracking.resolve_extractor(tmp_path)
    with pytest.raises(InfantinoError, match="no head_state.npz"):
        tracking.resolve_head(tmp_path)
    with pytest.raises(InfantinoError, match="cannot fetch models:/no-such-model@champion"):
        tracking.resolve_extractor("models:/no-such-model@champion")
