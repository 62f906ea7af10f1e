"""Trace files: ``trace.save(path)`` and ``mmviz.load(path)``, safetensors arrays with a JSON sidecar, no pickle.

A trace file is a directory, or one ``.mmviz`` zip of that directory:

* ``trace.json``: the sidecar (format name, schema version, the versions that wrote it, the model's name, revision,
  dtype and fingerprint, the processor's config, prompt, answer, tokens, the layout's image geometry, the capture,
  and every map's and kept result's settings and ``info``);
* ``arrays.safetensors``: every array. Attention rows (and the vision tower's attention) are stored min–max
  quantised to uint8 per row, like the widget's wire format: each value is off by at most half its row's step,
  ``(max − min) / 510`` (:data:`QUANTISATION`); hidden states as float16; everything else exactly;
* ``image-<k>.png``: the original images.

Loading reads the sidecar and the safetensors header only. The big arrays are :class:`StoredArray` s, read one
leading-axis slice at a time (one layer of attention rows when a view asks for it) through safetensors' memory-mapped
``safe_open``. Nothing is unpickled, and nothing in a file can run code: a damaged or hostile file raises
:class:`TraceFormatError` naming what is wrong.

Example:
    >>> trace.save("cat.mmviz")                                   # doctest: +SKIP
    >>> loaded = mmviz.load("cat.mmviz")                          # no model needed   # doctest: +SKIP
    >>> mmviz.inspect(loaded)                                     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from mmviz import wire
from mmviz._version import __version__
from mmviz.adapters import TokenLayout
from mmviz.adapters.layout import KINDS, LAYOUT_SOURCES, VIEWS, CrossKeys, ImageGeometry, SoftCells
from mmviz.adapters.tokens import word_starts
from mmviz.errors import TraceFormatError
from mmviz.records.map import Map

FORMAT = "mmviz.trace"
CROSS_KEY_ARRAYS = {
    "boxes": "float32",
    "grid": "int64",
    "grid_shape": "int64",
    "image_index": "int64",
    "view": "uint8",
    "anchors": "int64",
}
"""The arrays of a cross-attention family's :class:`~mmviz.adapters.layout.CrossKeys` (``layout.keys.<name>``)."""
SCHEMA = 1
SIDECAR = "trace.json"
ARRAYS = "arrays.safetensors"
MAX_SIDECAR_BYTES = 256 * 2**20
MAX_IMAGE_PIXELS = 2**28
QUANTISATION = (
    "attention rows and vision attention: uint8, min–max per row; each value is off by at most half its row's step, "
    "(max − min) / 510. Hidden states: float16. Everything else: exact."
)

_T = TypeVar("_T")
_SAFETENSORS_DTYPES = {"U8": "uint8", "F16": "float16", "F32": "float32", "I64": "int64", "BOOL": "bool"}


# -- kept results (the logit lens, the projection): registered by their types, rebuilt only from this registry ------
RESULT_TYPES: dict[str, type] = {}


def kept_result(name: str) -> Callable[[type[_T]], type[_T]]:
    """Register a dataclass whose instances ``trace.computed`` keeps, so that trace files can save and rebuild them.

    Its fields may hold arrays, maps, numbers, strings and lists of them. A file names the type by ``name``; only
    registered types are ever built from a file.

    Example:
        >>> @kept_result("my_summary")                             # doctest: +SKIP
        ... @dataclass(frozen=True)
        ... class MySummary:
        ...     scores: np.ndarray
    """

    def register(cls: type[_T]) -> type[_T]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"kept_result needs a dataclass, not {cls!r}")
        RESULT_TYPES[name] = cls
        cls._kept_as = name  # type: ignore[attr-defined]
        return cls

    return register


