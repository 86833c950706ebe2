"""YAML config files validated by pydantic models, with one clear line per bad field (device and trainer service).

Relative paths inside a config resolve against the config file's directory, so a config and its keys can move
together. Errors name every bad field by its dotted path, e.g. ``broker.port: must be <= 65535 (got 70000)``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ValidationError, ValidationInfo

from .contract.errors import InfantinoError

M = TypeVar("M", bound=BaseModel)


class ConfigError(InfantinoError):
    """A config file is missing, not YAML, or has invalid fields; the message lists every problem."""


def _resolve(value: Path, info: ValidationInfo) -> Path:
    p = Path(os.path.expandvars(str(value))).expanduser()
    base = (info.context or {}).get("base_dir") if info is not None else None
    if base is not None and not p.is_absolute():
        p = Path(base) / p
    return p


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    p = _resolve(value, info)
    if not p.is_file():
        raise ValueError(f"file not found: {p}")
    return p


def _existing_path(value: Path, info: ValidationInfo) -> Path:
    p = _resolve(value, info)
    if not p.exists():
        raise ValueError(f"path not found: {p}")
    return p


def _writable_dir(value: Path, info: ValidationInfo) -> Path:
    p = _resolve(value, info)
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"not a directory: {p}")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ValueError(f"directory is not writable: {p}")
        return p
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot create {p}: {parent} is not writable")
    return p


ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
"""A file that must exist (relative to the config file's directory)."""
ExistingPath = Annotated[Path, AfterValidator(_existing_path)]
"""A file or directory that must exist."""
WritableDir = Annotated[Path, AfterValidator(_writable_dir)]
"""A directory that exists and is writable, or can be created."""
ResolvedPath = Annotated[Path, AfterValidator(_resolve)]
"""Any path, resolved against the config file's directory."""


def format_validation_error(err: ValidationError, model: type[BaseModel] | None = None) -> list[str]:
    """One line per bad field: dotted path, what is wrong, and the offending value."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        if e["type"] == "extra_forbidden":
            msg = "unknown setting"
            hint = _closest_field(model, e["loc"])
            if hint:
                msg += f" (did you mean {hint!r}?)"
        elif e["type"] == "missing":
            msg = "required setting is missing"
        elif "input" in e and e["type"] not in ("value_error",) and not isinstance(e["input"], (dict, list)):
            msg += f" (got {e['input']!r})"
        lines.append(f"{loc}: {msg}")
    return lines


def short_error(e: Exception) -> str:
    """One line for a ValueError or a pydantic ValidationError (field: problem; ...), for logs and status."""
    errs = getattr(e, "errors", None)
    if callable(errs):
        try:
            return "; ".join(f"{'.'.join(str(p) for p in x['loc']) or 'message'}: {x['msg']}" for x in errs())
        except Exception:
            pass
    text = str(e)
    return text.splitlines()[0] if text else type(e).__name__


def _closest_field(model: type[BaseModel] | None, loc: tuple) -> str | None:
    """Walk the model along `loc` and suggest the closest valid field name for an unknown key."""
    if model is None:
        return None
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(cur, "model_fields", None)
        if not fields or part not in fields:
            return None
        ann = fields[part].annotation
        cur = _model_in(ann)
        if cur is None:
            return None
    fields = getattr(cur, "model_fields", {})
    match = difflib.get_close_matches(str(loc[-1]), list(fields), n=1, cutoff=0.6)
    return match[0] if match else None


def _model_in(ann) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for a in getattr(ann, "__args__", ()) or ():
        m = _model_in(a)
        if m is not None:
            return m
    return None


MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; bigger is a mistake (or an attack on the parser)


def read_yaml(path: str | os.PathLike) -> dict:
    """Parse a YAML mapping; ConfigError with the line number on syntax errors."""
    try:
        import yaml  # optional: in the device extra, not the base install
    except ImportError as e:  # pragma: no cover - install profile
        raise ConfigError("reading config files needs PyYAML: pip install pyyaml") from e
    p = Path(path)
    try:
        if p.is_file() and p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: {p.stat().st_size} bytes is not a config file (limit {MAX_CONFIG_BYTES})")
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a file: {p}") from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:  # deeply nested flow collections ([[[[...): PyYAML recurses per level
        raise ConfigError(f"{p}: nested too deeply to be a config file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of settings at the top level, got {type(data).__name__}")
    return data


def validate_config(model: type[M], data: dict, *, source: str = "config", base_dir: str | os.PathLike | None = None) -> M:
    """Validate a dict against `model`; ConfigError listing every bad field."""
    try:
        return model.model_validate(data, context={"base_dir": Path(base_dir) if base_dir else None})
    except ValidationError as err:
        lines = format_validation_error(err, model)
        n = len(lines)
        raise ConfigError(f"{source}: {n} invalid setting{'s' if n > 1 else ''}:\n  " + "\n  ".join(lines)) from None


def load_yaml_config(model: type[M], path: str | os.PathLike, overrides: dict | None = None) -> M:
    """Read a YAML file into `model`; relative paths resolve against the file's directory."""
    p = Path(path)
    data = read_yaml(p)
    if overrides:
        data = _deep_merge(data, overrides)
    return validate_config(model, data, source=str(p), base_dir=p.resolve().parent)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
