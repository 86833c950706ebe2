"""Fixtures of the runtime part: a signed test bundle built here, an MJPEG server on loopback, a video file.

`runtime_bundle` is made directly from a tiny timm `test_efficientnet` (64 px): ONNX NCHW (+ an NHWC variant to
exercise layouts), an fp32 TFLite from litert-torch when it is installed, a head from a scikit-learn MLP,
reference inputs/embeddings, manifest.json signed with the session keypair. Tests that tamper with a bundle
copy it first (`runtime_bundle_copy`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def runtime_sign_manifest(bundle_dir: Path, manifest: dict, private_key) -> None:
    """Write manifest.json (exact bytes) and manifest.sig for `manifest`, as the compiler does."""
    from infantino.runtime.contract.signing import sign

    raw = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (bundle_dir / "manifest.json").write_bytes(raw)
    (bundle_dir / "manifest.sig").write_bytes(sign(private_key, raw))


def runtime_rehash(bundle_dir: Path, manifest: dict) -> dict:
    """Recompute every listed file's sha256 (and sizes) in a manifest dict after a deliberate change."""
    for a in manifest["artifacts"]:
        a["sha256"] = _sha(bundle_dir / a["file"])
        a["size_bytes"] = (bundle_dir / a["file"]).stat().st_size
    for key in ("head", "reference"):
        if manifest.get(key):
            manifest[key]["sha256"] = _sha(bundle_dir / manifest[key]["file"])
    return manifest


class _BNSettled:
    """Settle BatchNorm statistics of an untrained net (avoids denormal-slow, near-zero activations)."""

    @staticmethod
    def settle(model, shape, steps: int = 4):
        import torch

        model.train()
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for _ in range(steps):
                model(torch.randn(8, *shape, generator=g))
        return model.eval()


@pytest.fixture(scope="session")
def runtime_model():
    """(model, ExtractorConfig): timm test_efficientnet -> 64-d embedding at 64 px, eval mode, BN settled."""
    import torch

    from infantino.trainer.extractor import ExtractorConfig, build_extractor

    torch.manual_seed(0)
    cfg = ExtractorConfig(backbone="test_efficientnet", img_size=64)
    model = build_extractor(cfg)
    _BNSettled.settle(model, (3, 64, 64))
    return model, cfg


def _reference_images(real_faces) -> list[np.ndarray]:
    """Real face crops (Haar, via the runtime) plus a few random and flat images, BGR uint8."""
    from infantino.runtime.face import FaceOptions, create_detector, crop_face

    det = create_detector(FaceOptions())
    imgs = []
    for img in real_faces.values():
        for b in det.detect(img):
            crop, _ = crop_face(img, b, 0.2)
            imgs += [crop, np.ascontiguousarray(crop[:, ::-1])]
    rng = np.random.default_rng(1)
    imgs += [rng.integers(0, 256, (80, 70, 3), dtype=np.uint8) for _ in range(3)]
    imgs.append(np.full((64, 64, 3), 128, np.uint8))
    return imgs


