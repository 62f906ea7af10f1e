"""The binary tensor envelope (version 1) that carries arrays to the browser.

See ``docs/widget-protocol.md``. A uint8 envelope min–max quantises every slice over the trailing axes, so each
value is off by at most half a quantisation step (1/510 of its slice's range). ``js/src/codec.ts`` mirrors
:func:`decode`; both decode the shared fixture ``tests/fixtures/envelope_v1.json``.

Example:
    >>> import numpy as np
    >>> env = encode(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    >>> decode(env).round(3).tolist()
    [[0.0, 0.502, 1.0]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

VERSION = 1
_FLOAT_DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}


def encode(values: np.ndarray, *, dtype: str = "uint8", scale_dims: int | None = None) -> dict[str, Any]:
    """Pack ``values`` into an envelope.

    Args:
        values: any real array; it is made C-contiguous.
        dtype: ``"uint8"`` (quantised with per-slice scale and offset), ``"float16"`` or ``"float32"``.
        scale_dims: uint8 only; how many leading axes index the scale (default ``ndim - 1``: one range per row).
    """
    array = np.ascontiguousarray(values, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError("cannot encode non-finite values; replace NaN/inf before sending them to the widget")
    envelope: dict[str, Any] = {"v": VERSION, "dtype": dtype, "shape": list(array.shape)}
    if dtype in _FLOAT_DTYPES:
        envelope["data"] = array.astype(_FLOAT_DTYPES[dtype]).tobytes()
        return envelope
    if dtype != "uint8":
        raise ValueError(f"unknown envelope dtype {dtype!r}; use 'uint8', 'float16' or 'float32'")
    k = max(array.ndim - 1, 0) if scale_dims is None else scale_dims
    if not 0 <= k <= array.ndim:
        raise ValueError(f"scale_dims must be between 0 and {array.ndim}, got {k}")
    n_slices = int(np.prod(array.shape[:k], dtype=np.int64))
    flat = array.reshape(n_slices, -1)
    low = flat.min(axis=1) if flat.shape[1] else np.zeros(n_slices, np.float32)
    high = flat.max(axis=1) if flat.shape[1] else np.zeros(n_slices, np.float32)
    scale = ((high - low) / 255.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    codes = np.rint((flat - low[:, None]) / safe[:, None])
    envelope.update(
        scale_dims=k,
        scale=scale.astype("<f4").tobytes(),
        offset=low.astype("<f4").tobytes(),
        data=np.clip(codes, 0, 255).astype(np.uint8).tobytes(),
    )
    return envelope


def decode(envelope: dict[str, Any]) -> np.ndarray:
    """Unpack an envelope into a float32 array (the inverse of :func:`encode`, up to quantisation)."""
    if envelope.get("v") != VERSION:
        raise ValueError(f"unsupported envelope version {envelope.get('v')!r}; this mmviz reads version {VERSION}")
    shape = tuple(int(n) for n in envelope["shape"])
    size = int(np.prod(shape, dtype=np.int64))
    dtype = envelope["dtype"]
    if dtype in _FLOAT_DTYPES:
        raw = np.frombuffer(bytes(envelope["data"]), dtype=_FLOAT_DTYPES[dtype])
        _check_length(raw, size, "data")
        return raw.astype(np.float32).reshape(shape)
    if dtype != "uint8":
        raise ValueError(f"unknown envelope dtype {dtype!r}")
    k = int(envelope["scale_dims"])
    n_slices = int(np.prod(shape[:k], dtype=np.int64))
    codes = np.frombuffer(bytes(envelope["data"]), dtype=np.uint8)
    scale = np.frombuffer(bytes(envelope["scale"]), dtype="<f4")
    offset = np.frombuffer(bytes(envelope["offset"]), dtype="<f4")
    _check_length(codes, size, "data")
    _check_length(scale, n_slices, "scale")
    _check_length(offset, n_slices, "offset")
    values = offset[:, None] + scale[:, None] * codes.reshape(n_slices, -1).astype(np.float32)
    return values.astype(np.float32).reshape(shape)


def nbytes(envelope: dict[str, Any]) -> int:
    """Bytes the envelope puts on the wire (its binary buffers)."""
    return sum(len(value) for value in envelope.values() if isinstance(value, (bytes, bytearray, memoryview)))


def _check_length(array: np.ndarray, expected: int, field: str) -> None:
    if array.size != expected:
        raise ValueError(f"envelope field {field!r} holds {array.size} values, its shape needs {expected}")
