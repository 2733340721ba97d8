"""What the tools trust in a folder they did not write: nothing beyond regular files inside it.

Checkpoints are downloaded and shared; the doctor runs as root on them. Everything here reads with a
bound and follows no link:

- ``odd_entries``: symbolic links, FIFOs, devices, and folders where a file belongs, found without
  following any link (a checkpoint holding one is reported and left alone: nothing is hashed, copied
  or written through it);
- ``confined``: a name from a manifest is a plain relative path that stays inside the checkpoint;
- ``regular_file``: a path that is a real file (``Path.is_file`` follows links);
- ``read_json``: a small JSON file, size-capped, nesting caught;
- ``read_safetensors_header``: the header of a safetensors file, every entry validated (dtype,
  shape, offsets, byte count, no overlap past the data), size and entry count capped;
- ``refused_by_weights_only``: whether ``torch.load(weights_only=True)`` refused what a file holds.

No import of the rest of the checkpoint package, so every module of it can use these.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import struct
from pathlib import Path, PurePosixPath

from chef_genius.errors import printable

MAX_JSON_BYTES = 16 << 20  # config.json, generation_config.json, manifest.json, trainer_state.json
MAX_HEADER_BYTES = 16 << 20  # a safetensors header: ~100 bytes per tensor, FLAN-T5-XXL needs ~60 KB
MAX_TENSORS = 100_000
MAX_WALK_ENTRIES = 10_000  # entries looked at in one checkpoint folder
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}


class Untrusted(ValueError):
    """A file that is not what it claims; the message says what is wrong with it, in one sentence."""


def refused_by_weights_only(err: BaseException) -> bool:
    """Whether ``torch.load(weights_only=True)`` raised ``err`` because it refused what the file holds
    (a global outside its allowlist, bytes its restricted unpickler does not take), not because the
    archive is damaged. The file is then never loaded without ``weights_only``, whatever torch's
    message suggests: that would run the code it carries."""
    text = str(err)
    return isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in text or "Unsupported global" in text


def is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def regular_file(path: Path) -> bool:
    """``path`` is a real file: not a link, not a folder, not a FIFO or device."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def odd_entries(folder: Path, file_names=()) -> list[str]:
    """Why entries of ``folder`` cannot be trusted: links (never followed), special files, folders
    named like one of ``file_names``. Empty when every entry is a plain file or folder."""
    found: list[str] = []
    seen = 0
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            seen += 1
            if seen > MAX_WALK_ENTRIES:
                return found + [f"more than {MAX_WALK_ENTRIES} entries: not a checkpoint"]
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            shown = printable(rel, 120)
            try:
                mode = os.lstat(path).st_mode
            except OSError as err:
                found.append(f"{shown} cannot be examined ({err.strerror})")
                continue
            if stat.S_ISLNK(mode):
                found.append(f"{shown} is a symbolic link (to {_link_target(path)}): never followed")
            elif stat.S_ISDIR(mode):
                if rel in file_names:
                    found.append(f"{shown} is a folder where a file belongs")
            elif not stat.S_ISREG(mode):
                found.append(f"{shown} is not a regular file (a FIFO, socket or device)")
    return found


def _link_target(path: Path) -> str:
    try:
        return printable(os.readlink(path), 80)
    except OSError:
        return "?"


def confined(folder: Path, name) -> bool:
    """``name`` (from a manifest) is a relative path without ``..`` that resolves inside ``folder``."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        return False
    pure = PurePosixPath(name)
    if pure.is_absolute() or any(part in ("..", "") for part in pure.parts) or ":" in pure.parts[0]:
        return False
    root = os.path.realpath(folder)
    return os.path.commonpath([root, os.path.realpath(os.path.join(root, name))]) == root


def read_json(path: Path, limit: int = MAX_JSON_BYTES):
    """The JSON value of a small regular file; ``Untrusted`` for a link, a huge, deep or bad file."""
    if not regular_file(path):
        raise Untrusted(f"{path.name} is not a regular file")
    size = os.lstat(path).st_size
    if size > limit:
        raise Untrusted(f"{path.name} has {size} bytes, more than the {limit >> 20} MiB such a file may have")
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise Untrusted(f"{path.name} nests its JSON too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise Untrusted(f"{path.name} is not valid JSON (truncated or corrupt)") from None


def read_safetensors_header(path: Path, max_tensors: int = MAX_TENSORS) -> dict[str, dict]:
    """Tensor name -> {dtype, shape, data_offsets} of a safetensors file, every entry checked against
    the format and the file's size; ``Untrusted`` with the reason otherwise. Reads only the header."""
    name = path.name
    if not regular_file(path):
        raise Untrusted(f"{name} is not a regular file")
    size = os.lstat(path).st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise Untrusted(f"{name} is only {size} bytes")
        (length,) = struct.unpack("<Q", raw)
        if length > size - 8:
            raise Untrusted(f"{name} has a header length past its end ({size} bytes): truncated or corrupt")
        if length > MAX_HEADER_BYTES:
            raise Untrusted(
                f"{name} has a {length}-byte header, more than the {MAX_HEADER_BYTES >> 20} MiB "
                "allowed: not a model this tool checks"
            )
        data = handle.read(length)
    try:
        header = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise Untrusted(f"{name} has a header nested too deeply: corrupt or hostile") from None
    except (ValueError, UnicodeDecodeError):
        raise Untrusted(f"{name} has an unreadable header: corrupt") from None
    if not isinstance(header, dict):
        raise Untrusted(f"{name} has a header that is not a JSON object: corrupt")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise Untrusted(f"{name} has __metadata__ that is not a map of strings: corrupt")
    if len(header) > max_tensors:
        raise Untrusted(f"{name} lists {len(header)} tensors, more than the {max_tensors} allowed")
    data_bytes = size - 8 - length
    spans = []
    for key, entry in header.items():
        problem = _entry_problem(entry)
        if problem:
            raise Untrusted(f"{name}: tensor {printable(key)} {problem}: corrupt")
        begin, end = entry["data_offsets"]
        spans.append((begin, end, key))
    spans.sort()
    last = 0
    for begin, end, key in spans:
        if begin < last:
            raise Untrusted(f"{name}: tensor {printable(key)} overlaps another: corrupt")
        last = end
    if last > data_bytes:
        raise Untrusted(f"{name} has {size} bytes but its tensors need {8 + length + last}: truncated")
    return header


def _entry_problem(entry) -> str | None:
    if not isinstance(entry, dict):
        return "is not described by an object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        return f"has an unknown dtype {printable(dtype, 20)}"
    if not isinstance(shape, list) or len(shape) > 16 or not all(_natural(d) for d in shape):
        return "has a shape that is not a list of non-negative integers"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_natural(o) for o in offsets)):
        return "has data_offsets that are not two non-negative integers"
    count = 1
    for dim in shape:
        count *= dim
    if offsets[1] - offsets[0] != count * DTYPE_BYTES[dtype]:
        return (
            f"has data_offsets spanning {offsets[1] - offsets[0]} bytes, its shape needs {count * DTYPE_BYTES[dtype]}"
        )
    return None


def _natural(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
