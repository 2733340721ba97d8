"""Tokenized training data: an on-disk Arrow cache, the validation split, batches.

The cache folder is named by the data file (``data/fingerprint.py``: absolute path, size,
modification time and a sampled hash), the tokenizer (hash of its serialized vocabulary), the recipe
template version, the ``--columns`` mapping, the ``--source-template``, the max lengths and the cache
layout, so a second run or a resume memory-maps the same Arrow files instead of tokenizing again. It
is used only if it was built from the data file's content as it is now: its metadata records the
file's ``content_sha256`` (hashed beside the first tokenization), compared with the file's on every
open, so an edit that keeps the size and the modification time is tokenized again, never served stale.

The duplicate search (``corpus.find_duplicates``) keeps its decision in the same folder, under a key of
its own settings (``--dedup-threshold``, the ``--eval-data`` file), so another threshold re-hashes
without re-tokenizing.

A cache folder holds Arrow parts (written once, by the processes that tokenized them:
``preprocess.py``) and ``CACHE_META``, which lists them in row order with their checksums and the read
statistics and is written last, so a folder without it is never used. ``cache_store.py`` owns the
folders: verified when opened, rebuilt when damaged, built by one run while the others wait. They are
read back memory-mapped with pyarrow alone (``ArrowRows``): the training path needs no ``datasets``
package, and a row read costs a slice of two mapped arrays.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from chef_genius.errors import DataError
from chef_genius.data import cache_store
from chef_genius.data.cache_store import CACHE_META
from chef_genius.data.fingerprint import HashMemo, content_sha256, file_fingerprint, hashing_beside
from chef_genius.data.preprocess import build_parts
from chef_genius.data.readers import ReadOptions, ReadStats, encoding_hint
from chef_genius.data.recipes import TEMPLATE_VERSION

log = logging.getLogger(__name__)

# 2: Arrow parts listed in CACHE_META (was: one ``datasets.save_to_disk`` folder); same rows and ids
# 3: the untruncated lengths too (source_full_len, target_full_len: the truncation report)
CACHE_LAYOUT = 3
PAD_MULTIPLE = 8
LABEL_PAD = -100


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        text = repr(sorted(tokenizer.get_vocab().items()))
    else:
        # Calling a fast tokenizer with truncation changes its truncation / padding settings: not
        # part of what it produces for a given max length, so not part of the key.
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        text = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cache_key(
    data_path, tokenizer, max_source_length: int, max_target_length: int, options: ReadOptions = ReadOptions()
) -> str:
    key = {
        "data": file_fingerprint(data_path),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": TEMPLATE_VERSION,
        "layout": CACHE_LAYOUT,
        "max_source_length": max_source_length,
        "max_target_length": max_target_length,
        **options.key(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class TokenizedData:
    dataset: ArrowRows  # columns input_ids, labels, source_len, target_len, source_full_len, target_full_len
    stats: dict
    cache_dir: Path
    from_cache: bool


def cache_folder(
    data_path,
    tokenizer,
    max_source_length: int,
    max_target_length: int,
    cache_root: str | Path,
    options: ReadOptions = ReadOptions(),
) -> Path:
    """Where ``load_tokenized`` keeps the cache of these settings."""
    key = cache_key(data_path, tokenizer, max_source_length, max_target_length, options)
    return Path(cache_root) / f"{Path(data_path).stem}-{key}"


def is_cached(
    data_path,
    tokenizer,
    max_source_length: int,
    max_target_length: int,
    cache_root: str | Path,
    options: ReadOptions = ReadOptions(),
) -> bool:
    """Whether ``load_tokenized`` would only map an existing cache (no parsing, no tokenizing)."""
    return (
        cache_folder(data_path, tokenizer, max_source_length, max_target_length, cache_root, options) / CACHE_META
    ).is_file()


def load_settings_file(path, tokenizer, c, cache_root: str | Path, options: ReadOptions) -> TokenizedData:
    """``path`` tokenized with a run's settings ``c`` (max lengths, ``--num-proc``, ``--progress``), as
    training and ``inspect_data.py`` read ``--data`` and ``--eval-data``."""
    return load_tokenized(
        path,
        tokenizer,
        c.max_source_length,
        c.max_target_length,
        cache_root,
        c.num_proc,
        options,
        c.progress,
        trusted=not c.verify_hashes,
    )


def load_tokenized(
    data_path,
    tokenizer,
    max_source_length: int,
    max_target_length: int,
    cache_root: str | Path,
    num_proc: int = 0,
    options: ReadOptions = ReadOptions(),
    progress: str = "auto",
    trusted: bool = True,
) -> TokenizedData:
    """Tokenize ``data_path`` once into ``cache_root`` (on ``num_proc`` processes, 0: all cores);
    later calls verify and memory-map the cached Arrow parts (``cache_store.py``: checksums, one
    builder at a time, a damaged cache built again). ``trusted``: the data file's and the parts'
    sha256 remembered in the folder by file state count (``fingerprint.HashMemo``); False
    (``--verify-hashes``) reads every byte."""
    final = cache_folder(data_path, tokenizer, max_source_length, max_target_length, cache_root, options)

    def build(folder: Path) -> dict:
        memo = HashMemo(folder, trusted)  # moves into place with the folder: the next run reads no byte of it
        with hashing_beside(data_path, memo) as content:  # the fingerprint, read beside the tokenization
            stats, parts = build_parts(
                data_path, tokenizer, max_source_length, max_target_length, folder, num_proc, options, progress
            )
            if stats.kept == 0:
                raise _no_recipe(data_path, stats)
            digest = content()
        memo.save()
        return {"stats": stats.to_dict(), "parts": parts, "content_sha256": digest}

    def built_from_this_content(meta: dict) -> str | None:
        recorded = meta.get("content_sha256")
        if recorded is None:
            return f"it does not record the content of {Path(data_path).name} (written by an older version)"
        memo = HashMemo(final, trusted)  # the file's digest, remembered by its state (``fingerprint.py``)
        current = content_sha256(data_path, memo)
        memo.save()
        if recorded != current:
            return (
                f"{Path(data_path).name} changed since it was built (its content; size and modification "
                "time may be the same)"
            )
        return None

    meta, from_cache = cache_store.open_or_build(final, build, built_from_this_content, trusted)
    return TokenizedData(_open_parts(final, meta["parts"]), meta["stats"], final, from_cache)


def _open_parts(folder: Path, parts: list[str]) -> ArrowRows:
    """The parts, memory-mapped, as one table in row order."""
    return ArrowRows([folder / part for part in parts])


class ArrowRows:
    """Arrow stream files of the cache's schema, memory-mapped, read as one table: ``rows[i]`` is row i
    and ``rows["labels"]`` a whole column, as Python values (as ``datasets.Dataset`` gives them);
    ``rows.column("source_len")`` a numeric column as one numpy array.

    A row read slices the mapped list arrays through their offsets (a few microseconds), where
    ``datasets.Dataset`` formats each row through its own machinery (several times slower, measured
    on CPU). Pickled as its file paths, so loader workers started by spawn (Windows, macOS) map the
    same files instead of receiving a copy of the data."""

    def __init__(self, paths: list[Path]):
        import pyarrow as pa

        self.paths = [Path(p) for p in paths]
        self._batches = [
            batch
            for path in self.paths
            for batch in pa.ipc.open_stream(pa.memory_map(str(path))).read_all().to_batches()
        ]
        self._batches = [b for b in self._batches if b.num_rows]
        sizes = [b.num_rows for b in self._batches]
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.column_names = list(self._batches[0].schema.names) if self._batches else []
        # per batch: (flat values, offsets) of each list column, zero-copy numpy views of the mapped file
        self._lists = [
            {
                name: (numpy_view(b.column(name).values), numpy_view(b.column(name).offsets))
                for name in self.column_names
                if b.schema.field(name).type.num_fields
            }
            for b in self._batches
        ]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def column(self, name: str) -> np.ndarray:
        if name not in self.column_names:
            raise KeyError(name)
        return np.concatenate([np.zeros(0, dtype=np.int64)] + [numpy_view(b.column(name)) for b in self._batches])

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.column_names:
                raise KeyError(key)
            return [value for b in self._batches for value in b.column(key).to_pylist()]
        index = int(key)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of {len(self)}")
        chunk = int(np.searchsorted(self._starts, index, side="right")) - 1
        within = index - int(self._starts[chunk])
        row = {}
        for name in self.column_names:
            if name in self._lists[chunk]:
                values, offsets = self._lists[chunk][name]
                row[name] = values[offsets[within] : offsets[within + 1]].tolist()
            else:
                row[name] = self._batches[chunk].column(name)[within].as_py()
        return row

    def __getstate__(self):
        return {"paths": self.paths}

    def __setstate__(self, state):
        type(self).__init__(self, state["paths"])


def numpy_view(array) -> np.ndarray:
    """A numeric Arrow array as numpy: a zero-copy view of its data buffer when it has no nulls.
    (pyarrow's ``Array.to_numpy`` imports pandas on its first call: 1.7 s of a run's start on this
    machine, bench/results/2026-12-06-fast-start.md.)"""
    import pyarrow as pa

    t = array.type
    if array.null_count == 0 and (pa.types.is_integer(t) or pa.types.is_float32(t) or pa.types.is_float64(t)):
        kind = "f" if pa.types.is_floating(t) else "i" if pa.types.is_signed_integer(t) else "u"
        dtype = np.dtype(f"{kind}{t.bit_width // 8}")
        return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)
    return array.to_numpy(zero_copy_only=False)


def _no_recipe(data_path, stats: ReadStats) -> DataError:
    hint = encoding_hint(stats.to_dict())
    return DataError(f"{data_path}: no usable recipe in the file ({stats.summary()})" + (f"; {hint}" if hint else ""))


def split_indices(num_rows: int, eval_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train / validation split of row indices (pure function of its arguments)."""
    order = np.random.default_rng(seed).permutation(num_rows)
    num_eval = int(round(num_rows * eval_ratio)) if eval_ratio > 0 else 0
    if eval_ratio > 0 and num_rows > 1:
        num_eval = min(max(num_eval, 1), num_rows - 1)
    return np.sort(order[num_eval:]), np.sort(order[:num_eval])


