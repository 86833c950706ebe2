"""A state file that cannot run code when it is read: a zip of .npy arrays plus one JSON document.

Why not pickle: unpickling a file runs whatever callables it names, so a state file fetched from a shared
MLflow server (or any folder someone else can write) could run code on the machine that loads it. This
container holds only plain data: one `state.json` member (UTF-8 JSON, no NaN/Infinity) and `<name>.npy`
members (numeric arrays, numpy's .npy format). `np.load(path)` opens it like any .npz; `unzip -p <file>
state.json` shows the document.

Reading never trusts the file: members must be stored uncompressed (as written here, so no member can expand
beyond the file's own size), every array header is checked against its member's size before any memory is
allocated, only plain numeric dtypes are accepted, and StateReader then checks each field's type, range,
shape, dtype and finiteness, naming the field in a StateFileError. Nothing deep in numpy or sklearn should
ever see an unchecked value.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from typing import Any, Iterable

import numpy as np

from infantino.runtime.contract.errors import InfantinoError

JSON_MEMBER = "state.json"
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO_OPCODE = b"\x80"   # first byte of any pickle of protocol >= 2
# plain numeric dtypes (little-endian, as .npy writes them on the machines we run on); object/structured: never
ALLOWED_DTYPES = {np.dtype(t).newbyteorder("<") for t in ("bool", "uint8", "int32", "int64", "float32", "float64")}
MAX_JSON_BYTES = 64 << 20        # the document holds scalars and settings only; a loss curve lives in an array


class StateFileError(InfantinoError):
    """A state file is corrupt, truncated, hostile or of an unknown version; the message names the problem."""


def looks_like_zip(data: bytes) -> bool:
    """True if `data` starts like a zip (an .npz state)."""
    return data[:4] == ZIP_MAGIC


def looks_like_pickle(data: bytes) -> bool:
    """True if `data` starts like a pickle of protocol >= 2 (what the legacy head_state.pkl files are)."""
    return data[:1] == PICKLE_PROTO_OPCODE


# ---- writing --------------------------------------------------------------------------------------------
def pack(doc: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """The file's bytes: state.json (strict JSON) plus one stored .npy member per array.

    Refuses what a reader would refuse (NaN/Inf anywhere, other dtypes), so every written file loads.
    """
    try:
        text = json.dumps(doc, allow_nan=False, sort_keys=True, separators=(",", ":"), default=_json_scalar)
    except (TypeError, ValueError) as e:
        raise StateFileError(f"state cannot be written as JSON: {e}") from None
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(JSON_MEMBER, text.encode("utf-8"))
        for name, a in arrays.items():
            a = np.asarray(a)
            if a.dtype.newbyteorder("<") not in ALLOWED_DTYPES:
                raise StateFileError(f"{name}: dtype {a.dtype} cannot be stored in a state file")
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                raise StateFileError(f"{name} contains NaN or Inf: a head whose training diverged cannot be saved")
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _json_scalar(v: Any):
    """numpy scalars as plain JSON numbers/booleans (json.dumps calls this for types it does not know)."""
    if isinstance(v, np.generic) and v.dtype.kind in "biuf":
        return v.item()
    raise TypeError(f"{type(v).__name__} is not a JSON value")


# ---- reading --------------------------------------------------------------------------------------------
def unpack(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """(document, arrays by name) from a file's bytes, checking the container itself (not the fields)."""
    if not looks_like_zip(data):
        raise StateFileError("not a zip/.npz state file (wrong magic bytes)")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise StateFileError(f"corrupt or truncated zip: {e}") from None
    doc = None
    arrays: dict[str, np.ndarray] = {}
    with zf:
        for info in infos:
            name = info.filename
            if info.compress_type != zipfile.ZIP_STORED:
                raise StateFileError(f"member {name!r} is compressed; state files store members uncompressed")
            if info.file_size > len(data):
                raise StateFileError(f"member {name!r} claims {info.file_size} bytes, more than the whole file")
            raw = _read_member(zf, info)
            if name == JSON_MEMBER:
                doc = _parse_json(raw)
            elif name.endswith(".npy") and len(name) > 4:
                key = name[:-4]
                if key in arrays:
                    raise StateFileError(f"array {key!r} appears twice")
                arrays[key] = _parse_npy(raw, key)
            else:
                raise StateFileError(f"unexpected member {name!r} (only {JSON_MEMBER} and .npy arrays belong here)")
    if doc is None:
        raise StateFileError(f"no {JSON_MEMBER} in the file")
    return doc, arrays


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes (CRC-checked by zipfile)."""
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError) as e:
        raise StateFileError(f"member {info.filename!r} is corrupt or truncated: {e}") from None


def _parse_json(raw: bytes) -> dict:
    """The state document: strict JSON (NaN/Infinity refused), an object at the top."""
    if len(raw) > MAX_JSON_BYTES:
        raise StateFileError(f"{JSON_MEMBER} is {len(raw)} bytes, more than a state document can be")

    def no_constants(token: str):
        raise ValueError(f"{token} is not allowed")

    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise StateFileError(f"{JSON_MEMBER} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise StateFileError(f"{JSON_MEMBER} must hold a JSON object, got {type(doc).__name__}")
    return doc


def _parse_npy(raw: bytes, key: str) -> np.ndarray:
    """One .npy member -> array, checking dtype and that the header's shape matches the data's size exactly
    (before allocating anything, so a header cannot claim a huge array)."""
    f = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, TypeError, SyntaxError, EOFError, OverflowError) as e:
        raise StateFileError(f"array {key!r}: bad .npy header: {e}") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype not in ALLOWED_DTYPES:
        raise StateFileError(f"array {key!r}: dtype {dtype} is not allowed (plain numeric arrays only)")
    if any(n < 0 for n in shape):
        raise StateFileError(f"array {key!r}: negative dimension in shape {shape}")
    count = 1
    for n in shape:
        count *= int(n)
    body = raw[f.tell():]
    if count * dtype.itemsize != len(body):
        raise StateFileError(f"array {key!r}: header says shape {shape} ({count * dtype.itemsize} bytes) but "
                             f"the member holds {len(body)} bytes (truncated or corrupt)")
    a = np.frombuffer(body, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
    return np.array(a, dtype=dtype.newbyteorder("="), order="C")  # own, writable, native byte order


class StateReader:
    """Typed, checked access to a state document and its arrays; errors name the field (dotted path).

    A sub-reader (sub("replay")) reads the JSON object doc["replay"] and the arrays named "replay.<name>".
    finish() on the root refuses arrays nobody read (a file with unexpected content is not half-trusted).
    """

    def __init__(self, doc: dict, arrays: dict[str, np.ndarray], prefix: str = "", used: set | None = None):
        self.doc = doc
        self.arrays = arrays
        self.prefix = prefix
        self.used = set() if used is None else used

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def fail(self, key: str, problem: str):
        raise StateFileError(f"{self.name(key)}: {problem}")

    # -- JSON fields --
    def raw(self, key: str) -> Any:
        if key not in self.doc:
            self.fail(key, "missing")
        return self.doc[key]

    def is_null(self, key: str) -> bool:
        return self.raw(key) is None

    def sub(self, key: str) -> "StateReader":
        v = self.raw(key)
        if not isinstance(v, dict):
            self.fail(key, f"must be a JSON object, got {type(v).__name__}")
        return StateReader(v, self.arrays, f"{self.prefix}{key}.", self.used)

    def int(self, key: str, lo: int | None = 0, hi: int | None = None) -> int:
        v = self.raw(key)
        if not isinstance(v, int) or isinstance(v, bool):
            self.fail(key, f"must be an integer, got {v!r}"[:200])
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(key, f"{v} is outside [{lo}, {hi if hi is not None else '∞'}]")
        return v

    def float(self, key: str, lo: float | None = None, hi: float | None = None, nullable: bool = False):
        v = self.raw(key)
        if v is None and nullable:
            return None
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            self.fail(key, f"must be a finite number, got {v!r}"[:200])
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(key, f"{v} is outside [{lo}, {hi}]")
        return float(v)

    def str(self, key: str, choices: Iterable[str] | None = None, max_len: int = 1000) -> str:
        v = self.raw(key)
        if not isinstance(v, str) or len(v) > max_len:
            self.fail(key, f"must be a string of at most {max_len} characters")
        if choices is not None and v not in choices:
            self.fail(key, f"{v!r} is not one of {', '.join(choices)}")
        return v

    def bool(self, key: str) -> bool:
        v = self.raw(key)
        if not isinstance(v, bool):
            self.fail(key, f"must be true or false, got {v!r}"[:200])
        return v

    def rng(self, key: str) -> np.random.Generator:
        """A numpy Generator (PCG64, what default_rng makes) continuing exactly from the stored state."""
        return rng_from_state(self.raw(key), self.name(key))

    # -- arrays --
    def array(self, key: str, shape: tuple, dtype, finite: bool = True, lo=None, hi=None) -> np.ndarray:
        """The array "<prefix><key>" with exactly this shape and dtype, finite (floats) and within [lo, hi]."""
        name = self.name(key)
        if name not in self.arrays:
            raise StateFileError(f"array {name!r} is missing")
        a = self.arrays[name]
        self.used.add(name)
        if a.dtype != np.dtype(dtype):
            raise StateFileError(f"array {name!r}: dtype {a.dtype}, expected {np.dtype(dtype)}")
        if tuple(a.shape) != tuple(shape):
            raise StateFileError(f"array {name!r}: shape {tuple(a.shape)}, expected {tuple(shape)}")
        if finite and a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise StateFileError(f"array {name!r} contains NaN or Inf")
        if a.size and ((lo is not None and a.min() < lo) or (hi is not None and a.max() > hi)):
            raise StateFileError(f"array {name!r}: values outside [{lo}, {hi}]")
        return a

    def rows(self, key: str) -> int:
        """First dimension of array "<prefix><key>", for arrays whose length the document does not fix (a loss
        curve, a teacher set); array() then checks the whole shape."""
        a = self.arrays.get(self.name(key))
        if a is None or a.ndim == 0:
            raise StateFileError(f"array {self.name(key)!r} is missing or has no rows")
        return int(a.shape[0])

    def finish(self) -> None:
        """Refuse arrays that no field read."""
        extra = sorted(set(self.arrays) - self.used)
        if extra:
            raise StateFileError(f"unexpected arrays in the file: {', '.join(extra[:10])}")


# ---- numpy random generators ----------------------------------------------------------------------------
def rng_to_state(rng: np.random.Generator) -> dict:
    """The JSON-able state of a PCG64 Generator (its bit generator's state dict)."""
    st = rng.bit_generator.state
    if st.get("bit_generator") != "PCG64":
        raise StateFileError(f"only PCG64 generators can be saved, got {st.get('bit_generator')!r}")
    return {"bit_generator": "PCG64", "state": {"state": int(st["state"]["state"]), "inc": int(st["state"]["inc"])},
            "has_uint32": int(st["has_uint32"]), "uinteger": int(st["uinteger"])}


def rng_from_state(st: Any, name: str) -> np.random.Generator:
    """A Generator at state `st` (from rng_to_state); a malformed state names `name`."""
    ok = (isinstance(st, dict) and set(st) == {"bit_generator", "state", "has_uint32", "uinteger"}
          and st["bit_generator"] == "PCG64" and isinstance(st["state"], dict) and set(st["state"]) == {"state", "inc"}
          and all(_is_uint(v, 128) for v in st["state"].values()) and st["has_uint32"] in (0, 1)
          and _is_uint(st["uinteger"], 32))
    if not ok:
        raise StateFileError(f"{name}: not a PCG64 generator state")
    bg = np.random.PCG64()
    try:
        bg.state = st
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        raise StateFileError(f"{name}: bad generator state: {e}") from None
    return np.random.Generator(bg)


def _is_uint(v: Any, bits: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (1 << bits)