@pytest.fixture(scope="session")
def runtime_bundle(tmp_path_factory, runtime_model, keypair, real_faces) -> Path:
    """A signed bundle directory built directly from a tiny torch model (see module docstring)."""
    import torch
    from sklearn.neural_network import MLPClassifier

    from infantino.runtime.contract.classes import CLASSES
    from infantino.runtime.contract.head import Head
    from infantino.runtime.contract.preprocess import preprocess
    from infantino.trainer.extractor import extractor_id

    model, cfg = runtime_model
    _, _, priv, _ = keypair
    d = tmp_path_factory.mktemp("runtime_bundle")
    spec = cfg.spec
    ext_id = extractor_id(model)

    class _NHWC(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x.permute(0, 3, 1, 2))

    x0 = torch.randn(2, 3, 64, 64)
    torch.onnx.export(model, (x0,), str(d / "extractor.onnx"), dynamo=False, input_names=["input"],
                      output_names=["embedding"], dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
                      opset_version=17)
    torch.onnx.export(_NHWC(model).eval(), (x0.permute(0, 2, 3, 1),), str(d / "extractor_nhwc.onnx"), dynamo=False,
                      input_names=["input"], output_names=["embedding"],
                      dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17)
    artifacts = [
        dict(file="extractor.onnx", format="onnx", precision="fp32", layout="NCHW", converter="torch.onnx"),
        dict(file="extractor_nhwc.onnx", format="onnx", precision="fp32", layout="NHWC", converter="torch.onnx"),
    ]
    try:
        import litert_torch

        edge = litert_torch.convert(model, (torch.randn(1, 3, 64, 64),))
        edge.export(str(d / "extractor_fp32.tflite"))
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(d / "extractor_fp32.tflite"))
        artifacts.append(dict(file="extractor_fp32.tflite", format="tflite", precision="fp32", layout="NCHW",
                              converter="litert-torch", input_name=it.get_input_details()[0]["name"],
                              output_name=it.get_output_details()[0]["name"]))
    except ImportError:  # pragma: no cover - litert-torch is in the compile extra
        pass

    inputs = preprocess(_reference_images(real_faces), spec, "NCHW")
    with torch.no_grad():
        emb = model(torch.from_numpy(inputs)).numpy().astype(np.float32)
    np.savez(d / "reference.npz", inputs=inputs, embeddings=emb)

    rng = np.random.default_rng(0)
    X = rng.normal(scale=float(np.abs(emb).mean()) + 1e-3, size=(350, 64)).astype(np.float32)
    y = np.arange(350) % 7
    mlp = MLPClassifier(hidden_layer_sizes=(32,), random_state=0, max_iter=50)
    for _ in range(5):
        mlp.partial_fit(X, y, classes=np.arange(7))
    head = Head.from_sklearn(mlp, version=1, extractor_id=ext_id, conformal_qhat=0.9, coverage=0.9)
    (d / "head.infh").write_bytes(head.to_bytes())

    import onnx
    import onnxruntime

    manifest = {
        "schema_version": 1,
        "model": {"name": "runtime-test", "version": "1", "backbone": cfg.backbone, "source": "tests"},
        "extractor_id": ext_id,
        "preprocess": spec.model_dump(mode="json"),
        "embedding_dim": 64,
        "classes": list(CLASSES),
        "target": "x64",
        "precision": "fp32",
        "default_backend": "onnxruntime",
        "artifacts": [dict(a, sha256="", size_bytes=0) for a in artifacts],
        "parity": [],
        "toolchain": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "head": {"file": "head.infh", "sha256": "", "version": 1, "conformal_qhat": 0.9},
        "reference": {"file": "reference.npz", "sha256": ""},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    runtime_sign_manifest(d, runtime_rehash(d, manifest), priv)
    return d


@pytest.fixture()
def runtime_bundle_copy(runtime_bundle, tmp_path) -> Path:
    """A private copy of runtime_bundle that a test may tamper with."""
    dst = tmp_path / "bundle"
    shutil.copytree(runtime_bundle, dst)
    return dst


@pytest.fixture(scope="session")
def runtime_loaded(runtime_bundle, keypair):
    """runtime_bundle loaded and verified (Bundle)."""
    from infantino.runtime.bundle import load_bundle

    return load_bundle(runtime_bundle, public_key=keypair[1])


# ---- frame sources -----------------------------------------------------------------------------------------
def runtime_numbered_frame(i: int, size=(120, 160)) -> np.ndarray:
    """A BGR frame whose brightness encodes i (survives JPEG/MJPG compression): value 20 + 10*i, plus a bar."""
    img = np.full((*size, 3), 20 + 10 * (i % 20), np.uint8)
    img[:, : 8 + 4 * (i % 20)] = 255
    return img


def runtime_frame_number(frame: np.ndarray) -> int:
    """Inverse of runtime_numbered_frame (robust to compression noise)."""
    return int(round((float(np.median(frame[:, -20:])) - 20) / 10))


@pytest.fixture()
def runtime_video_file(tmp_path) -> tuple[Path, int]:
    """(path, n_frames): an MJPG .avi of numbered frames written with cv2.VideoWriter."""
    import cv2

    path, n = tmp_path / "clip.avi", 12
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    assert w.isOpened(), "OpenCV cannot write MJPG .avi here"
    for i in range(n):
        w.write(runtime_numbered_frame(i))
    w.release()
    return path, n


@dataclass
class MjpegServer:
    """An MJPEG-over-HTTP server on loopback (stdlib): multipart/x-mixed-replace JPEG frames.

    Each connection gets `frames_per_connection` frames (None = endless) and then either stalls (keeps the
    socket open, sends nothing) or closes, per `after`. `connections` counts GET requests.
    """

    frames_per_connection: int | None = None
    after: str = "close"  # or "stall"
    fps: float = 30.0
    connections: int = 0
    frames_sent: int = 0
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "MjpegServer":
        import cv2

        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                srv.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                i = 0
                try:
                    while not srv._stop.is_set():
                        if srv.frames_per_connection is not None and i >= srv.frames_per_connection:
                            if srv.after == "stall":
                                while not srv._stop.wait(0.1):
                                    pass
                            return
                        ok, jpg = cv2.imencode(".jpg", runtime_numbered_frame(srv.frames_sent))
                        data = jpg.tobytes()
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         + f"Content-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n")
                        self.wfile.flush()
                        srv.frames_sent += 1
                        i += 1
                        time.sleep(1.0 / srv.fps)
                except (BrokenPipeError, ConnectionResetError):
                    return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/stream.mjpg"
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture()
def runtime_mjpeg_server():
    """Factory: runtime_mjpeg_server(frames_per_connection=None, after="close") -> started MjpegServer."""
    servers = []

    def make(**kw) -> MjpegServer:
        s = MjpegServer(**kw).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


@pytest.fixture()
def runtime_free_port() -> int:
    """A loopback TCP port with nothing listening on it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
