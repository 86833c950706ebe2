"""Property-based fuzzing of every parser that takes outside input: updates (unsigned and signed), head files,
samples, commands, manifests, device and trainer configs, image bytes. Each must either accept or raise its own
clear error type: never another exception, never a crash, never unbounded memory, never a changed head.

`make test` runs 150 inputs per parser; `make fuzz` runs 10,000 per parser (INFANTINO_FUZZ_EXAMPLES) and writes
what each parser did with them, the run time and the peak RSS to $INFANTINO_FUZZ_REPORT
(docs/results/fuzz.json).
"""

from __future__ import annotations

import copy
import json
import os
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures_device import DEVICE_EXT, make_head_chain
from infantino.device.config import DeviceConfig
from infantino.device.head_store import HeadStore
from infantino.device.ota import OtaApplier
from infantino.runtime.configfile import ConfigError, validate_config
from infantino.runtime.contract import binfmt, signing
from infantino.runtime.contract import head_update as hu
from infantino.runtime.contract.errors import HeadError, UpdateRejected
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.manifest import Manifest
from infantino.runtime.contract.messages import CommandMessage, SampleMessage
from infantino.runtime.images import ImageError, decode_image
from infantino.trainer.service import TrainerServiceConfig

EXAMPLES = int(os.environ.get("INFANTINO_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES < 1000,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])
COUNTS: dict[str, dict[str, int]] = {}  # parser -> outcome -> count (the fuzz_report fixture writes them out)
SECONDS: dict[str, float] = {}

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 64, 2 ** 64) | st.floats(allow_nan=True, allow_subnormal=False)
                    | st.text(max_size=40),
                    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
                    max_leaves=20)


def _count(parser: str, outcome: str) -> None:
    COUNTS.setdefault(parser, {}).setdefault(outcome, 0)
    COUNTS[parser][outcome] += 1


@st.composite
def mutated(draw, base: bytes):
    """`base` with random byte flips, a cut, an insertion or a splice, or random bytes."""
    kind = draw(st.sampled_from(["flip", "cut", "insert", "splice", "random"]))
    data = bytearray(base)
    if kind == "random":
        return draw(st.binary(max_size=4096))
    if kind == "cut":
        return bytes(data[:draw(st.integers(0, len(data)))])
    if kind == "insert":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:])
    if kind == "splice":
        a = draw(st.integers(0, len(data)))
        b = draw(st.integers(a, len(data)))
        return bytes(data[:a] + draw(st.binary(max_size=b - a + 8)) + data[b:])
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    return bytes(data)


@pytest.fixture(autouse=True)
def fuzz_report(request):
    """With $INFANTINO_FUZZ_REPORT: after each test, rewrite the report there (per-parser outcome counts,
    seconds per test, peak RSS), so a long run that is stopped keeps what it measured."""
    import platform
    import resource
    import time

    t0 = time.time()
    yield
    SECONDS[request.node.name] = round(time.time() - t0, 1)
    path = os.environ.get("INFANTINO_FUZZ_REPORT")
    if path:
        report = {"examples_per_parser": EXAMPLES, "parsers": COUNTS, "seconds_per_test": SECONDS,
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "uncaught_exceptions": 0, "machine": platform.machine(), "command": "make fuzz"}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2) + "\n")