# -- lazily read arrays ------------------------------------------------------------------------------------------
class _Arrays:
    """The file's safetensors, opened once (memory-mapped)."""

    def __init__(self, path: Path, keep_alive: Any = None) -> None:
        self.path = path
        self.keep_alive = keep_alive  # the temporary directory a zip was unpacked into
        try:
            self.handle = safe_open(str(path), framework="numpy")
        except (SafetensorError, OSError, ValueError) as error:
            raise TraceFormatError(f"{ARRAYS} is not a readable safetensors file: {error}") from error
        self.names = set(self.handle.keys())

    def read(self, name: str, index: Any = None) -> np.ndarray:
        if name not in self.names:
            raise TraceFormatError(f"{ARRAYS} has no tensor {name!r}")
        try:
            values = self.handle.get_tensor(name) if index is None else self.handle.get_slice(name)[index]
        except (SafetensorError, OSError, ValueError, TypeError, IndexError) as error:
            raise TraceFormatError(f"tensor {name!r} cannot be read: {error}") from error
        return values

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.names:
            raise TraceFormatError(f"{ARRAYS} has no tensor {name!r}")
        return tuple(self.handle.get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        """The tensor's dtype as NumPy names it (safetensors says ``U8``, ``F32``...)."""
        code = str(self.handle.get_slice(name).get_dtype())
        return _SAFETENSORS_DTYPES.get(code, code)


class StoredArray:
    """A float32 array in a trace file, read one leading-axis slice at a time.

    Indexing reads only the leading-axis entries the index asks for (``rows[3]`` reads layer 3) and returns a NumPy
    array; anything else (``np.asarray``, ``.mean()``) reads the whole array. :attr:`bytes_read` counts the bytes
    read for it (the per-row scales of a quantised array, one float each, are read when the file is opened).

    Example:
        >>> loaded = mmviz.load("cat.mmviz")                          # doctest: +SKIP
        >>> loaded.attention_rows[0].shape      # layer 0 only           # doctest: +SKIP
        (32, 64, 640)
    """

    def __init__(
        self, arrays: _Arrays, name: str, shape: tuple[int, ...], scales: tuple[np.ndarray, np.ndarray] | None = None
    ) -> None:
        self._arrays, self._name, self._scales = arrays, name, scales  # scales: None for float16
        self.shape = shape
        self.dtype = np.dtype(np.float32)
        self.bytes_read = 0

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: math.prod(self.shape))
    nbytes = property(lambda self: 4 * self.size)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        encoding = "float16" if self._scales is None else "uint8 per row"
        return f"<mmviz.StoredArray {self._name} {self.shape} ({encoding}), read on demand>"

    def _read(self, first: int | slice) -> np.ndarray:
        """Leading-axis entries ``first``, as float32."""
        if self._scales is None:
            values = self._arrays.read(self._name, first)
            self.bytes_read += values.nbytes
            return values.astype(np.float32)
        codes = self._arrays.read(f"{self._name}.codes", first)
        self.bytes_read += codes.nbytes
        scale, offset = (part[first] for part in self._scales)
        return offset[..., None] + codes.astype(np.float32) * scale[..., None]

    def __getitem__(self, key: Any) -> np.ndarray:
        parts = key if isinstance(key, tuple) else (key,)
        first, rest = (parts[0], parts[1:]) if parts else (slice(None), ())
        if isinstance(first, int | np.integer) and not isinstance(first, bool):
            index = int(first) + (self.shape[0] if first < 0 else 0)
            if not 0 <= index < self.shape[0]:
                raise IndexError(f"index {first} is out of range for {self.shape[0]} entries")
            return self._read(index)[rest] if rest else self._read(index)
        if isinstance(first, slice):
            start, stop, step = first.indices(self.shape[0])
            block = self._read(slice(start, max(start, stop))) if step > 0 else self._read(slice(None))
            stepped = block[::step] if step > 0 else block[first]
            return stepped[(slice(None), *rest)] if rest else stepped
        return self._read(slice(None))[key]  # Ellipsis, index arrays, masks: the whole array

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        values = self[:]
        return values if dtype is None else values.astype(dtype)

    def __getattr__(self, name: str) -> Any:  # .mean(), .astype(), .sum() ... on the whole array
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(np.asarray(self), name)


# -- save --------------------------------------------------------------------------------------------------------
def save(trace: Any, path: str | Path) -> Path:
    """Write ``trace`` to ``path``: a directory, or one zip when the name ends in ``.mmviz``. Returns the path.

    Example:
        >>> mmviz.trace(model, processor, "cat.png", "What is it?").save("cat.mmviz")   # doctest: +SKIP
        PosixPath('cat.mmviz')
    """
    target = Path(path)
    arrays: dict[str, np.ndarray] = {}
    sidecar = _sidecar(trace, arrays)
    images = {f"image-{index}.png": _png(image) for index, image in enumerate(trace.images)}
    sidecar["images"] = list(images)
    files = {SIDECAR: json.dumps(sidecar, ensure_ascii=False, allow_nan=False).encode("utf-8"), **images}
    with tempfile.TemporaryDirectory() as scratch:
        tensors = Path(scratch) / ARRAYS
        save_file({name: np.ascontiguousarray(value) for name, value in arrays.items()}, str(tensors))
        if target.suffix == ".mmviz":
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
                for name, data in files.items():
                    archive.writestr(name, data)
                archive.write(tensors, ARRAYS)
            partial.replace(target)  # never a half-written file under the real name
        else:
            target.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                (target / name).write_bytes(data)
            shutil.copyfile(tensors, target / ARRAYS)
    return target


