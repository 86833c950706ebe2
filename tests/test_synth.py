"""The procedural face generator: determinism, balance, class content, domain shift, Haar detectability, I/O."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.errors import InfantinoError
from infantino.trainer import synth


def test_render_face_is_a_bgr_image_and_seeded():
    a = synth.render_face("surprise", np.random.default_rng(5), domain="infant", size=72, difficulty="medium")
    b = synth.render_face("surprise", np.random.default_rng(5), domain="infant", size=72, difficulty="medium")
    c = synth.render_face("surprise", np.random.default_rng(6), domain="infant", size=72, difficulty="medium")
    assert a.shape == (72, 72, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.std() > 10  # not a blank canvas


def test_synth_arrays_is_deterministic_and_balanced():
    imgs, labels = synth.synth_arrays(23, domain="adult", seed=3, size=32)
    imgs2, labels2 = synth.synth_arrays(23, domain="adult", seed=3, size=32)
    assert np.array_equal(labels, labels2) and all(np.array_equal(x, y) for x, y in zip(imgs, imgs2))
    counts = np.bincount(labels, minlength=7)
    assert counts.sum() == 23 and counts.max() - counts.min() <= 1
    assert labels.dtype == np.int64 and list(labels[:7]) != list(range(7))  # shuffled
    other, _ = synth.synth_arrays(23, domain="adult", seed=4, size=32)
    assert not np.array_equal(np.stack(imgs), np.stack(other))
    infant, _ = synth.synth_arrays(23, domain="infant", seed=3, size=32)
    assert not np.array_equal(np.stack(imgs), np.stack(infant))


def test_bad_arguments_are_clear_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown label 'smug'"):
        synth.render_face("smug", rng)
    with pytest.raises(ValueError, match="unknown domain 'martian'; valid: adult, infant"):
        synth.render_face("happy", rng, domain="martian")
    with pytest.raises(ValueError, match="unknown difficulty"):
        synth.synth_arrays(3, difficulty="insane")
    with pytest.raises(ValueError, match="size must be an integer >= 24"):
        synth.synth_arrays(3, size=10)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        synth.synth_arrays(0)


def _features(images):
    return np.stack([cv2.resize(cv2.cvtColor(im, cv2.COLOR_BGR2GRAY), (24, 24), interpolation=cv2.INTER_AREA).ravel()
                     for im in images]).astype(np.float32) / 255.0


def test_classes_carry_their_expression_and_domains_shift():
    """A linear classifier on raw pixels tells the 7 expressions apart (chance 0.14); it loses on infants."""
    from sklearn.linear_model import RidgeClassifier

    x_tr, y_tr = synth.synth_arrays(420, domain="adult", seed=0, size=40)
    x_te, y_te = synth.synth_arrays(140, domain="adult", seed=1, size=40)
    x_in, y_in = synth.synth_arrays(140, domain="infant", seed=1, size=40)
    clf = RidgeClassifier(alpha=10.0).fit(_features(x_tr), y_tr)
    adult = clf.score(_features(x_te), y_te)
    infant = clf.score(_features(x_in), y_in)
    print(f"pixel ridge classifier: adult {adult:.2f}, infant {infant:.2f}")
    assert adult > 0.4
    assert infant < adult - 0.1


def test_haar_cascade_finds_most_easy_faces():
    """The runtime crops faces with OpenCV's Haar frontal-face cascade: easy faces must be found."""
    casc = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    rates = {}
    for domain in synth.DOMAINS:
        imgs, _ = synth.synth_arrays(56, domain=domain, seed=11, size=80)
        found = [len(casc.detectMultiScale(cv2.cvtColor(im, cv2.COLOR_BGR2GRAY), 1.1, 3, minSize=(24, 24))) > 0
                 for im in imgs]
        rates[domain] = float(np.mean(found))
    print("Haar detection rate at easy, 80 px:", rates)
    assert rates["adult"] >= 0.85 and rates["infant"] >= 0.65


def test_write_dataset_is_an_image_folder_written_atomically(tmp_path):
    out = synth.write_dataset(tmp_path / "ds", 15, domain="infant", seed=2, size=40)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(CLASSES)
    files = sorted(out.rglob("*.png"))
    assert len(files) == 15 and all(p.parent.name in CLASSES for p in files)
    meta = json.loads((out / synth.META_FILE).read_text())
    assert meta["domain"] == "infant" and meta["seed"] == 2 and sum(meta["counts"].values()) == 15
    imgs, labels = synth.synth_arrays(15, domain="infant", seed=2, size=40)
    i = 4
    written = cv2.imread(str(out / CLASSES[labels[i]] / f"{CLASSES[labels[i]]}_{i:06d}.png"))
    assert np.array_equal(written, imgs[i])  # PNG is lossless: the files are synth_arrays' images
    from infantino.trainer.data import load_image_folder

    assert len(load_image_folder(out)) == 15
    with pytest.raises(InfantinoError, match="already exists and is not empty"):
        synth.write_dataset(out, 7, seed=0, size=32)
    synth.write_dataset(out, 7, seed=0, size=32, overwrite=True)
    assert len(list(out.rglob("*.png"))) == 7


def test_write_dataset_leaves_nothing_behind_on_failure(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = cv2.imwrite

    def failing(path, img, *a):
        calls["n"] += 1
        return False if calls["n"] == 5 else real(path, img, *a)

    monkeypatch.setattr(cv2, "imwrite", failing)
    with pytest.raises(InfantinoError, match="cannot write images"):
        synth.write_dataset(tmp_path / "ds", 10, size=32)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temp dir


def test_contact_sheet_tiles_images():
    imgs, labels = synth.synth_arrays(9, size=32)
    sheet = synth.contact_sheet(imgs, labels, cols=3)
    assert sheet.shape == (3 * (32 + 14), 3 * 32, 3)
