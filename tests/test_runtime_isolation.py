"""The runtime runs on a camera's install: a fresh venv with only `infantino[device]` (no torch, tensorflow,
mlflow, timm) loads a signed bundle and predicts on a real face with every backend it has.

The project is copied (sources only) and pip-installed into a new venv under tmp; pip takes wheels from the
machine's wheel store / cache. Takes about a minute here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "torchvision", "tensorflow", "mlflow", "timm", "jax", "sklearn")

SCRIPT = textwrap.dedent("""
    import json, sys, importlib.util
    before = set(sys.modules)
    import infantino.runtime as rt
    light = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("onnxruntime", "ai_edge_litert", "cv2"))
    import cv2
    from infantino.runtime import Pipeline, load_bundle
    from infantino.runtime.backends import available_backends, get_backend_class, unavailable_reason
    bundle = load_bundle(sys.argv[1], public_key=sys.argv[2])
    frame = cv2.imread(sys.argv[3])
    out = {"light_import_pulled": light, "available": available_backends(),
           "tensorrt": unavailable_reason("tensorrt"), "results": {}}
    for name in ("onnxruntime", "tflite", "auto"):
        if name != "auto" and get_backend_class(name).check_usable(bundle) is not None:
            continue
        with Pipeline(bundle, backend=name, threads=1) as pipe:
            res = pipe.predict(frame)
            out["results"][name] = {"backend": pipe.backend.name, "n": len(res),
                                    "label": res[0].label if res else None, "box": res[0].box if res else None}
    bad = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[4].split(",")))
    out["forbidden_loaded"] = bad
    out["forbidden_installed"] = [m for m in sys.argv[4].split(",") if importlib.util.find_spec(m) is not None]
    print("RESULT " + json.dumps(out))
""")


WEB_SCRIPT = textwrap.dedent("""
    from importlib.resources import files
    import infantino.device.web.app, infantino.device.web.server, prometheus_client, multipart
    static = files("infantino.device.web") / "static"
    missing = [f for f in ("index.html", "login.html", "app.js", "style.css") if not (static / f).is_file()]
    assert not missing, missing
    print("WEB OK")
""")


def _copy_sources(dst: Path) -> None:
    dst.mkdir(parents=True)
    for f in ("setup.cfg", "pyproject.toml", "README.md"):
        if (ROOT / f).exists():
            shutil.copy2(ROOT / f, dst / f)
    for d in ("runtime", "compiler", "device", "trainer", "benchmarks"):
        shutil.copytree(ROOT / d, dst / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def test_runtime_in_a_fresh_device_only_venv(tmp_path, runtime_bundle, keypair, real_faces):
    t0 = time.perf_counter()
    src, venv = tmp_path / "src", tmp_path / "venv"
    _copy_sources(src)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", f"{src}[device]"], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-3000:]
    t_install = time.perf_counter() - t0
    face = tmp_path / "astronaut.png"
    cv2.imwrite(str(face), real_faces["astronaut"])
    run = subprocess.run([str(py), "-c", SCRIPT, str(runtime_bundle), str(keypair[1]), str(face), ",".join(FORBIDDEN)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    # the device extra also carries the web page and API, static files included (setup.cfg package_data)
    web = subprocess.run([str(py), "-c", WEB_SCRIPT], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert web.returncode == 0 and "WEB OK" in web.stdout, web.stderr[-3000:]
    line = next(l for l in run.stdout.splitlines() if l.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    print(f"fresh device venv: install {t_install:.0f} s, total {time.perf_counter() - t0:.0f} s; {out}")

    assert out["forbidden_installed"] == [], "the device extra pulled in a training library"
    assert out["forbidden_loaded"] == []
    assert out["light_import_pulled"] == [], "import infantino.runtime loaded an inference library eagerly"
    assert {"onnxruntime", "tflite"} <= set(out["available"])
    assert out["tensorrt"].startswith("tensorrt: not installed: pip install 'infantino[tensorrt]'")
    assert out["results"]["auto"]["backend"] == "onnxruntime"
    for name, r in out["results"].items():
        assert r["n"] == 1, f"{name} found no face"
    assert {"onnxruntime", "tflite"} <= set(out["results"]), "a backend of the test bundle was not exercised"
    labels = {r["label"] for r in out["results"].values()}
    assert len(labels) == 1, f"backends disagree: {out['results']}"
