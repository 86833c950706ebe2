"""Export formats behind one registry: `@register_format("onnx", ...)` on an Exporter, `create_exporter(name)`.

Each format is one small module with a typed options dataclass; the registry row (like a row of Ultralytics'
export table) says its file suffix, precisions, layouts, whether it needs a GPU, the Python modules it needs
and which extra installs them, and the arguments it accepts. The CLI builds its per-format arguments from
these rows, so adding a format is one module here plus its name in a target of compiler/targets.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import numpy as np

from infantino.runtime.contract.errors import BackendUnavailable, InfantinoError

from ..choices import UnknownChoice, check_choice

log = logging.getLogger(__name__)

# Modules holding the built-in formats; importing them registers them (cheap: no converter is imported).
BUILTIN_MODULES = ("onnx", "tflite", "tensorrt")


@dataclass
class ExportContext:
    """What every exporter gets: the PyTorch extractor, input geometry, calibration inputs and where to write."""

    model: Any  # torch.nn.Module in eval mode, input NCHW float32 -> (N, D) embedding
    input_shape: tuple[int, int, int]  # (C, H, W)
    bundle_dir: Path  # staging folder of the bundle: artifacts are written here
    work_dir: Path  # scratch folder for intermediates (removed after the compile)
    calib: np.ndarray  # preprocessed calibration inputs, NCHW float32
    metadata: dict[str, str] = field(default_factory=dict)  # embedded where a format allows (ONNX)
    onnx_file: Optional[str] = None  # bundle-relative path of the fp32 ONNX once exported (the source)
    progress: Callable[[str], None] = lambda msg: None

    @property
    def onnx_path(self) -> Path:
        if not self.onnx_file:
            raise InfantinoError("this format converts from the ONNX export: include 'onnx' in --formats")
        return self.bundle_dir / self.onnx_file


@dataclass
class Artifact:
    """One file an exporter wrote, described as the manifest will list it (sha256/size added by the writer)."""

    file: str
    format: str  # manifest format: onnx | tflite | tensorrt_onnx | tensorrt_plan
    precision: str
    layout: str
    converter: str
    seconds: float = 0.0
    input_name: str = "input"
    output_name: str = "embedding"
    dynamic_batch: bool = True
    tensorrt: Optional[dict] = None
    # How the parity gate runs it here: a runtime backend name, or None with a reason.
    parity_backend: Optional[str] = None
    parity_note: Optional[str] = None
    # The precision parity judges it at when the parity backend runs it at another (None: its own precision).
    judge_precision: Optional[str] = None


@dataclass(frozen=True)
class FormatSpec:
    """A registry row: the facts about a format the CLI, targets and docs need without importing converters."""

    name: str
    suffix: str
    description: str
    precisions: tuple[str, ...]
    layouts: tuple[str, ...]
    needs_gpu: bool
    requires: tuple[str, ...]  # importable modules the format needs
    extra: str  # pip extra that provides them
    options: type  # options dataclass
    exporter: type

    @property
    def arguments(self) -> list[str]:
        """CLI flags this format accepts (from its options dataclass)."""
        return [f.metadata["cli"] for f in dataclasses.fields(self.options) if "cli" in f.metadata]

    def missing(self) -> list[str]:
        """Required modules that cannot be imported here."""
        out = []
        for mod in self.requires:
            try:
                if importlib.util.find_spec(mod) is None:
                    out.append(mod)
            except (ImportError, ValueError):
                out.append(mod)
        return out


_REGISTRY: dict[str, FormatSpec] = {}
_loaded = False


def option(default, cli: str, help: str, choices: tuple | None = None, type: Callable | None = None):
    """A dataclass field of a format's options, with the CLI flag, help and allowed values."""
    meta = {"cli": cli, "help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if type is not None:
        meta["type"] = type
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type_copy(d), metadata=meta)
    return field(default=default, metadata=meta)


def type_copy(value):
    return list(value) if isinstance(value, list) else dict(value)


