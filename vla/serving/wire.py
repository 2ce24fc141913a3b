"""The openpi wire format: msgpack with numpy arrays and scalars as tagged maps.

An array travels as ``{b"__ndarray__": True, b"data": <raw C-order bytes>, b"dtype": "<f4",
b"shape": [..]}`` and a numpy scalar as ``{b"__npgeneric__": True, b"data": <python value>,
b"dtype": "<f4"}``: bytes keys, a str dtype, msgpack's default ``use_bin_type``. With these
choices ``pack`` produces the same bytes as ``openpi_client.msgpack_numpy.packb`` and each side
decodes the other. Object, void (structured) and complex dtypes are refused both ways, so no
pickle is ever involved; ``unpack`` checks every tagged map and turns any malformed input
into a ``WireError``.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
REFUSED_DTYPE_KINDS = {"O": "object", "V": "void/structured", "c": "complex"}

_NDARRAY, _NPGENERIC = b"__ndarray__", b"__npgeneric__"
_DATA, _DTYPE, _SHAPE = b"data", b"dtype", b"shape"


ECHO_CHARS = 200  # an error message quotes at most this much of the offending input


class WireError(ValueError):
    """A message that is not valid openpi msgpack-numpy (or is too large)."""


def shorten(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters, marked as cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_repr(value: Any, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters: error replies must not echo a huge input back."""
    if isinstance(value, (list, tuple, dict, bytes, str)) and len(value) > limit:
        return f"<{type(value).__name__} of length {len(value)}>"  # not the repr of a huge container
    return shorten(repr(value), limit)


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind in REFUSED_DTYPE_KINDS:
        raise ValueError(
            f"unsupported dtype {dtype} ({REFUSED_DTYPE_KINDS[dtype.kind]}); send numeric, bool or string arrays"
        )


def _encode(obj: Any) -> Any:
    """msgpack ``default`` hook: numpy arrays and scalars -> tagged maps (openpi's layout)."""
    if not isinstance(obj, (np.ndarray, np.generic)) and hasattr(obj, "__array__"):
        obj = np.asarray(obj)  # e.g. a CPU torch tensor
    if isinstance(obj, np.ndarray):
        _check_dtype(obj.dtype)
        return {_NDARRAY: True, _DATA: obj.tobytes(), _DTYPE: obj.dtype.str, _SHAPE: obj.shape}
    if isinstance(obj, np.generic):
        _check_dtype(obj.dtype)
        return {_NPGENERIC: True, _DATA: obj.item(), _DTYPE: obj.dtype.str}
    raise TypeError(f"cannot serialize {type(obj).__name__}; send dicts, lists, str, numbers, bytes and numpy arrays")


def pack(obj: Any) -> bytes:
    """Serialize ``obj`` (nested dicts/lists of numpy arrays, numbers, str, bytes)."""
    return msgpack.packb(obj, default=_encode)


def _decode_dtype(raw: Any) -> np.dtype:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    if not isinstance(raw, str):
        raise WireError(f"array dtype must be a string, got {type(raw).__name__}")
    try:
        dtype = np.dtype(raw)
    except (TypeError, ValueError) as err:
        raise WireError(f"unknown dtype {short_repr(raw)}") from err
    try:
        _check_dtype(dtype)
    except ValueError as err:
        raise WireError(str(err)) from None
    return dtype


def _decode(obj: dict) -> Any:
    """msgpack ``object_hook``: tagged maps -> numpy, every field checked before use."""
    if _NDARRAY in obj:
        data, shape = obj.get(_DATA), obj.get(_SHAPE)
        dtype = _decode_dtype(obj.get(_DTYPE))
        if not isinstance(data, bytes):
            raise WireError(f"array data must be bytes, got {type(data).__name__}")
        if not isinstance(shape, (list, tuple)) or not all(type(n) is int and n >= 0 for n in shape):
            raise WireError(f"array shape must be a list of non-negative ints, got {short_repr(shape)}")
        expected = math.prod(shape) * dtype.itemsize
        if expected != len(data):
            raise WireError(f"array of shape {tuple(shape)} and dtype {dtype} needs {expected} bytes, got {len(data)}")
        # a writable copy: frombuffer over the message would be read-only
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy() if len(data) else np.zeros(shape, dtype)
    if _NPGENERIC in obj:
        dtype = _decode_dtype(obj.get(_DTYPE))
        value = obj.get(_DATA)
        if not isinstance(value, (bool, int, float, str, bytes)):
            raise WireError(f"numpy scalar data must be a number, str or bytes, got {type(value).__name__}")
        try:
            return dtype.type(value)
        except (TypeError, ValueError, OverflowError) as err:
            raise WireError(f"cannot make a {dtype} scalar from {short_repr(value)}: {shorten(str(err))}") from None
    return obj


def unpack(data: bytes | bytearray | memoryview, max_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
    """Deserialize one message; anything malformed or larger than ``max_bytes`` -> ``WireError``."""
    if isinstance(data, str):
        raise WireError("expected a binary msgpack message, got text")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if max_bytes is not None and size > max_bytes:
        raise WireError(f"message of {size} bytes exceeds the limit of {max_bytes} bytes")
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False)
    except WireError:
        raise
    except Exception as err:  # msgpack raises several unrelated types (ExtraData, StackError, ValueError, ...)
        detail = f"{type(err).__name__}: {shorten(str(err))}" if str(err) else type(err).__name__
        raise WireError(f"malformed msgpack message ({detail})") from None
