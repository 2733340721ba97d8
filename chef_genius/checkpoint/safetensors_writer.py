"""Model weights in the safetensors format, written tensor by tensor into a stream.

The format: an 8-byte little-endian header length, a JSON header (``__metadata__``, then each
tensor's dtype, shape and byte range), padded with spaces to a multiple of 8, then the raw bytes of
the tensors, one after the other. Writing it here, instead of through ``safetensors.torch.save_file``,
lets the bytes go through a ``HashingFile`` on their way to disk (no read-back to hash them) and
never builds the whole file in memory. The bytes are the same as ``save_file``'s
(``tests/checkpoint/test_one_pass_save.py`` compares them): the tensors are laid out by dtype, widest
kind first in safetensors' own order, then by name.
"""

from __future__ import annotations

import json
import struct
import sys
from typing import Protocol

import torch

# safetensors' dtype names, in the order its writer sorts by (the last first)
_DTYPES = [
    (torch.bool, "BOOL"),
    (getattr(torch, "float4_e2m1fn_x2", None), "F4"),
    (torch.uint8, "U8"),
    (torch.int8, "I8"),
    (getattr(torch, "float8_e5m2", None), "F8_E5M2"),
    (getattr(torch, "float8_e4m3fn", None), "F8_E4M3"),
    (getattr(torch, "float8_e8m0fnu", None), "F8_E8M0"),
    (torch.int16, "I16"),
    (getattr(torch, "uint16", None), "U16"),
    (torch.float16, "F16"),
    (torch.bfloat16, "BF16"),
    (torch.int32, "I32"),
    (getattr(torch, "uint32", None), "U32"),
    (torch.float32, "F32"),
    (torch.float64, "F64"),
    (torch.int64, "I64"),
    (getattr(torch, "uint64", None), "U64"),
]
_NAME = {dtype: name for dtype, name in _DTYPES if dtype is not None}
_RANK = {dtype: rank for rank, (dtype, _) in enumerate(_DTYPES) if dtype is not None}


def layout(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The order the tensors' bytes take in the file."""
    unknown = sorted({str(t.dtype) for t in tensors.values() if t.dtype not in _NAME})
    if unknown:
        raise ValueError(f"safetensors has no dtype for {', '.join(unknown)}")
    return sorted(tensors, key=lambda name: (-_RANK[tensors[name].dtype], name))


def header(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The header (length prefix included) of a file holding ``tensors``."""
    entries: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in layout(tensors):
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        entries[name] = {
            "dtype": _NAME[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


class Writable(Protocol):
    """Where the bytes go: a binary file, or a ``HashingFile`` that hashes them on the way."""

    def write(self, data: bytes | memoryview, /) -> int: ...


def write_safetensors(
    stream: Writable, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write ``tensors`` (a state dict without tensors sharing memory) as one safetensors file."""
    if sys.byteorder != "little":  # the format is little-endian; torch's memory is the machine's
        raise ValueError("writing safetensors needs a little-endian machine")
    stream.write(header(tensors, metadata))
    for name in layout(tensors):
        stream.write(_raw_bytes(tensors[name]))


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.to("cpu")
    tensor = tensor.contiguous().reshape(-1)
    if tensor.numel() == 0:
        return memoryview(b"")
    # numpy declares the buffer protocol to type checkers for Python >= 3.12 only
    return memoryview(tensor.view(torch.uint8).numpy())  # type: ignore[arg-type]