class RecipeDataset(torch.utils.data.Dataset):
    """Rows ``indices`` of a tokenized dataset; item i is ``(input_ids, labels)`` as lists."""

    def __init__(self, dataset, indices=None):
        # an ``ArrowRows`` (the cache) or anything indexable alike (a ``datasets.Dataset``: plain Python rows)
        self.dataset = dataset.with_format(None) if hasattr(dataset, "with_format") else dataset
        self.indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        row = self.dataset[int(self.indices[i])]
        return row["input_ids"], row["labels"]

    def _column(self, name: str) -> np.ndarray:
        column = self.dataset.column(name) if isinstance(self.dataset, ArrowRows) else self.dataset[name]
        return np.asarray(column, dtype=np.int64)

    def lengths(self) -> np.ndarray:
        """Tokens per example (source + target), for length-grouped batching."""
        return (self._column("source_len") + self._column("target_len"))[self.indices]

    def source_target_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Source and target tokens per example (for token-budget batches)."""
        return self._column("source_len")[self.indices], self._column("target_len")[self.indices]


class Collator:
    """Pad a batch to a multiple of 8 (tensor-core friendly); labels padded with -100.

    Also builds ``decoder_input_ids`` (labels shifted right behind the decoder start token) here, in
    the loader workers, so the training step does no token shuffling of its own.
    """

    def __init__(self, pad_token_id: int, decoder_start_token_id: int | None = None, multiple: int = PAD_MULTIPLE):
        self.pad_token_id = pad_token_id
        self.decoder_start_token_id = pad_token_id if decoder_start_token_id is None else decoder_start_token_id
        self.multiple = multiple

    def _width(self, seqs) -> int:
        width = max(len(s) for s in seqs)
        return -(-width // self.multiple) * self.multiple

    def __call__(self, items):
        sources, targets = zip(*items)
        rows = len(items)
        src_w, tgt_w = self._width(sources), self._width(targets)
        input_ids = torch.full((rows, src_w), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((rows, src_w), dtype=torch.long)
        labels = torch.full((rows, tgt_w), LABEL_PAD, dtype=torch.long)
        decoder_input_ids = torch.full((rows, tgt_w), self.pad_token_id, dtype=torch.long)
        for row, (src, tgt) in enumerate(zip(sources, targets)):
            input_ids[row, : len(src)] = torch.as_tensor(src, dtype=torch.long)
            attention_mask[row, : len(src)] = 1
            tgt = torch.as_tensor(tgt, dtype=torch.long)
            labels[row, : len(tgt)] = tgt
            decoder_input_ids[row, 0] = self.decoder_start_token_id
            decoder_input_ids[row, 1 : len(tgt)] = tgt[:-1]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "decoder_input_ids": decoder_input_ids,
        }
