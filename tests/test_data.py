"""Data loaders (image folder, FER-2013 CSV), splits, augmentation and metrics, on real files."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.errors import InfantinoError
from infantino.trainer import data as D
from infantino.trainer.augment import AugmentConfig, augment
from infantino.trainer.metrics import confusion_matrix, plot_confusion, report


def _img(seed: int, shape=(20, 24, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _folder(root, layout: dict[str, int], ext=".png"):
    for name, n in layout.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            assert cv2.imwrite(str(root / name / f"{i}{ext}"), _img(hash((name, i)) % 1000))
    return root


# ---- image folder ----------------------------------------------------------------------------------------

def test_folder_loads_a_subset_of_classes_with_aliases_and_case(tmp_path):
    _folder(tmp_path, {"Happy": 3, "sad": 2, "surprised": 2})
    (tmp_path / "README.txt").write_text("not a class")  # files at the top are ignored
    (tmp_path / "sad" / "notes.txt").write_text("ignored")
    s = D.load_image_folder(tmp_path)
    assert len(s) == 7 and s.images is not None and not s.skipped
    counts = s.class_counts()
    assert counts["happy"] == 3 and counts["sad"] == 2 and counts["surprise"] == 2 and counts["angry"] == 0
    assert all(im.dtype == np.uint8 and im.shape == (20, 24, 3) for im in s.images)
    i = s.names.index(str(tmp_path / "Happy" / "0.png"))
    assert s.labels[i] == CLASSES.index("happy")
    assert np.array_equal(s.image(i), cv2.imread(str(tmp_path / "Happy" / "0.png")))


def test_folder_lazy_mode_reads_the_same_images(tmp_path):
    _folder(tmp_path, {"angry": 2, "neutral": 2})
    eager, lazy = D.load_image_folder(tmp_path), D.load_image_folder(tmp_path, in_memory=False)
    assert lazy.images is None and lazy.paths is not None
    assert all(np.array_equal(eager.image(i), lazy.image(i)) for i in range(len(eager)))
    sub = lazy.subset([3, 0])
    assert sub.names == [lazy.names[3], lazy.names[0]] and list(sub.labels) == [lazy.labels[3], lazy.labels[0]]


def test_corrupt_and_unreadable_images_are_skipped_named_and_counted(tmp_path, caplog):
    _folder(tmp_path, {"happy": 3, "fear": 2})
    (tmp_path / "happy" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (tmp_path / "fear" / "empty.png").write_bytes(b"")
    good = (tmp_path / "fear" / "0.png").read_bytes()
    (tmp_path / "fear" / "truncated.png").write_bytes(good[: len(good) // 3])
    with caplog.at_level(logging.WARNING, logger="infantino"):
        s = D.load_image_folder(tmp_path)
    assert len(s) == 5 and len(s.skipped) == 3
    assert {p.split("/")[-1] for p in s.skipped} == {"broken.jpg", "empty.png", "truncated.png"}
    text = caplog.text
    for name in ("broken.jpg", "empty.png", "truncated.png"):
        assert name in text
    assert "skipped 3 unreadable image(s) of 8" in text
    assert "skipped 3 unreadable" in s.summary()


def test_gray_rgba_and_16bit_images_become_uint8(tmp_path):
    (tmp_path / "neutral").mkdir()
    gray = _img(1, (10, 12))
    cv2.imwrite(str(tmp_path / "neutral" / "g.png"), gray)
    cv2.imwrite(str(tmp_path / "neutral" / "a.png"), _img(2, (10, 12, 4)))
    cv2.imwrite(str(tmp_path / "neutral" / "w.png"), (_img(3, (10, 12, 3)).astype(np.uint16) * 257))
    s = D.load_image_folder(tmp_path)
    shapes = {n.split("/")[-1]: s.image(i).shape for i, n in enumerate(s.names)}
    assert shapes == {"g.png": (10, 12), "a.png": (10, 12, 3), "w.png": (10, 12, 3)}
    assert all(s.image(i).dtype == np.uint8 for i in range(len(s)))
    assert np.array_equal(s.image(s.names.index(str(tmp_path / "neutral" / "g.png"))), gray)


def test_unknown_class_folder_is_an_error_with_a_suggestion(tmp_path):
    _folder(tmp_path, {"happy": 1, "hapy": 1})
    with pytest.raises(InfantinoError, match=r"unknown class folder 'hapy'.*Did you mean 'happy'"):
        D.load_image_folder(tmp_path)


def test_split_folder_gets_a_hint(tmp_path):
    _folder(tmp_path / "train", {"happy": 1})
    with pytest.raises(InfantinoError, match="split folder: point --data at train/"):
        D.load_image_folder(tmp_path)


def test_empty_class_and_empty_dataset_are_errors(tmp_path):
    _folder(tmp_path / "a", {"happy": 2})
    (tmp_path / "a" / "sad").mkdir()
    with pytest.raises(InfantinoError, match="empty class: folder .*sad holds no images"):
        D.load_image_folder(tmp_path / "a")
    _folder(tmp_path / "b", {"happy": 2})
    (tmp_path / "b" / "sad").mkdir()
    (tmp_path / "b" / "sad" / "x.png").write_bytes(b"junk")
    with pytest.raises(InfantinoError, match="every image of 'sad' .* is unreadable"):
        D.load_image_folder(tmp_path / "b")
    (tmp_path / "c").mkdir()
    with pytest.raises(InfantinoError, match="empty data set"):
        D.load_image_folder(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        D.load_image_folder(tmp_path / "missing")


# ---- FER-2013 CSV ------------------------------------------------------------------------------------------

def _px(seed: int, n: int = 48 * 48) -> str:
    return " ".join(str(v) for v in np.random.default_rng(seed).integers(0, 256, n))


def test_fer_csv_loads_and_skips_malformed_rows(tmp_path, caplog):
    p = tmp_path / "fer2013.csv"
    rows = ["emotion,pixels,Usage",
            f"3,{_px(1)},Training",          # row 2 ok (happy)
            f"0,{_px(2)},PublicTest",        # row 3 ok (angry)
            f"9,{_px(3)},Training",          # row 4 bad class
            f"4,{_px(4, 100)},Training",     # row 5 wrong pixel count
            f"5,{_px(5)[:-3]} x1,Training",  # row 6 not a number
            "",                              # blank line ignored
            f"6,{_px(6)},PrivateTest"]       # row 8 ok (neutral)
    p.write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="infantino"):
        s = D.load_fer2013_csv(p)
    assert len(s) == 3 and [CLASSES[k] for k in s.labels] == ["happy", "angry", "neutral"]
    assert list(s.splits) == ["Training", "PublicTest", "PrivateTest"]
    assert all(im.shape == (48, 48) and im.dtype == np.uint8 for im in s.images)
    assert np.array_equal(s.images[0].ravel(), np.array(_px(1).split(), dtype=np.uint8))
    assert s.skipped == [f"{p} row 4", f"{p} row 5", f"{p} row 6"]
    assert "row 4" in caplog.text and "outside 0..6" in caplog.text and "100 pixels" in caplog.text
    train = D.load_fer2013_csv(p, usage="Training")
    assert len(train) == 1 and train.labels[0] == CLASSES.index("happy")
    assert len(D.load_dataset(p)) == 3  # dispatch by suffix


def test_fer_csv_without_usage_and_bad_files(tmp_path):
    p = tmp_path / "plain.csv"
    p.write_text(f"emotion,pixels\n1,{_px(1)}\n")
    s = D.load_fer2013_csv(p)
    assert len(s) == 1 and s.splits is None and s.labels[0] == CLASSES.index("disgust")
    bad = tmp_path / "bad.csv"
    bad.write_text("label,image\n1,2\n")
    with pytest.raises(InfantinoError, match="expected FER-2013 columns emotion,pixels"):
        D.load_fer2013_csv(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InfantinoError, match="empty data set"):
        D.load_fer2013_csv(empty)
    junk = tmp_path / "junk.csv"
    junk.write_text("emotion,pixels\n1,2 3\n")
    with pytest.raises(InfantinoError, match="no usable rows"):
        D.load_fer2013_csv(junk)
    with pytest.raises(FileNotFoundError):
        D.load_fer2013_csv(tmp_path / "missing.csv")
    other = tmp_path / "x.txt"
    other.write_text("hi")
    with pytest.raises(InfantinoError, match="expected an image folder"):
        D.load_dataset(other)


# ---- split, augmentation, metrics ---------------------------------------------------------------------------

def test_stratified_split_is_per_class_disjoint_and_seeded():
    labels = np.array([0] * 20 + [3] * 10 + [5] * 1)
    tr, va = D.stratified_split(labels, 0.2, seed=4)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == len(labels)
    assert np.bincount(labels[va], minlength=7).tolist() == [4, 0, 0, 2, 0, 0, 0]  # the single class 5 trains
    tr2, va2 = D.stratified_split(labels, 0.2, seed=4)
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, D.stratified_split(labels, 0.2, seed=5)[1])
    with pytest.raises(InfantinoError, match="too few images"):
        D.stratified_split(np.array([0, 1, 2]), 0.2)
    with pytest.raises(ValueError, match="within"):
        D.stratified_split(labels, 1.5)


@pytest.mark.parametrize("shape", [(32, 40, 3), (32, 40)])
def test_augment_keeps_shape_and_is_seeded(shape):
    img = _img(7, shape)
    a = augment(img, np.random.default_rng(1))
    b = augment(img, np.random.default_rng(1))
    assert a.shape == img.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, img)
    assert np.array_equal(augment(img, np.random.default_rng(1), AugmentConfig.none()), img)
    flip_only = AugmentConfig(**{**AugmentConfig.none().__dict__, "flip": 1.0})
    assert np.array_equal(augment(img, np.random.default_rng(0), flip_only), img[:, ::-1])


def test_metrics_match_scikit_learn(tmp_path):
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 300)  # class 6 never occurs
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 7, 300))
    cm = confusion_matrix(y, p)
    r = report(cm)
    assert cm.sum() == 300 and cm[2, 2] == np.sum((y == 2) & (p == 2))
    assert r["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert r["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    per = f1_score(y, p, average=None, labels=range(7), zero_division=0)
    assert [r["per_class"][c]["f1"] for c in CLASSES] == pytest.approx(per.tolist())
    png = plot_confusion(cm, tmp_path / "cm.png")
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 200