def _sidecar(trace: Any, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    layout: TokenLayout = trace.layout
    arrays.update(
        {
            "token_ids": np.asarray(trace.token_ids, np.int64),
            "answer_logprobs": np.asarray(trace.answer_logprobs, np.float32),
            "query_positions": np.asarray(trace.query_positions, np.int64),
            "layers": np.asarray(trace.layers, np.int64),
            "word_starts": _word_starts(trace),
            "layout.kinds": np.asarray(layout.kinds, np.uint8),
            "layout.image_index": np.asarray(layout.image_index, np.int64),
            "layout.view": np.asarray(layout.view, np.uint8),
            "layout.grid": np.asarray(layout.grid, np.int64),
            "layout.grid_shape": np.asarray(layout.grid_shape, np.int64),
            "layout.boxes": np.asarray(layout.boxes, np.float32),
        }
    )
    soft = None
    if layout.soft is not None:
        cells = layout.soft
        for field_name in ("positions", "weights", "boxes", "grid", "image_index"):
            arrays[f"layout.soft.{field_name}"] = np.asarray(getattr(cells, field_name))
        soft = {"grid_shape": list(cells.grid_shape), "label": cells.label}
    if layout.frames is not None:  # a video: the frame span of every position
        arrays["layout.frames"] = np.asarray(layout.frames, np.int64)
    keys = None
    if layout.keys is not None:  # a cross-attention family: the image columns are cross-attention keys
        for field_name, dtype in CROSS_KEY_ARRAYS.items():
            arrays[f"layout.keys.{field_name}"] = np.asarray(getattr(layout.keys, field_name), dtype)
        keys = {"label": layout.keys.label}
    stored = {"attention_rows": _quantised(arrays, "attention_rows", trace.attention_rows)}
    if trace.hidden_states is not None:
        arrays["hidden_states"] = np.asarray(trace.hidden_states).astype(np.float16)
        stored["hidden_states"] = {"encoding": "float16", "shape": list(np.shape(trace.hidden_states))}
    if trace.vision_attention is not None:
        stored["vision_attention"] = _quantised(arrays, "vision_attention", trace.vision_attention)
    return {
        "format": FORMAT,
        "schema": SCHEMA,
        "written_by": _versions(),
        "model": _model_description(trace),
        "quantisation": QUANTISATION,
        "family": trace.family,
        "prompt": trace.prompt,
        "answer": trace.answer,
        "answer_start": int(trace.answer_start),
        "tokens": list(trace.tokens),
        "num_layers": int(trace.num_layers),
        "num_heads": int(trace.num_heads),
        "head_mean": bool(trace.head_mean),
        "layout": {
            "images": [geometry.to_dict() for geometry in layout.images],
            "soft": soft,
            "source": layout.source,
            "video": layout.frames is not None,
            "keys": keys,
        },
        "stored": stored,
        "maps": {name: _encode_map(result, f"maps.{name}", arrays) for name, result in trace.maps.items()},
        "results": {
            key: {"type": type(value)._kept_as, "fields": _encode_fields(value, f"results.{key}", arrays)}
            for key, value in trace.results.items()
            if type(value) in RESULT_TYPES.values()
        },
    }


def _quantised(arrays: dict[str, np.ndarray], name: str, values: Any) -> dict[str, Any]:
    """Store ``values`` as uint8 codes with one scale and offset per row (the wire format's quantisation)."""
    values = np.asarray(values, np.float32)
    envelope = wire.encode(values)
    rows = values.shape[:-1]
    arrays[f"{name}.codes"] = np.frombuffer(envelope["data"], np.uint8).reshape(values.shape)
    arrays[f"{name}.scale"] = np.frombuffer(envelope["scale"], "<f4").reshape(rows)
    arrays[f"{name}.offset"] = np.frombuffer(envelope["offset"], "<f4").reshape(rows)
    return {"encoding": "uint8-rows", "shape": list(values.shape)}


def _word_starts(trace: Any) -> np.ndarray:
    if trace.word_starts is not None:
        return np.asarray(trace.word_starts, np.uint8)
    tokenizer = trace.run.adapter.tokenizer if trace.run is not None else None
    text = trace.layout.kinds == KINDS.index("text")
    return np.asarray(word_starts(tokenizer, trace.layout.tokens, text), np.uint8)


def _versions() -> dict[str, str]:
    import transformers

    return {"mmviz": __version__, "transformers": transformers.__version__, "torch": torch.__version__}


def _model_description(trace: Any) -> dict[str, Any]:
    """Who made the trace: from the model when it is attached, else what the trace was loaded with."""
    if trace.run is None:
        return dict(trace.provenance.get("model", {"name": trace.model_name}))
    model = trace.run.model
    processor = trace.run.adapter.processor
    try:
        processor_config = json.loads(json.dumps(processor.to_dict(), default=str))
    except (TypeError, ValueError, AttributeError):  # pragma: no cover - a processor without a serialisable config
        processor_config = None
    return {
        "name": trace.model_name,
        "class": type(model).__name__,
        "revision": getattr(model.config, "_commit_hash", None),
        "dtype": str(model.dtype).removeprefix("torch."),
        "fingerprint": model_fingerprint(model),
        "processor": processor_config,
    }


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of a model's architecture and weights: its config (without paths and versions), every parameter's name,
    shape and dtype, and the first and last 64 values of each. Cheap at any size; equal for the same checkpoint.

    Example:
        >>> model_fingerprint(model) == model_fingerprint(copy.deepcopy(model))   # doctest: +SKIP
        True
    """
    digest = hashlib.sha256(type(model).__name__.encode())
    config = model.config.to_dict()
    for volatile in ("_name_or_path", "_commit_hash", "transformers_version", "_attn_implementation_autoset"):
        config.pop(volatile, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            digest.update(f"{name}{tuple(parameter.shape)}{parameter.dtype}".encode())
            if parameter.device.type == "meta" or parameter.numel() == 0:
                continue
            flat = parameter.detach().reshape(-1)
            sample = torch.cat([flat[:64], flat[-64:]]).float().cpu().numpy()
            digest.update(sample.tobytes())
    return digest.hexdigest()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


# -- generic values: JSON where JSON can say it, arrays by name, maps, and a few tagged forms --------------------------
def _encode(value: Any, name: str, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        arrays[name] = value
        return {"$array": name}
    if isinstance(value, Map):
        return {"$map": _encode_map(value, name, arrays)}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple):
        return {"$tuple": [_encode(item, f"{name}.{i}", arrays) for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(item, f"{name}.{i}", arrays) for i, item in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        encoded = {key: _encode(item, f"{name}.{key}", arrays) for key, item in value.items()}
        return {"$dict": encoded} if any(key.startswith("$") for key in value) else encoded
    return {"$repr": repr(value)}  # kept for reading, not rebuilt (a setting object, say)


def _encode_map(result: Map, name: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "method": result.method,
        "label": result.label,
        "meaning": result.meaning,
        "signed": bool(result.signed),
        "rows": result.rows,
        "info": _encode(result.info, f"{name}.info", arrays),
        **{
            part: _encode(getattr(result, part), f"{name}.{part}", arrays)
            for part in ("values", "positions", "columns", "layers", "text_values")
        },
    }


def _encode_fields(value: Any, name: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        field.name: _encode(getattr(value, field.name), f"{name}.{field.name}", arrays)
        for field in dataclasses.fields(value)
    }


# -- load --------------------------------------------------------------------------------------------------------
def load(path: str | Path, trace_type: type[_T]) -> _T:
    """Read a trace file (see :func:`save`); called by :func:`mmviz.load`. Raises :class:`TraceFormatError`."""
    source = Path(path)
    try:
        return _load(source, trace_type)
    except TraceFormatError as error:
        raise TraceFormatError(f"{source}: {error}") from None
    except RecursionError:
        raise TraceFormatError(f"{source}: {SIDECAR} is nested too deeply to be a trace file") from None
    except MemoryError:
        raise TraceFormatError(f"{source}: the file declares more data than can be read") from None
    except Exception as error:  # anything a damaged file trips in numpy, PIL or the constructors
        raise TraceFormatError(f"{source}: not a readable trace file ({type(error).__name__}: {error})") from None


def _load(source: Path, trace_type: type[_T]) -> _T:
    if source.is_dir():
        files: Callable[[str], bytes] = functools.partial(_member, source)
        arrays = _Arrays(_member_path(source, ARRAYS))
    elif source.is_file():
        files, arrays = _open_zip(source)
    else:
        raise TraceFormatError("no such file or directory")
    sidecar = _parse_sidecar(files(SIDECAR))
    return _build(sidecar, arrays, files, trace_type)


def _member_path(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.is_file() or path.is_symlink():
        raise TraceFormatError(f"{name} is missing")
    return path


def _member(directory: Path, name: str) -> bytes:
    path = _member_path(directory, name)
    if path.stat().st_size > (MAX_SIDECAR_BYTES if name == SIDECAR else 4 * MAX_IMAGE_PIXELS):
        raise TraceFormatError(f"{name} is too large")
    return path.read_bytes()


def _open_zip(source: Path) -> tuple[Callable[[str], bytes], _Arrays]:
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as error:
        raise TraceFormatError(f"not a trace directory or .mmviz zip: {error}") from None
    with archive:
        members = {}
        for info in archive.infolist():
            name = info.filename
            if name.startswith(("/", "\\")) or ".." in Path(name).parts or "/" in name or "\\" in name:
                raise TraceFormatError(f"the zip holds a path outside the trace: {name!r}")
            if info.is_dir() or (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise TraceFormatError(f"the zip holds a directory or a link: {name!r}")
            members[name] = info
        if ARRAYS not in members or SIDECAR not in members:
            raise TraceFormatError(f"the zip lacks {SIDECAR if SIDECAR not in members else ARRAYS}")
        if members[SIDECAR].file_size > MAX_SIDECAR_BYTES:
            raise TraceFormatError(f"{SIDECAR} is too large")
        small = {name: archive.read(info) for name, info in members.items() if name != ARRAYS}
        scratch = tempfile.TemporaryDirectory(prefix="mmviz-trace-")
        unpacked = Path(scratch.name) / ARRAYS
        with archive.open(members[ARRAYS]) as packed, unpacked.open("wb") as out:
            shutil.copyfileobj(packed, out, 2**20)  # the CRC is checked as it is read
    arrays = _Arrays(unpacked, keep_alive=scratch)

    def read(name: str) -> bytes:
        if name not in small:
            raise TraceFormatError(f"{name} is missing")
        return small[name]

    return read, arrays


def _parse_sidecar(raw: bytes) -> dict[str, Any]:
    try:
        sidecar = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TraceFormatError(f"{SIDECAR} is not JSON: {error}") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise TraceFormatError(f"{SIDECAR} is not an mmviz trace (format {FORMAT!r} expected)")
    schema = sidecar.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise TraceFormatError(f"{SIDECAR} has no schema version")
    if schema > SCHEMA:
        written = sidecar.get("written_by")
        by = written.get("mmviz", "?") if isinstance(written, dict) else "?"
        raise TraceFormatError(
            f"written by a newer mmviz (schema {schema}, mmviz {by}); this mmviz {__version__} reads schema ≤ "
            f"{SCHEMA}: upgrade mmviz"
        )
    if schema < 1:
        raise TraceFormatError(f"{SIDECAR} has an invalid schema version {schema}")
    return sidecar


def _field(sidecar: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in sidecar:
        raise TraceFormatError(f"{SIDECAR} lacks {key!r}")
    value = sidecar[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise TraceFormatError(f"{SIDECAR}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _array(arrays: _Arrays, name: str, dtype: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """A small array read whole, checked against its expected dtype and shape (None: any length)."""
    values = arrays.read(name)
    if (
        values.dtype != np.dtype(dtype)
        or values.ndim != len(shape)
        or any(want is not None and got != want for got, want in zip(values.shape, shape, strict=True))
    ):
        raise TraceFormatError(
            f"tensor {name!r} is {values.dtype} {values.shape}, expected {dtype} "
            f"{tuple('any' if n is None else n for n in shape)}"
        )
    boxes = name in ("layout.boxes", "layout.keys.boxes")
    finite = values[~np.isnan(values)] if boxes else values  # NaN boxes: positions (keys) without one
    if values.dtype.kind == "f" and not np.isfinite(finite).all():
        raise TraceFormatError(f"tensor {name!r} holds non-finite values")
    return values


def _in_range(name: str, values: np.ndarray, low: int, high: int) -> None:
    if values.size and (int(values.min()) < low or int(values.max()) >= high):
        raise TraceFormatError(f"tensor {name!r} holds values outside {low}…{high - 1}")


def _stored(arrays: _Arrays, sidecar: dict[str, Any], name: str, shape: tuple[int | None, ...]) -> StoredArray:
    entry = _field(sidecar, "stored", dict).get(name)
    if not isinstance(entry, dict) or entry.get("encoding") not in ("uint8-rows", "float16"):
        raise TraceFormatError(f"{SIDECAR}: the stored array {name!r} has no known encoding")
    declared = entry.get("shape")
    if not isinstance(declared, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in declared):
        raise TraceFormatError(f"{SIDECAR}: the stored array {name!r} has no shape")
    if len(declared) != len(shape) or any(w is not None and g != w for g, w in zip(declared, shape, strict=True)):
        raise TraceFormatError(f"{name} has shape {tuple(declared)}, expected {shape}")
    parts = {"": ("float16", declared)} if entry["encoding"] == "float16" else {
        ".codes": ("uint8", declared), ".scale": ("float32", declared[:-1]), ".offset": ("float32", declared[:-1])
    }  # fmt: skip
    for suffix, (dtype, expected) in parts.items():
        tensor = f"{name}{suffix}"
        if arrays.shape(tensor) != tuple(expected) or arrays.dtype(tensor) != dtype:
            raise TraceFormatError(f"tensor {tensor!r} is {arrays.dtype(tensor)} {arrays.shape(tensor)}, expected "
                                   f"{dtype} {tuple(expected)}")  # fmt: skip
    if entry["encoding"] == "float16":
        return StoredArray(arrays, name, tuple(declared))
    scales = (arrays.read(f"{name}.scale"), arrays.read(f"{name}.offset"))
    if not all(np.isfinite(part).all() for part in scales):
        raise TraceFormatError(f"the scales of {name!r} hold non-finite values")
    return StoredArray(arrays, name, tuple(declared), scales)


def _decode(value: Any, arrays: _Arrays, depth: int = 0) -> Any:
    if depth > 64:
        raise TraceFormatError(f"{SIDECAR} nests values too deeply")
    if isinstance(value, list):
        return [_decode(item, arrays, depth + 1) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((tag, inner),) = value.items()
        if tag == "$array":
            return arrays.read(_string(inner, tag))
        if tag == "$map":
            return _decode_map(inner, arrays, depth + 1)
        if tag == "$float":
            if inner not in ("nan", "inf", "-inf"):
                raise TraceFormatError(f"{SIDECAR}: {inner!r} is not a float")
            return float(inner)
        if tag == "$tuple":
            return tuple(_decode(_list(inner, tag), arrays, depth + 1))
        if tag == "$repr":
            return _string(inner, tag)
        if tag == "$dict":
            return {key: _decode(item, arrays, depth + 1) for key, item in _dict(inner, tag).items()}
        if tag.startswith("$"):
            raise TraceFormatError(f"{SIDECAR}: unknown tagged value {tag!r}")
    return {key: _decode(item, arrays, depth + 1) for key, item in value.items()}


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TraceFormatError(f"{SIDECAR}: {what} must be a string")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise TraceFormatError(f"{SIDECAR}: {what} must be a list")
    return value


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TraceFormatError(f"{SIDECAR}: {what} must be an object")
    return value


def _decode_map(entry: Any, arrays: _Arrays, depth: int = 0) -> Map:
    entry = _dict(entry, "a map")
    parts = {part: _decode(entry.get(part), arrays, depth + 1) for part in
             ("values", "positions", "columns", "layers", "text_values")}  # fmt: skip
    for part in ("values", "positions", "columns"):
        if not isinstance(parts[part], np.ndarray):
            raise TraceFormatError(f"a map lacks its {part}")
    if parts["values"].dtype != np.float32 or not np.isfinite(parts["values"]).all():
        raise TraceFormatError(f"map {entry.get('method')!r}: values must be finite float32")
    info = _decode(entry.get("info", {}), arrays, depth + 1)
    rows = entry.get("rows")
    if rows not in ("targets", "queries") or not isinstance(info, dict):
        raise TraceFormatError(f"map {entry.get('method')!r} has malformed rows or info")
    return Map(
        method=_string(entry.get("method"), "a map's method"),
        label=_string(entry.get("label"), "a map's label"),
        meaning=_string(entry.get("meaning"), "a map's meaning"),
        signed=bool(entry.get("signed")),
        rows=rows,
        info=info,
        **{part: value for part, value in parts.items()},
    )


def _build(sidecar: dict[str, Any], arrays: _Arrays, files: Callable[[str], bytes], trace_type: type[_T]) -> _T:
    tokens = _field(sidecar, "tokens", list)
    if not all(isinstance(token, str) for token in tokens):
        raise TraceFormatError(f"{SIDECAR}: tokens must be strings")
    n = len(tokens)
    num_layers, num_heads = _field(sidecar, "num_layers", int), _field(sidecar, "num_heads", int)
    answer_start = _field(sidecar, "answer_start", int)
    if num_layers < 1 or num_heads < 1 or not 0 <= answer_start <= n:
        raise TraceFormatError(f"{SIDECAR}: layers, heads or answer start out of range")
    head_mean = _field(sidecar, "head_mean", bool)

    image_names = _field(sidecar, "images", list)
    images = [_image(files, name) for name in image_names]
    layout = _layout(sidecar, arrays, tokens, len(images))
    layers = _array(arrays, "layers", "int64", (None,))
    _in_range("layers", layers, 0, num_layers)
    queries = _array(arrays, "query_positions", "int64", (None,))
    _in_range("query_positions", queries, 0, n)
    heads = 1 if head_mean else num_heads
    columns = n if layout.keys is None else len(layout.keys)  # rows run over the cross-attention keys there
    rows = _stored(arrays, sidecar, "attention_rows", (len(layers), heads, len(queries), columns))
    stored = _field(sidecar, "stored", dict)
    hidden = _stored(arrays, sidecar, "hidden_states", (num_layers + 1, n, None)) if "hidden_states" in stored else None
    vision = (
        _stored(arrays, sidecar, "vision_attention", (None, len(images), None, None, None))
        if "vision_attention" in stored
        else None
    )
    maps = {name: _decode_map(entry, arrays) for name, entry in _field(sidecar, "maps", dict).items()}
    for name, result in maps.items():
        if result.values.shape[-1] and result.columns.size and int(result.columns.max()) >= columns:
            raise TraceFormatError(f"map {name!r} has columns outside the sequence (or the cross-attention keys)")
    trace = trace_type(
        tokens=tokens,
        token_ids=_array(arrays, "token_ids", "int64", (n,)),
        layout=layout,
        prompt=_field(sidecar, "prompt", str),
        answer=_field(sidecar, "answer", str),
        answer_start=answer_start,
        answer_logprobs=_array(arrays, "answer_logprobs", "float32", (None,)),
        images=images,
        family=_field(sidecar, "family", str),
        model_name=str(_dict(_field(sidecar, "model", dict), "model").get("name", "")),
        num_layers=num_layers,
        num_heads=num_heads,
        query_positions=queries,
        attention_rows=rows,  # type: ignore[arg-type]
        layers=layers,
        head_mean=head_mean,
        hidden_states=hidden,  # type: ignore[arg-type]
        vision_attention=vision,  # type: ignore[arg-type]
        maps=maps,
        run=None,
        word_starts=_array(arrays, "word_starts", "uint8", (n,)).astype(bool),
        provenance={"model": sidecar["model"], "written_by": sidecar.get("written_by"), "schema": sidecar["schema"]},
    )
    for key, entry in _field(sidecar, "results", dict).items():
        trace.results[key] = _result(entry, arrays)  # type: ignore[attr-defined]
    return trace


def _result(entry: Any, arrays: _Arrays) -> Any:
    entry = _dict(entry, "a kept result")
    cls = RESULT_TYPES.get(entry.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise TraceFormatError(f"unknown kept result type {entry.get('type')!r}")
    fields = _dict(entry.get("fields"), "a kept result's fields")
    expected = {field.name for field in dataclasses.fields(cls)}
    # Fields with defaults may be missing: files written before such a field was added still load.
    optional = {
        field.name
        for field in dataclasses.fields(cls)
        if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
    }
    if not expected - optional <= set(fields) <= expected:
        raise TraceFormatError(f"a kept {entry['type']} has fields {sorted(fields)}, expected {sorted(expected)}")
    return cls(**{name: _decode(value, arrays) for name, value in fields.items()})


def _image(files: Callable[[str], bytes], name: Any) -> Image.Image:
    if not isinstance(name, str) or not name.startswith("image-") or not name.endswith(".png") or "/" in name:
        raise TraceFormatError(f"{SIDECAR}: {name!r} is not an image of the trace")
    try:
        with Image.open(io.BytesIO(files(name))) as image:
            if image.format != "PNG" or image.width * image.height > MAX_IMAGE_PIXELS:
                raise TraceFormatError(f"{name} is not a PNG of a sensible size")
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError, ValueError) as error:
        raise TraceFormatError(f"{name} is not a readable PNG: {error}") from None


def _layout(sidecar: dict[str, Any], arrays: _Arrays, tokens: list[str], n_images: int) -> TokenLayout:
    n = len(tokens)
    described = _dict(_field(sidecar, "layout", dict), "layout")
    geometries = _list(described.get("images"), "layout images")
    if len(geometries) != n_images:
        raise TraceFormatError(f"the layout describes {len(geometries)} images, the file holds {n_images}")
    images = []
    for geometry in geometries:
        geometry = _dict(geometry, "an image geometry")
        covered = geometry.get("covered")
        width, height = geometry.get("width"), geometry.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and isinstance(covered, list) and len(covered) == 4
                and all(isinstance(v, int | float) and math.isfinite(v) for v in covered)):  # fmt: skip
            raise TraceFormatError("an image geometry is malformed")
        images.append(ImageGeometry(width, height, tuple(float(v) for v in covered)))  # type: ignore[arg-type]
    kinds = _array(arrays, "layout.kinds", "uint8", (n,))
    _in_range("layout.kinds", kinds, 0, len(KINDS))
    image_index = _array(arrays, "layout.image_index", "int64", (n,))
    _in_range("layout.image_index", image_index, -1, max(n_images, 1))
    soft = None
    soft_described = described.get("soft")
    if soft_described is not None:
        soft_described = _dict(soft_described, "soft cells")
        positions = arrays.read("layout.soft.positions")
        _in_range("layout.soft.positions", positions, 0, n)
        shape = _list(soft_described.get("grid_shape"), "soft grid shape")
        soft = SoftCells(
            positions=positions,
            weights=arrays.read("layout.soft.weights"),
            boxes=arrays.read("layout.soft.boxes"),
            grid=arrays.read("layout.soft.grid"),
            grid_shape=(int(shape[0]), int(shape[1])),
            image_index=arrays.read("layout.soft.image_index"),
            label=_string(soft_described.get("label"), "soft cells' label"),
        )
    frames = None
    if described.get("video", False) is True:  # the frame span of every position, -1 outside the video
        frames = _array(arrays, "layout.frames", "int64", (n, 2))
        _in_range("layout.frames", frames, -1, max(n_images, 1))
        if ((frames[:, 0] > frames[:, 1]) | ((frames[:, 0] < 0) != (frames[:, 1] < 0))).any():
            raise TraceFormatError("tensor 'layout.frames' holds a frame span whose first frame is after its last")
    keys = None
    keys_described = described.get("keys")
    if keys_described is not None:
        keys_described = _dict(keys_described, "cross-attention keys")
        n_keys = len(arrays.read("layout.keys.anchors"))
        shapes = {"boxes": (n_keys, 4), "grid": (n_keys, 2), "grid_shape": (n_keys, 2)}
        parts = {
            name: _array(arrays, f"layout.keys.{name}", dtype, shapes.get(name, (n_keys,)))
            for name, dtype in CROSS_KEY_ARRAYS.items()
        }
        _in_range("layout.keys.image_index", parts["image_index"], -1, max(n_images, 1))
        _in_range("layout.keys.anchors", parts["anchors"], -1, n)
        _in_range("layout.keys.view", parts["view"], 0, len(VIEWS))
        keys = CrossKeys(**parts, label=_string(keys_described.get("label"), "cross-attention keys' label"))
    source = described.get("source", "adapter")  # files written before layouts were measured
    if source not in LAYOUT_SOURCES:
        raise TraceFormatError(f"the layout's source must be one of {list(LAYOUT_SOURCES)}, not {ascii(source)[:60]}")
    return TokenLayout(
        tokens=tokens,
        kinds=kinds,
        image_index=image_index,
        view=_array(arrays, "layout.view", "uint8", (n,)),
        grid=_array(arrays, "layout.grid", "int64", (n, 2)),
        grid_shape=_array(arrays, "layout.grid_shape", "int64", (n, 2)),
        boxes=_array(arrays, "layout.boxes", "float32", (n, 4)),
        images=images,
        soft=soft,
        source=source,
        frames=None if frames is None else frames.astype(np.int32),
        keys=keys,
    )
