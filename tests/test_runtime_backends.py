"""Every registered backend x every artifact it can run x every test bundle goes through tests/backend_checks.py.

Unavailable backends are skipped with the reason the backend itself gives (e.g. what to pip install);
the compiler's `compiled_bundle` joins automatically once tests/fixtures_compiler.py provides it.
"""

from __future__ import annotations

import numpy as np
import pytest

import backend_checks
from infantino.runtime.backends import (BackendConfig, UnknownBackend, choose_backend, create_backend,
                                        get_backend_class, list_backends, unavailable_reason)
from infantino.runtime.contract.errors import BackendUnavailable

BUNDLES = ["runtime_bundle", "compiled_bundle"]


def _bundle(request, name):
    from infantino.runtime.bundle import Bundle, load_bundle

    try:
        value = request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        pytest.skip(f"fixture {name} is not provided (tests/fixtures_compiler.py)")
    if isinstance(value, Bundle):
        return value
    path = getattr(value, "path", None) or getattr(value, "bundle_dir", None) or getattr(value, "bundle", None) or value
    if isinstance(path, (tuple, list)):
        path = path[0]
    if isinstance(path, Bundle):
        return path
    pub = getattr(value, "public_key", None) or request.getfixturevalue("keypair")[1]
    return load_bundle(path, public_key=pub)


@pytest.mark.parametrize("check", backend_checks.ALL_CHECKS, ids=lambda c: c.__name__.replace("check_", ""))
@pytest.mark.parametrize("bundle_name", BUNDLES)
@pytest.mark.parametrize("backend_name", list_backends())
def test_backend_check_suite(backend_name, bundle_name, check, request):
    cls = get_backend_class(backend_name)
    reason = cls.unavailable_reason()
    if reason:
        pytest.skip(reason)
    bundle = _bundle(request, bundle_name)
    artifacts = [a for a in bundle.manifest.artifacts if a.format in cls.formats]
    if not artifacts:
        pytest.skip(f"{backend_name}: {bundle_name} has no {'/'.join(cls.formats)} artifact")
    for art in artifacts:
        backends = []

        def make(art=art):
            b = cls(bundle, cls.config_class(threads=1), artifact=art)
            backends.append(b)
            return b

        try:
            check(make, bundle)
        except AssertionError as e:
            raise AssertionError(f"{backend_name} on {art.file} ({art.precision}, {art.layout}): {e}") from e
        finally:
            for b in backends:
                b.close()


def test_registry_lists_the_three_backends():
    assert {"onnxruntime", "tflite", "tensorrt"} <= set(list_backends())


def test_unknown_backend_names_valid_ones_and_closest():
    with pytest.raises(UnknownBackend) as ei:
        get_backend_class("onnxrutime")
    msg = str(ei.value)
    assert "valid: auto, onnxruntime, tensorrt, tflite" in msg and "Did you mean 'onnxruntime'" in msg


def test_tensorrt_reports_exactly_what_to_install():
    reason = unavailable_reason("tensorrt")
    try:
        import tensorrt  # noqa: F401
    except Exception:
        assert reason.startswith("tensorrt: not installed: pip install 'infantino[tensorrt]' on an NVIDIA host")
    else:  # pragma: no cover - NVIDIA hosts
        assert reason is None or reason.startswith("tensorrt:")


def test_missing_library_is_reported_loudly(runtime_loaded, monkeypatch):
    """A backend whose library cannot be imported refuses to start, and says what to install."""
    import builtins

    real_import = builtins.__import__

    def no_ort(name, *a, **k):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    assert unavailable_reason("onnxruntime") == (
        "onnxruntime: not installed: pip install 'infantino[device]' (or pip install onnxruntime)")
    with pytest.raises(BackendUnavailable, match=r"pip install 'infantino\[device\]'"):
        create_backend("onnxruntime", runtime_loaded)
    # auto falls back to the next backend that can run the bundle
    if unavailable_reason("tflite") is None and runtime_loaded.manifest.artifact("tflite"):
        assert choose_backend(runtime_loaded) == "tflite"


def test_auto_prefers_the_bundles_default_backend(runtime_loaded):
    assert runtime_loaded.manifest.default_backend == "onnxruntime"
    assert choose_backend(runtime_loaded) == "onnxruntime"
    b = create_backend("auto", runtime_loaded, threads=1)
    try:
        assert b.name == "onnxruntime" and b.config.threads == 1
    finally:
        b.close()


def test_auto_explains_when_nothing_can_run(runtime_loaded):
    with pytest.raises(BackendUnavailable) as ei:
        choose_backend(runtime_loaded, precision="int8")  # the test bundle has no int8 artifact
    msg = str(ei.value)
    assert "no backend can run this bundle" in msg and "onnxruntime: bundle has no onnx (int8) artifact" in msg
    assert "tensorrt:" in msg


def test_backend_config_is_typed(runtime_loaded):
    with pytest.raises(Exception, match="allow_spining|extra"):
        create_backend("onnxruntime", runtime_loaded, {"allow_spining": False})
    with pytest.raises(TypeError):
        get_backend_class("onnxruntime")(runtime_loaded, BackendConfig())


def test_onnxruntime_session_options(runtime_loaded):
    b = create_backend("onnxruntime", runtime_loaded, {"threads": 2, "allow_spinning": False})
    try:
        opts = b.session.get_session_options()
        assert opts.intra_op_num_threads == 2
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert b.session.get_providers()[-1] == "CPUExecutionProvider"
        assert "AzureExecutionProvider" not in b.session.get_providers()
    finally:
        b.close()


def test_onnxruntime_refuses_a_missing_provider(runtime_loaded):
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider not available"):
        create_backend("onnxruntime", runtime_loaded, {"providers": ["CUDAExecutionProvider"]})


def test_tflite_threads_and_xnnpack_switch(runtime_loaded):
    if unavailable_reason("tflite") or not runtime_loaded.manifest.artifact("tflite"):
        pytest.skip("no tflite backend or artifact")
    x, ref = runtime_loaded.reference()
    outs = []
    for xnn in (True, False):
        b = create_backend("tflite", runtime_loaded, {"threads": 2, "xnnpack": xnn})
        try:
            outs.append(b.embed(x))
            assert f"xnnpack={xnn}" in b.describe()
        finally:
            b.close()
    assert np.abs(outs[0] - outs[1]).max() < 1e-4 * np.abs(ref).max()
