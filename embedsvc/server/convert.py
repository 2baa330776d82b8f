"""Protobuf <-> Python values. Vectors travel as packed bytes, never ``repeated float``."""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import json_format, struct_pb2

from embedsvc.errors import InvalidArgument
from embedsvc.strategies import Role
from embedsvc.v1 import types_pb2

_DTYPES = {
    np.dtype("float32"): types_pb2.DTYPE_FLOAT32,
    np.dtype("uint8"): types_pb2.DTYPE_UINT8,
}
_NUMPY = {v: k for k, v in _DTYPES.items()}
KIND = {"dense": types_pb2.VECTOR_KIND_DENSE, "binary": types_pb2.VECTOR_KIND_BINARY}
ROLE = {
    types_pb2.ROLE_UNSPECIFIED: Role.QUERY,
    types_pb2.ROLE_QUERY: Role.QUERY,
    types_pb2.ROLE_PASSAGE: Role.PASSAGE,
}


def tensor_from_numpy(array: np.ndarray) -> types_pb2.Tensor:
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    return types_pb2.Tensor(
        dtype=_DTYPES[np.dtype(dtype.name)],
        shape=list(array.shape),
        data=array.astype(dtype.newbyteorder("<"), copy=False).tobytes(),
    )


def tensor_to_numpy(tensor: types_pb2.Tensor) -> np.ndarray:
    if tensor.dtype not in _NUMPY:
        raise InvalidArgument(f"unknown tensor dtype {tensor.dtype}", field="dtype")
    dtype = _NUMPY[tensor.dtype].newbyteorder("<")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))


def role_from_proto(value: int) -> Role:
    try:
        return ROLE[value]
    except KeyError:
        raise InvalidArgument(
            f"unknown role {value}; use ROLE_QUERY or ROLE_PASSAGE", field="role"
        ) from None


def _integral(value: Any) -> Any:
    """Struct numbers are doubles; give back ints where the client most likely sent ints."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def struct_to_dict(struct: struct_pb2.Struct, field: str = "metadata") -> dict[str, Any]:
    """A Struct as plain JSON values; NaN and Infinity (not JSON) are the caller's error."""
    try:
        return _integral(json_format.MessageToDict(struct))
    except ValueError as exc:
        raise InvalidArgument(
            f"{field} holds a value JSON cannot represent (NaN or Infinity): {exc}", field=field
        ) from None


def dict_to_struct(data: dict[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if data:
        struct.update(data)
    return struct
