"""`infantino-train synth|fit|promote`: exit codes and messages, and one real end-to-end CLI fit."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from infantino.trainer.cli import main


def _run(capsys, *argv):
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse errors and --help
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_help_lists_the_subcommands():
    proc = subprocess.run([sys.executable, "-m", "infantino.trainer.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for cmd in ("synth", "fit", "promote"):
        assert cmd in proc.stdout


@pytest.mark.parametrize("sub", ["synth", "fit", "promote"])
def test_subcommand_help(capsys, sub):
    rc, out, _ = _run(capsys, sub, "--help")
    assert rc == 0 and "usage: infantino-train " + sub in out


def test_synth_writes_and_refuses_bad_arguments(capsys, tmp_path):
    rc, out, _ = _run(capsys, "synth", "--out", str(tmp_path / "ds"), "--n", "14", "--domain", "infant",
                      "--size", "32", "--seed", "3")
    assert rc == 0 and "wrote 14 infant faces" in out
    assert len(list((tmp_path / "ds").rglob("*.png"))) == 14
    rc, _, err = _run(capsys, "synth", "--out", str(tmp_path / "ds"), "--n", "7")
    assert rc == 2 and "already exists and is not empty" in err
    rc, _, err = _run(capsys, "synth", "--out", str(tmp_path / "x"), "--n", "0")
    assert rc == 2 and "n must be a positive integer" in err
    rc, _, err = _run(capsys, "synth", "--out", str(tmp_path / "x"), "--n", "5", "--domain", "martian")
    assert rc == 2 and "invalid choice: 'martian'" in err
    rc, _, err = _run(capsys, "synth", "--out", str(tmp_path / "x"), "--n", "five")
    assert rc == 2 and "invalid int value" in err
    rc, _, err = _run(capsys, "synth", "--n", "5")
    assert rc == 2 and "--out" in err


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/missing"], "--data not found"),
    (["--data", "{data}", "--epochs", "0"], "--epochs must be >= 1"),
    (["--data", "{data}", "--img-size", "8"], "--img-size must be >= 16"),
    (["--data", "{data}", "--lr", "0"], "--lr must be > 0"),
    (["--data", "{data}", "--backbone", "resnet5O", "--no-tracking"], "unknown backbone 'resnet5O'"),
    (["--data", "{data}", "--resume", "--out", "{tmp}/fresh", "--no-tracking"], "no last.pt"),
    (["--data", "{tmp}/bad.csv", "--no-tracking"], "expected FER-2013 columns"),
    (["--data", "{data}", "--pretrained", "imagenet", "--backbone", "test_efficientnet", "--no-tracking"],
     "pretrained weights 'imagenet' are not available"),
    (["--data", "{data}", "--tracking-uri", "{tmp}", "--max-steps", "1"], "file store"),
])
def test_fit_bad_arguments_exit_2_with_a_message(capsys, tmp_path, trainer_dataset, args, message):
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    argv = [a.format(tmp=tmp_path, data=trainer_dataset) for a in args]
    rc, _, err = _run(capsys, "fit", "--out", str(tmp_path / "out"), "--no-progress", *argv)
    assert rc == 2, err
    assert err.startswith("infantino-train: error:") and message in err, err
    assert "Traceback" not in err


def test_fit_argparse_errors(capsys, tmp_path):
    rc, _, err = _run(capsys, "fit")
    assert rc == 2 and "--data" in err
    rc, _, err = _run(capsys, "fit", "--data", str(tmp_path), "--epochs", "many")
    assert rc == 2 and "invalid int value" in err
    rc, _, err = _run(capsys, "fit", "--data", str(tmp_path), "--monitor", "auc")
    assert rc == 2 and "invalid choice" in err


def test_cli_fit_end_to_end_without_tracking(capsys, tmp_path, trainer_dataset):
    out = tmp_path / "run"
    rc, stdout, err = _run(capsys, "fit", "--data", str(trainer_dataset), "--out", str(out), "--backbone",
                           "test_efficientnet", "--img-size", "32", "--epochs", "1", "--max-steps", "2",
                           "--head-epochs", "2", "--no-tracking", "--no-progress", "--test-data", str(trainer_dataset),
                           "--no-real-face-guard")
    assert rc == 0, err
    assert "trained 1 epoch(s), 2 steps" in stdout and "test_acc" in stdout
    assert (out / "extractor.pt").is_file() and (out / "head.infh").is_file()
    assert "MLflow" not in stdout
    rc, _, err = _run(capsys, "fit", "--data", str(trainer_dataset), "--out", str(out), "--no-tracking")
    assert rc == 2 and "already holds a training run" in err


def test_promote_without_versions_is_a_clear_error(capsys, mlflow_uri):
    prefix = f"empty-{uuid.uuid4().hex[:6]}"
    rc, _, err = _run(capsys, "promote", "--tracking-uri", mlflow_uri, "--registry-prefix", prefix)
    assert rc == 2 and f"no registered versions of {prefix}-extractor" in err
    rc, _, err = _run(capsys, "promote", "--tracking-uri", mlflow_uri, "--registry-prefix", "bad prefix!")
    assert rc == 2 and "registry prefix must be" in err