# ---- shared material -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def material(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    signing.generate_keypair(d / "k.key", d / "k.pub")
    sk, pk = signing.load_private_key(d / "k.key"), signing.load_public_key(d / "k.pub")
    heads = make_head_chain(3)
    full = hu.encode_full(heads[2], sk, fleet="nursery", compression="zlib")
    delta, _ = hu.encode_delta(heads[1], heads[2], sk, fleet="nursery", dtype="float16")
    header = binfmt.unpack(b"INFU", full[:-64])[0]
    (d / "bundle").mkdir()
    (d / "cam").mkdir()
    device = {"device_id": "cam-1", "fleet": "nursery", "bundle": str(d / "bundle"), "public_key": str(d / "k.pub"),
              "camera": {"source": str(d / "cam"), "stall_timeout_s": 5}, "state_dir": str(d / "state"),
              "broker": {"host": "localhost", "port": 1883}, "ota": {"max_update_bytes": 1 << 20}}
    (d / "head.infh").write_bytes(heads[0].to_bytes())
    (d / "head_state.npz").write_bytes(b"x")
    trainer = {"fleets": [{"name": "nursery", "initial_head": str(d / "head.infh"),
                           "head_state": str(d / "head_state.npz"), "devices": ["cam-1"]}],
               "state_dir": str(d / "svc"), "signing_key": str(d / "k.key"), "min_interval_ms": 200}
    ok, png = cv2.imencode(".png", np.full((24, 32, 3), 90, np.uint8))
    ok2, jpg = cv2.imencode(".jpg", np.full((24, 32, 3), 90, np.uint8))
    return {"dir": d, "sk": sk, "pk": pk, "heads": heads, "full": full, "delta": delta, "header": header,
            "device": device, "trainer": trainer, "png": png.tobytes(), "jpg": jpg.tobytes()}


@pytest.fixture(scope="module")
def applier(material, tmp_path_factory):
    store = HeadStore(tmp_path_factory.mktemp("fuzz-state"))
    store.load(material["heads"][1])
    ota = OtaApplier(store, material["pk"], DEVICE_EXT, fleet="nursery", embedding_dim=64)
    yield ota
    store.close()


# ---- updates --------------------------------------------------------------------------------------------------
def _peak(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@FUZZ
@given(data=st.data())
def test_fuzz_unsigned_updates_are_rejections_with_bounded_memory(material, applier, data):
    """Mutated updates and random bytes through the device's applier: a counted rejection (or a benign
    duplicate/applied when the mutation left a valid update), memory within a few copies of the input."""
    base = material[data.draw(st.sampled_from(["full", "delta"]))]
    blob = data.draw(mutated(base))
    before = applier.store.current
    results = []
    peak = _peak(lambda: results.append(applier.handle(blob, source="fuzz")))
    res = results[0]
    assert peak < 4 * len(blob) + (8 << 20)
    assert res.status in ("rejected", "duplicate", "applied")
    assert res.status != "rejected" or res.reason not in (None, "internal_error"), res
    if applier.store.current is not before:  # only a valid, correctly signed update may change the head
        hu.open_update(blob, material["pk"])
    _count("update (unsigned mutations)", res.status)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(["format_version", "kind", "version", "base_version", "extractor_id",
                                                "fleet", "shapes", "dtype", "compression", "payload_len",
                                                "result_sha256", "classes", "activation", "conformal_qhat",
                                                "coverage", "meta", "created_at"]), JSON, min_size=1, max_size=4),
       payload=st.one_of(st.none(), st.binary(max_size=2048)))
def test_fuzz_signed_hostile_headers_never_crash(material, changes, payload):
    """A correctly signed update with hostile header fields / payload (a compromised key): UpdateRejected or a
    valid head, nothing else."""
    full = material["full"]
    header, body_payload, _ = binfmt.unpack(b"INFU", full[:-64])
    header = dict(header, **changes)
    body = binfmt.pack(b"INFU", header, body_payload if payload is None else payload)
    blob = body + signing.sign(material["sk"], body)
    try:
        head = hu.apply_update(material["heads"][1], blob, material["pk"], DEVICE_EXT, fleet="nursery")
        assert isinstance(head, Head)
        _count("update (signed hostile headers)", "accepted")
    except UpdateRejected as e:
        assert e.reason in ("corrupt", "wrong_fleet", "wrong_extractor", "stale_version", "wrong_base",
                            "wrong_shapes", "invalid_weights", "wrong_classes", "hash_mismatch", "too_large"), e
        _count("update (signed hostile headers)", "rejected")


# ---- head files, samples, commands, manifests -----------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_fuzz_head_files(material, data):
    base = material["heads"][2].to_bytes()
    blob = data.draw(st.one_of(mutated(base), st.builds(
        lambda h: binfmt.pack(b"INFH", h, b"\0" * 64), st.dictionaries(st.text(max_size=16), JSON, max_size=8))))
    try:
        Head.from_bytes(blob)
        _count("head file", "accepted")
    except HeadError:
        _count("head file", "rejected")


