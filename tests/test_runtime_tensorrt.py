"""TensorRT around the engine: the plan cache rebuilds stale/foreign plans, the backend says what to install.

TensorRT cannot run on these machines (no GPU, libnvinfer not installable), so the engine itself is covered by
the generic suite on NVIDIA hosts only; here the cache decisions run with a stand-in deserialiser that, like
TensorRT, refuses plans built for another GPU.
"""

from __future__ import annotations

import json

import pytest

from infantino.runtime.backends import create_backend, get_backend_class
from infantino.runtime.backends.tensorrt_backend import PlanCache, PlanKey
from infantino.runtime.backends.tensorrt_build import plan_cache_name
from infantino.runtime.contract.errors import BackendUnavailable

SHA = "ab" * 32
SETTINGS = {"precision": "fp16", "max_batch": 8}


class Builder:
    """Counts builds; plans carry the GPU they were built for, and `load` refuses other GPUs' plans."""

    def __init__(self, gpu):
        self.gpu, self.builds = gpu, 0

    def build(self):
        self.builds += 1
        return f"PLAN for {self.gpu} #{self.builds}".encode()

    def load(self, plan: bytes):
        return plan.decode() if plan.startswith(f"PLAN for {self.gpu} ".encode()) else None


def test_plan_is_built_once_then_loaded_from_cache(tmp_path):
    cache = PlanCache(tmp_path, plan_cache_name)
    key = PlanKey(SHA, SETTINGS, "10.3.0", "NVIDIA Jetson Orin Nano")
    b = Builder(key.gpu_name)
    engine, rebuilt = cache.get_or_build(key, b.build, b.load)
    assert rebuilt and b.builds == 1 and engine == "PLAN for NVIDIA Jetson Orin Nano #1"
    path = cache.path(key)
    assert "trt10.3.0" in path.name and "nvidia-jetson-orin-nano" in path.name and path.name.startswith(SHA[:16])
    assert json.loads(path.with_name(path.name + ".json").read_text()) == key.meta()
    engine, rebuilt = cache.get_or_build(key, b.build, b.load)
    assert not rebuilt and b.builds == 1 and engine.endswith("#1")


def test_stale_plan_is_rebuilt_not_loaded(tmp_path):
    cache = PlanCache(tmp_path, plan_cache_name)
    old = PlanKey(SHA, SETTINGS, "10.3.0", "Orin")
    b = Builder("Orin")
    cache.get_or_build(old, b.build, b.load)
    new = PlanKey(SHA, dict(SETTINGS, max_batch=16), "10.3.0", "Orin")  # same name, other settings
    assert cache.path(new) == cache.path(old)
    engine, rebuilt = cache.get_or_build(new, b.build, b.load)
    assert rebuilt and engine.endswith("#2")


def test_foreign_plan_under_the_same_name_is_rebuilt(tmp_path):
    """A cache copied from another device: the sidecar names another GPU, and the plan would not load."""
    key = PlanKey(SHA, SETTINGS, "10.3.0", "Orin")
    other = Builder("RTX 4090")
    cache = PlanCache(tmp_path, plan_cache_name)
    path = cache.path(key)
    path.write_bytes(other.build())
    path.with_name(path.name + ".json").write_text(json.dumps(dict(key.meta(), gpu_name="RTX 4090")))
    mine = Builder("Orin")
    engine, rebuilt = cache.get_or_build(key, mine.build, mine.load)
    assert rebuilt and engine == "PLAN for Orin #1"
    # Same sidecar but a plan that does not deserialise (e.g. truncated): rebuilt as well.
    path.write_bytes(b"garbage")
    engine, rebuilt = cache.get_or_build(key, mine.build, mine.load)
    assert rebuilt and engine == "PLAN for Orin #2"
    # A missing or unreadable sidecar: rebuilt.
    path.with_name(path.name + ".json").write_text("{")
    assert cache.get_or_build(key, mine.build, mine.load)[1]


def test_other_tensorrt_or_gpu_gives_another_cache_name():
    a = plan_cache_name(SHA, SETTINGS, "10.3.0", "Orin")
    assert a != plan_cache_name(SHA, SETTINGS, "10.4.0", "Orin") != plan_cache_name(SHA, SETTINGS, "10.3.0", "Xavier")


def test_tensorrt_backend_unavailable_here_says_what_to_install(runtime_loaded):
    cls = get_backend_class("tensorrt")
    reason = cls.unavailable_reason()
    if reason is None:  # pragma: no cover - NVIDIA hosts run the generic suite instead
        pytest.skip("TensorRT is usable on this host")
    assert reason.startswith("tensorrt:")
    with pytest.raises(BackendUnavailable) as ei:
        create_backend("tensorrt", runtime_loaded)
    assert str(ei.value) == reason
    # Without tensorrt artifacts it would build from the bundle's fp32 ONNX.
    assert cls.select_artifact(runtime_loaded).file == "extractor.onnx"


def test_tensorrt_artifact_choice_prefers_a_shipped_plan(runtime_loaded):
    m = runtime_loaded.manifest.model_copy(deep=True)
    base = m.artifacts[0]
    m.artifacts += [base.model_copy(update=dict(file="tensorrt/extractor.onnx", format="tensorrt_onnx", precision="fp16")),
                    base.model_copy(update=dict(file="tensorrt/extractor_fp16.plan", format="tensorrt_plan",
                                                precision="fp16"))]

    class B:
        manifest = m

    cls = get_backend_class("tensorrt")
    assert cls.select_artifact(B).file == "tensorrt/extractor_fp16.plan"
    assert cls.select_artifact(B, "fp16").format == "tensorrt_plan"
    assert cls.select_artifact(B, "int8").file == "extractor.onnx"
