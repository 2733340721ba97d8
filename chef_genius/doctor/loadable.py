"""Each non-weight file of a checkpoint loaded the way the trainer will load it, with bounds first.

A file that fails is a problem with a one-line reason (never a traceback, never "absent"): the
config through ``AutoConfig``, the generation config through ``GenerationConfig``, the tokenizer
through ``AutoTokenizer`` (no remote code), RNG files through the numpy-allowlisted loader.
"""

from __future__ import annotations

import re
from pathlib import Path

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import trust
from chef_genius.doctor import foreign
from chef_genius.errors import printable

MAX_TOKENIZER_BYTES = 64 << 20  # FLAN-T5's tokenizer.json is 2.4 MB, spiece.model 0.8 MB
MAX_LAYERS = 1024  # encoder + decoder; FLAN-T5-XXL has 48
LAYER_KEYS = ("num_layers", "num_decoder_layers", "num_hidden_layers", "encoder_layers", "decoder_layers")
_LAYER = re.compile(r"(?:^|\.)(?:block|layers?|h)\.(\d+)\.")


def describe(name: str, err: BaseException) -> str:
    """``name`` and the first printable line of ``err``, short."""
    lines = str(err).strip().splitlines()
    return f"{name} does not load ({type(err).__name__}: {printable(lines[0] if lines else '', 120)})"


def config_problem(folder: Path) -> str | None:
    try:
        values = trust.read_json(folder / ckpt.MODEL_CONFIG)
    except trust.Untrusted as err:
        return str(err)
    if not isinstance(values, dict):
        return f"{ckpt.MODEL_CONFIG} does not hold a JSON object"
    if any(k in values for k in ("auto_map",)):
        return f"{ckpt.MODEL_CONFIG} asks for remote code (auto_map): never run"
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(folder))
    except Exception as err:  # transformers raises ValueError, KeyError, TypeError... for a bad config
        return describe(ckpt.MODEL_CONFIG, err)
    return None


def generation_config_problem(folder: Path) -> str | None:
    try:
        values = trust.read_json(folder / ckpt.GENERATION_CONFIG)
    except trust.Untrusted as err:
        return str(err)
    if not isinstance(values, dict):
        return f"{ckpt.GENERATION_CONFIG} does not hold a JSON object"
    from transformers import GenerationConfig

    try:
        GenerationConfig.from_pretrained(str(folder))
    except Exception as err:
        return describe(ckpt.GENERATION_CONFIG, err)
    return None


def tokenizer_problem(folder: Path) -> str | None:
    for name in ckpt.TOKENIZER_FILES:
        path = folder / name
        if not path.exists():
            continue
        if path.stat().st_size > MAX_TOKENIZER_BYTES:
            return f"{name} has {path.stat().st_size} bytes, more than a tokenizer file may have"
        if name.endswith(".json"):
            try:
                trust.read_json(path, MAX_TOKENIZER_BYTES)
            except trust.Untrusted as err:
                return str(err)
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as err:  # tokenizers raises plain Exception for a bad tokenizer.json
        return describe("the tokenizer", err)
    return None


def rng_file_problem(path: Path) -> str | None:
    try:
        saved = foreign.load_with_numpy(path)
    except foreign.UnsafePickle as err:
        return str(err)
    except ckpt.CheckpointError as err:
        return str(err)
    if not isinstance(saved, dict):
        return f"{path.name} does not hold a dictionary of RNG states"
    return None


def layers_problem(folder: Path, header: dict) -> str | None:
    """The config claims more layers than the weights hold (checked before building any model)."""
    try:
        values = trust.read_json(folder / ckpt.MODEL_CONFIG)
    except trust.Untrusted:
        return None  # reported by config_problem
    found = {name[: m.end()] for name in header for m in [_LAYER.search(name)] if m}  # "encoder.block.3."
    claimed = 0
    for key in LAYER_KEYS:
        value = values.get(key)
        if key == "num_decoder_layers" and value is None and isinstance(values.get("num_layers"), int):
            value = values["num_layers"]
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{key} is {printable(value, 20)}, not a layer count"
        claimed += value
    if claimed > MAX_LAYERS:
        return f"it describes {claimed} layers, more than the {MAX_LAYERS} this tool builds"
    if claimed > len(found):
        return f"it describes {claimed} layers, the weights hold {len(found)}"
    return None