def _json_mutations(base: dict):
    return st.one_of(
        st.builds(lambda k, v: json.dumps({**base, k: v}), st.sampled_from(sorted(base)), JSON),
        st.builds(json.dumps, JSON),
        st.binary(max_size=512).map(lambda b: b.decode("latin-1")),
    )


SAMPLE = {"device_id": "cam-1", "fleet": "nursery", "sample_id": "s-1", "embedding": [0.1] * 64,
          "extractor_id": "e" * 64, "label": "happy", "confidence": 0.8, "frame_id": 3}


@FUZZ
@given(text=_json_mutations(SAMPLE))
def test_fuzz_samples(text):
    try:
        s = SampleMessage.model_validate_json(text)
        assert s.confidence is None or 0 <= s.confidence <= 1
        assert len(s.embedding) <= 4096 and all(np.isfinite(s.embedding))
        _count("sample", "accepted")
    except ValueError:
        _count("sample", "rejected")


@FUZZ
@given(text=_json_mutations({"command": "label", "label": "happy", "frame_id": 3, "request_id": "r"}))
def test_fuzz_commands(text):
    try:
        CommandMessage.model_validate_json(text)
        _count("command", "accepted")
    except ValueError:
        _count("command", "rejected")


PLAN = {"fleet": "nursery", "ring": "canary", "devices": ["cam-1"], "percent": 5.0, "candidate_version": 7}


@FUZZ
@given(text=_json_mutations(PLAN))
def test_fuzz_rollout_plans(text):
    """The retained rollout plan a device reads: refused or a membership answer, never a crash."""
    from infantino.runtime.contract.rollout import RolloutPlan

    try:
        plan = RolloutPlan.model_validate_json(text)
        assert plan.ring_of("cam-1") in (None, plan.ring) and plan.ring_of("cam-2") in (None, plan.ring)
        _count("rollout plan", "accepted")
    except ValueError:
        _count("rollout plan", "rejected")


HEALTH = {"version": 7, "baseline_version": 6, "since": 1.0, "faces": 80, "entropy": 0.5, "baseline_entropy": 0.4,
          "set_size": 1.2, "baseline_set_size": 1.1, "label_changed": 0.1, "fps": 20.0, "baseline_fps": 21.0}


@FUZZ
@given(health=_json_mutations(HEALTH), top=_json_mutations({"device_id": "cam-1", "state": "online", "fleet": "nursery",
                                                             "last_update": {"version": 7, "status": "applied"}}))
def test_fuzz_canary_statuses_through_the_gate(health, top):
    """A canary device's status as the update service reads it, then the gate: a verdict or a refusal, and a NaN
    or a negative figure never gets through (it would slip past the gate's comparisons)."""
    from infantino.runtime.contract.messages import StatusMessage
    from infantino.trainer.service import GateConfig, judge

    try:
        doc = json.loads(top)
        if isinstance(doc, dict):
            doc["health"] = json.loads(health)
            top = json.dumps(doc)
    except ValueError:
        pass
    try:
        st = StatusMessage.model_validate_json(top)
    except ValueError:
        _count("canary status", "rejected")
        return
    h = st.health.model_dump() if st.health is not None else None
    assert h is None or all(v is None or (np.isfinite(v) and v >= 0) for k, v in h.items()
                            if k not in ("version", "baseline_version", "since"))
    lu = st.last_update or {}
    report = {"health": h, "last_update": {"version": lu.get("version"), "status": lu.get("status")}}
    assert judge(GateConfig(min_faces=1), 7, {"cam-1": report}, 30.0).decision in ("pass", "fail", "wait")
    _count("canary status", "accepted")


@pytest.fixture(scope="module")
def manifest_json(compiled_bundle) -> dict:
    return json.loads((Path(compiled_bundle.path) / "manifest.json").read_text())