def register_format(name: str, *, suffix: str, description: str, precisions: tuple[str, ...],
                    layouts: tuple[str, ...], options: type, needs_gpu: bool = False,
                    requires: tuple[str, ...] = (), extra: str = "compile"):
    """Class decorator: register an Exporter subclass as format `name`."""

    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name].exporter.__qualname__ != cls.__qualname__:
            raise TypeError(f"format {name!r} is already registered by {_REGISTRY[name].exporter.__module__}")
        spec = FormatSpec(name=name, suffix=suffix, description=description, precisions=tuple(precisions),
                          layouts=tuple(layouts), needs_gpu=needs_gpu, requires=tuple(requires), extra=extra,
                          options=options, exporter=cls)
        cls.spec = spec
        _REGISTRY[name] = spec
        return cls

    return deco


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for mod in BUILTIN_MODULES:
            importlib.import_module(f"{__name__}.{mod}")
        _loaded = True


def list_formats() -> list[FormatSpec]:
    """Every registered format, in registration order."""
    _load_builtins()
    return list(_REGISTRY.values())


def get_format(name: str) -> FormatSpec:
    """The registry row of `name`; UnknownChoice lists the formats and the closest match."""
    _load_builtins()
    return _REGISTRY[check_choice("format", name, list(_REGISTRY))]


def create_exporter(name: str, options: Any = None, **overrides) -> "Exporter":
    """An exporter for format `name` with typed options (a dataclass, a dict or keyword overrides)."""
    spec = get_format(name)
    return spec.exporter(make_options(spec, options, **overrides))


def make_options(spec: FormatSpec, options: Any = None, **overrides):
    """Typed options for a format; unknown option names fail with the valid ones."""
    if options is None:
        data = {}
    elif isinstance(options, spec.options):
        data = dataclasses.asdict(options)
    elif isinstance(options, dict):
        data = dict(options)
    else:
        raise TypeError(f"{spec.name} options must be a dict or {spec.options.__name__}")
    data.update(overrides)
    valid = [f.name for f in dataclasses.fields(spec.options)]
    for key in data:
        if key not in valid:
            check_choice(f"{spec.name} option", key, valid)
    opts = spec.options(**data)
    for f in dataclasses.fields(spec.options):
        allowed = f.metadata.get("choices")
        if allowed and getattr(opts, f.name) not in allowed:
            check_choice(f"value for {f.metadata.get('cli', f.name)}", str(getattr(opts, f.name)),
                         [str(a) for a in allowed])
    return opts


class Exporter:
    """Base of every format: check what it needs, then write one artifact per requested precision."""

    spec: ClassVar[FormatSpec]

    def __init__(self, options):
        self.options = options
        self.precisions: list[str] = []  # what this compile will ask for (set by check)

    # ---- before any work ----------------------------------------------------------------------
    def unavailable_reason(self) -> Optional[str]:
        """None if the converter can run here, else what is missing and which extra installs it."""
        missing = self.spec.missing()
        if missing:
            return (f"format {self.spec.name!r} needs {', '.join(missing)}: pip install 'infantino[{self.spec.extra}]'"
                    f" (or leave it out with --formats)")
        return None

    def check(self, precisions: list[str], layout: str) -> None:
        """Raise a clear error for precisions/layouts this format cannot build (before any work)."""
        self.precisions = list(precisions)
        for p in precisions:
            if p not in self.spec.precisions:
                raise UnknownChoice(f"format {self.spec.name!r} does not build precision {p!r}; "
                                    f"valid: {', '.join(self.spec.precisions)}")
        if layout not in self.spec.layouts:
            raise UnknownChoice(f"format {self.spec.name!r} does not produce layout {layout!r}; "
                                f"valid: {', '.join(self.spec.layouts)}")
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)

    def needs_calibration(self, precisions: list[str]) -> bool:
        return "int8" in precisions

    def toolchain_dists(self) -> list[str]:
        """Distributions (beyond the compiler's own) whose versions shape this format's artifacts."""
        return []

    def toolchain_info(self) -> dict[str, str]:
        """Host facts recorded in the manifest's toolchain (e.g. TensorRT version and GPU)."""
        return {}

    # ---- the work -----------------------------------------------------------------------------
    def export(self, ctx: ExportContext, precision: str, layout: str) -> list[Artifact]:
        """Write the artifact(s) for one precision into ctx.bundle_dir; return their descriptions."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop cached intermediates."""


class Timer:
    """`with Timer() as t: ...; t.seconds`."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


__all__ = ["Artifact", "ExportContext", "Exporter", "FormatSpec", "Timer", "create_exporter", "get_format",
           "list_formats", "make_options", "option", "register_format"]
