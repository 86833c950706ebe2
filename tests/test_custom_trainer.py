"""The seed API (CustomTrainer), online sessions with MLflow, and the `partial` / `predict` commands.

Real extractor and head from the trainer_run fixture (a short real training run), real MLflow on SQLite.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.head import Head


@pytest.fixture(scope="module")
def online_infant_folder(tmp_path_factory):
    """70 synthetic infant faces (64 px, easy): the domain the adult-trained run has not seen."""
    from infantino.trainer.synth import write_dataset

    return write_dataset(tmp_path_factory.mktemp("online") / "infant", 70, domain="infant", seed=5, size=64)


@pytest.fixture(scope="module")
def online_infant_npz(tmp_path_factory, trainer_run, online_infant_folder):
    """The infant faces embedded by the trained extractor, as a .npz stream (embeddings, labels)."""
    import torch

    from infantino.runtime.contract.preprocess import preprocess
    from infantino.trainer.data import load_dataset
    from infantino.trainer.extractor import embed_batch, load_extractor

    model, cfg = load_extractor(trainer_run.extractor_path)
    images = load_dataset(online_infant_folder)
    x = torch.from_numpy(preprocess([images.image(i) for i in range(len(images))], cfg.spec, "NCHW"))
    path = tmp_path_factory.mktemp("online") / "stream.npz"
    np.savez(path, embeddings=embed_batch(model, x).numpy(), labels=np.array([CLASSES[k] for k in images.labels]))
    return path


def _cli(capsys, *argv):
    from infantino.trainer.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_run_partial_logs_a_curve_and_registers_batched(trainer_run, trainer_heldout, online_infant_folder,
                                                        mlflow_uri, tmp_path, real_faces):
    import cv2
    from mlflow import MlflowClient

    from infantino.trainer import CustomTrainer

    ct = CustomTrainer(out=tmp_path, tracking_uri=mlflow_uri, experiment="online-tests", registry_prefix="onl")
    res = ct.run_partial(str(online_infant_folder), head=trainer_run.out_dir, extractor=trainer_run.extractor_path,
                         eval_data=str(trainer_heldout), eval_every=20, register_every=30, progress=False)
    start = Head.from_bytes((trainer_run.out_dir / "head.infh").read_bytes())
    assert res.samples == 70 and sum(res.routes.values()) == 70 and res.routes["rejected"] == 0
    assert res.start_version == start.version and res.end_version == start.version + 70
    assert res.eval_before is not None and res.eval_after is not None and res.prequential_accuracy is not None
    # files: the learned head, its state, the session summary
    learned = Head.from_bytes((tmp_path / "partial" / "head.infh").read_bytes())
    assert learned.version == res.end_version and learned.extractor_id == start.extractor_id
    assert learned.conformal_qhat is not None and learned.sha256 != start.sha256
    assert json.loads((tmp_path / "partial" / "session.json").read_text())["samples"] == 70
    # MLflow: a step-indexed curve and batched registrations (every 30 updates + the end: 3, not 70)
    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    steps = [m.step for m in client.get_metric_history(res.run_id, "prequential_acc")]
    assert steps[:4] == [20, 40, 60, 70]
    assert [m.step for m in client.get_metric_history(res.run_id, "eval_acc")] == [20, 40, 60, 70]
    assert len(res.registered_versions) == 3
    mv = client.get_model_version("onl-head", res.registered_versions[-1])
    assert mv.tags["head_version"] == str(res.end_version) and mv.tags["extractor_id"] == start.extractor_id
    assert mv.tags["head_sha256"] == learned.sha256 and mv.run_id == res.run_id
    assert client.get_run(res.run_id).info.status == "FINISHED"

    # the seed API's inference on the session's head: local folder and registry URI agree
    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), real_faces["astronaut"])
    label, unc = ct.inference_partial(path=str(photo))  # default: the last session's head
    assert label in CLASSES and unc["head_version"] == res.end_version
    assert unc["face_box"] is not None  # Haar found the astronaut's face
    assert unc["entropy"] >= 0 and unc["prediction_set"] and set(unc["prediction_set"]) <= set(CLASSES)
    assert label in unc["prediction_set"] and abs(sum(unc["probabilities"].values()) - 1) < 1e-6
    assert unc["coverage"] == 0.9
    label2, unc2 = ct.inference_partial(path=str(photo), model_uri=f"models:/onl-head/{res.registered_versions[-1]}",
                                        extractor_uri=str(trainer_run.extractor_path))
    assert (label2, unc2["probabilities"]) == (label, unc["probabilities"])


def test_inference_partial_without_a_face_uses_the_whole_image(trainer_run, online_infant_folder):
    from infantino.trainer import CustomTrainer

    ct = CustomTrainer(tracking=False)
    img = next(online_infant_folder.glob("*/*.png"))
    label, unc = ct.inference_partial(path=str(img), model_uri=str(trainer_run.out_dir))
    assert label in CLASSES and unc["face_box"] is None  # a 64 px cartoon: no Haar face
    with pytest.raises(ValueError, match="exactly one"):
        ct.inference_partial(model_uri=str(trainer_run.out_dir))


def test_run_full_is_a_thin_layer_over_fit(trainer_dataset, tmp_path):
    from infantino.trainer import CustomTrainer

    ct = CustomTrainer(data=trainer_dataset, out=tmp_path, tracking=False, backbone="test_efficientnet",
                       img_size=64, epochs=1, max_steps=3, patience=0, head_epochs=2, progress=False)
    r = ct.run_full()
    assert r.extractor_path.is_file() and r.head_state_path.is_file() and r.head_path.is_file()
    with pytest.raises(ValueError, match="unknown fit settings: bogus"):
        ct.run_full(bogus=1)
    # run_partial defaults to the last run_full's head and extractor
    X = np.random.default_rng(0).normal(size=(12, 64)).astype(np.float32)
    res = ct.run_partial([(x, CLASSES[i % 7]) for i, x in enumerate(X)], progress=False)
    assert res.samples == 12 and res.end_version == Head.from_bytes(r.head_path.read_bytes()).version + 12


def test_partial_cli_npz_and_jsonl(trainer_run, online_infant_npz, online_infant_folder, tmp_path, capsys):
    rc, out, err = _cli(capsys, "partial", "--data", online_infant_npz, "--head", trainer_run.out_dir,
                        "--out", tmp_path / "a", "--no-tracking", "--replay-mix", 8, "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["samples"] == 70 and r["end_version"] > r["start_version"]
    assert (tmp_path / "a" / "head_state.npz").is_file()

    z = np.load(online_infant_npz)
    img = next(online_infant_folder.glob("happy/*.png"))
    lines = [json.dumps({"embedding": z["embeddings"][0].tolist(), "label": str(z["labels"][0])}),
             json.dumps({"embedding": z["embeddings"][1].tolist(), "labels": ["sad", "sad", "fear"]}),
             json.dumps({"embedding": z["embeddings"][2].tolist(), "label": "joy"}),  # bad: skipped, reported
             json.dumps({"image": str(img), "label": "happy"}),                       # embedded by the extractor
             json.dumps({"embedding": [1.0, 2.0], "label": "sad"})]                  # bad size
    stream = tmp_path / "s.jsonl"
    stream.write_text("\n".join(lines) + "\n")
    rc, out, err = _cli(capsys, "partial", "--data", stream, "--head", trainer_run.out_dir,
                        "--extractor", trainer_run.extractor_path, "--out", tmp_path / "b", "--no-tracking", "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["samples"] == 5 and r["routes"]["rejected"] == 2
    assert r["routes"]["trained"] + r["routes"]["calibration"] == 3
    rc, out, err = _cli(capsys, "partial", "--data", stream, "--head", trainer_run.out_dir, "--strict",
                        "--extractor", trainer_run.extractor_path, "--out", tmp_path / "c", "--no-tracking")
    assert rc == 2 and "unknown label 'joy'" in err and not (tmp_path / "c" / "head.infh").exists()


def test_partial_cli_migrates_a_legacy_head_only_with_the_flag(trainer_run, online_infant_npz, tmp_path, capsys,
                                                               legacy_state_writer):
    """A head folder whose state is a legacy head_state.pkl: refused with the reason and the flag to use; with
    --migrate-legacy-state the session runs and head_state.npz is written beside the pickle."""
    import shutil

    from infantino.trainer.online_head import OnlineHead

    head_dir = tmp_path / "legacy"
    head_dir.mkdir()
    for name in ("head.infh", "extractor.pt"):
        shutil.copy(trainer_run.out_dir / name, head_dir / name)
    legacy_state_writer(OnlineHead.load(trainer_run.out_dir), head_dir / "head_state.pkl")
    args = ("partial", "--data", online_infant_npz, "--head", head_dir, "--no-tracking", "--out", tmp_path / "o",
            "--json")
    rc, _, err = _cli(capsys, *args)
    assert rc == 2 and "legacy online head state" in err and "--migrate-legacy-state" in err
    assert not (head_dir / "head_state.npz").exists()
    rc, out, err = _cli(capsys, *args, "--migrate-legacy-state")
    assert rc == 0, err
    assert (head_dir / "head_state.npz").is_file() and json.loads(out)["samples"] == 70


def test_partial_cli_bad_inputs(trainer_run, tmp_path, capsys):
    rc, _, err = _cli(capsys, "partial", "--data", tmp_path / "missing.npz", "--head", trainer_run.out_dir,
                      "--no-tracking", "--out", tmp_path / "o")
    assert rc == 2 and "stream not found" in err
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.zeros((3, 64)))
    rc, _, err = _cli(capsys, "partial", "--data", bad, "--head", trainer_run.out_dir, "--no-tracking",
                      "--out", tmp_path / "o")
    assert rc == 2 and "'embeddings' and 'labels'" in err
    rc, _, err = _cli(capsys, "partial", "--data", bad, "--head", tmp_path / "nohead", "--no-tracking")
    assert rc == 2 and "head not found" in err
    rc, _, err = _cli(capsys, "partial", "--data", bad, "--head", trainer_run.out_dir, "--no-tracking",
                      "--coverage", 1.5)
    assert rc == 2 and "coverage" in err


def test_predict_cli(trainer_run, real_faces, tmp_path, capsys):
    import cv2

    photo = tmp_path / "grace.jpg"
    cv2.imwrite(str(photo), real_faces["grace_hopper"])
    rc, out, err = _cli(capsys, "predict", photo, "--head", trainer_run.out_dir, "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["label"] in CLASSES and r["face_box"] is not None and r["prediction_set"]
    rc, out, _ = _cli(capsys, "predict", photo, "--head", trainer_run.out_dir)
    assert rc == 0 and "entropy" in out and "set at 90%" in out
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    rc, _, err = _cli(capsys, "predict", junk, "--head", trainer_run.out_dir)
    assert rc == 2 and "cannot decode" in err


def test_predict_refuses_a_head_of_another_extractor(trainer_run, tmp_path):
    import torch

    from infantino.runtime.contract.errors import InfantinoError
    from infantino.trainer.extractor import ExtractorConfig, build_extractor, save_checkpoint
    from infantino.trainer.predictor import Predictor

    torch.manual_seed(1)
    cfg = ExtractorConfig(backbone="test_efficientnet", img_size=64)
    save_checkpoint(tmp_path / "other.pt", build_extractor(cfg), cfg)
    with pytest.raises(InfantinoError, match="trained on extractor"):
        Predictor(tmp_path / "other.pt", trainer_run.out_dir)