@FUZZ
@given(data=st.data())
def test_fuzz_manifests(manifest_json, data):
    base = copy.deepcopy(manifest_json)
    text = data.draw(st.one_of(
        _json_mutations(base),
        st.builds(lambda i, k, v: json.dumps({**base, "artifacts": [
            {**a, k: v} if n == i else a for n, a in enumerate(base["artifacts"])]}),
            st.integers(0, len(base["artifacts"]) - 1), st.sampled_from(sorted(base["artifacts"][0])), JSON)))
    try:
        Manifest.model_validate_json(text)
        _count("manifest", "accepted")
    except ValueError:
        _count("manifest", "rejected")


# ---- configs --------------------------------------------------------------------------------------------------
def _config_mutation(base: dict):
    """A key of the config (or of one nested section) set to a random JSON value, or an unknown key added."""
    sections = [k for k, v in base.items() if isinstance(v, dict)]
    options = [st.builds(lambda k, v: {**base, k: v}, st.sampled_from(sorted(base)), JSON),
               st.builds(lambda k, v: {**base, k: v}, st.text(max_size=20), JSON)]
    if sections:
        options.append(st.builds(lambda s, k, v: {**base, s: {**base[s], k: v}}, st.sampled_from(sections),
                                 st.text(max_size=20), JSON))
    return st.one_of(*options)


@FUZZ
@given(data=st.data())
def test_fuzz_device_config(material, data):
    cfg = data.draw(_config_mutation(material["device"]))
    try:
        validate_config(DeviceConfig, cfg)
        _count("device config", "accepted")
    except ConfigError:
        _count("device config", "rejected")


@FUZZ
@given(data=st.data())
def test_fuzz_trainer_config(material, data):
    base = material["trainer"]
    cfg = data.draw(st.one_of(_config_mutation(base), st.builds(
        lambda k, v: {**base, "fleets": [{**base["fleets"][0], k: v}]},
        st.sampled_from(["name", "devices", "allow_any_device", "initial_head", "bundle", "real_face_guard"]), JSON)))
    try:
        validate_config(TrainerServiceConfig, cfg)
        _count("trainer config", "accepted")
    except ConfigError:
        _count("trainer config", "rejected")


# ---- image bytes ----------------------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_fuzz_image_bytes(material, data):
    base = material[data.draw(st.sampled_from(["png", "jpg"]))]
    blob = data.draw(mutated(base))
    peak = _peak(lambda: _decode(blob))
    assert peak < 8 * len(blob) + 3 * 4096 * 4096 * 3 + (8 << 20)


def _decode(blob):
    try:
        frame = decode_image(blob)
        assert frame.dtype == np.uint8 and frame.ndim == 3
        _count("image bytes", "accepted")
    except ImageError:
        _count("image bytes", "rejected")


def test_decode_image_refuses_a_pixel_bomb_before_decoding():
    """A PNG header claiming 60000 x 60000 pixels is refused from its header (OpenCV never allocates 10 GB)."""
    ok, png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    bomb = bytearray(png.tobytes())
    bomb[16:24] = (60000).to_bytes(4, "big") * 2
    with pytest.raises(ImageError, match="60000x60000 pixels"):
        decode_image(bytes(bomb))
    for bad, msg in ((b"", "empty"), (b"GIF89a....", "not a PNG"), (b"\xff\xd8\xff" * 4, "not a PNG|decoded")):
        with pytest.raises(ImageError, match=msg):
            decode_image(bad)


@FUZZ
@given(text=st.one_of(st.text(max_size=400), st.binary(max_size=400).map(lambda b: b.decode("latin-1")),
                      st.integers(1, 300).map(lambda n: "a: " + "[" * n + "]" * n)))
def test_fuzz_config_files(tmp_path_factory, text):
    """Raw config file text through read_yaml + validation: a ConfigError or a config, nothing else."""
    from infantino.runtime.configfile import read_yaml

    p = tmp_path_factory.getbasetemp() / "fuzz-device.yaml"  # one file, rewritten per input
    p.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        data = read_yaml(p)
        validate_config(DeviceConfig, data)
        _count("config file text", "accepted")
    except ConfigError:
        _count("config file text", "rejected")


def test_config_files_are_bounded(tmp_path):
    from infantino.runtime.configfile import read_yaml

    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: 1\n" + b"#" * (2 << 20))
    with pytest.raises(ConfigError, match="is not a config file"):
        read_yaml(big)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(bad)
