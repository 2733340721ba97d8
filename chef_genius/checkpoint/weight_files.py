"""What a model folder's weights hold, read per layout without trusting them: the one reader of
weight names, shapes and dtypes, for the loader and the doctor alike.

The layouts (``format.weights_layout``): one ``model.safetensors``, shards named by
``model.safetensors.index.json``, or an older ``pytorch_model.bin``, loaded with
``weights_only=True`` onto the meta device (nothing runs, no memory). Each safetensors header is
parsed by ``trust.read_safetensors_header`` (size checked against the file, so truncation shows
without reading the data).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import trust


class MissingShard(ValueError):
    """A shard the index names is not in the folder."""


class RefusedPickle(ValueError):
    """A ``pytorch_model.bin`` holding more than tensors: refused by ``weights_only``, never unpickled."""


def read_header(path: Path) -> dict[str, dict]:
    """Tensor name -> {dtype, shape, data_offsets}; raises ValueError for a truncated, bad or hostile
    file (``checkpoint/trust.py``: every entry validated, size and entry count bounded)."""
    return trust.read_safetensors_header(path)


def read_weights(folder: Path) -> tuple[str | None, dict[str, dict], list[Path]]:
    """(layout, name -> {dtype, shape, file}, files) of the folder's weights (layout None: no weights).

    Raises ``MissingShard``, ``RefusedPickle`` or ``ValueError`` (truncated, corrupt, an index that
    disagrees with its shards, a link or a folder where a file belongs)."""
    layout, files = ckpt.weights_layout(folder)
    header: dict[str, dict] = {}
    if layout == "bin":
        if not trust.regular_file(files[0]):  # never loaded through a link, a FIFO or a folder
            raise trust.Untrusted(f"{files[0].name} is not a regular file")
        for name, tensor in load_bin(files[0], "meta").items():
            header[name] = {"dtype": str(tensor.dtype), "shape": list(tensor.shape), "file": files[0]}
        return layout, header, files
    for path in files:
        if not os.path.lexists(path):  # a link or a folder is present, and refused by read_header
            raise MissingShard(f"{path.name} is missing (a shard named by {ckpt.WEIGHTS_INDEX})")
        for name, entry in read_header(path).items():
            if name in header:
                raise ValueError(f"{name} is stored twice ({header[name]['file'].name} and {path.name})")
            header[name] = dict(entry, file=path)
    if layout == "sharded":
        weight_map = trust.read_json(folder / ckpt.WEIGHTS_INDEX)["weight_map"]  # checked by weights_layout
        wrong = [n for n, shard in weight_map.items() if n not in header or header[n]["file"].name != shard]
        extra = [n for n in header if n not in weight_map]
        if wrong or extra:
            example = (wrong or extra)[0]
            raise ValueError(
                f"{ckpt.WEIGHTS_INDEX} disagrees with its shards ({len(wrong)} names not in the shard "
                f"it gives, {len(extra)} tensors it does not list, e.g. {example})"
            )
    return layout, header, files


def load_bin(path: Path, device: str) -> dict:
    """``pytorch_model.bin`` as tensors, under ``weights_only=True`` (refused, never run, otherwise)."""
    try:
        value = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # UnpicklingError for unsafe globals, RuntimeError/EOFError for damage
        if trust.refused_by_weights_only(err):
            raise RefusedPickle(
                f"{path.name} does not load with weights_only=True: it holds objects other than "
                "tensors; it was not unpickled"
            ) from None
        raise ValueError(
            f"{path.name} does not load with weights_only=True: unreadable ({type(err).__name__}): truncated or corrupt"
        ) from None
    if not isinstance(value, dict) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise ValueError(f"{path.name} does not hold a name -> tensor dictionary")
    return value


def tensors(path: Path):
    """(name, tensor) of one weights file, read one at a time for safetensors."""
    if path.suffix == ".bin":
        yield from load_bin(path, "cpu").items()
        return
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        for name in handle.keys():
            yield name, handle.get_tensor(name)


def get_tensor(header: dict, name: str) -> torch.Tensor:
    """Tensor ``name`` of ``header`` (an entry's ``name``, when set, is its name in the file)."""
    path, stored = header[name]["file"], header[name].get("name", name)
    if path.suffix == ".bin":
        return load_bin(path, "cpu")[stored]
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.get_tensor(stored)
