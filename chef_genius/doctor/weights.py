"""Model weights and optimizer layout as the checkpoint doctor sees them, read without trusting them.

The weights are read per layout by ``checkpoint/weight_files.py`` (the loader's reader too); here
they are rewritten without wrapper prefixes and checked for non-finite values, and the model the
config describes is built on the ``meta`` device (no memory, no weights) to know every expected
tensor name and shape and the optimizer's parameter groups.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from chef_genius.checkpoint import trust
from chef_genius.checkpoint.weight_files import get_tensor, tensors
from chef_genius.model import wrappers


def stripped_files(folder: Path, layout: str, files: list[Path]) -> dict[str, bytes]:
    """File name -> new content: the weights with ``_orig_mod.`` / ``module.`` removed from every name
    (each shard and the index for sharded weights; ``model.safetensors`` for a ``.bin``)."""
    from safetensors.torch import save

    from chef_genius.checkpoint import layout as ckpt

    out = {}
    for path in files:
        metadata = {"format": "pt"}
        if path.suffix != ".bin":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:
                metadata = handle.metadata() or metadata
        # clone: a .bin may hold tied tensors sharing one storage, which safetensors refuses
        renamed = {wrappers.strip(n): t.contiguous().clone() if path.suffix == ".bin" else t for n, t in tensors(path)}
        out[ckpt.WEIGHTS if path.suffix == ".bin" else path.name] = save(renamed, metadata)
    if layout == "sharded":
        index = trust.read_json(folder / ckpt.WEIGHTS_INDEX)
        index["weight_map"] = {wrappers.strip(n): shard for n, shard in index["weight_map"].items()}
        out[ckpt.WEIGHTS_INDEX] = json.dumps(index, indent=2, sort_keys=True).encode("utf-8")
    return out


def nonfinite_tensors(files: list[Path]) -> list[str]:
    bad = []
    for path in files:
        for name, tensor in tensors(path):
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                bad.append(name)
    return bad


def tensors_equal(header: dict, a: str, b: str) -> bool:
    return torch.equal(get_tensor(header, a), get_tensor(header, b))


# ---------------------------------------------------------------------------------------------
# the model the config describes


def meta_model(folder: Path, weights: Path | None = None, header: dict | None = None):
    """The model of ``folder/config.json`` on the meta device, or None when the config is unusable.

    Like ``from_pretrained``, ``lm_head`` is untied when the weights hold their own, different one
    (FLAN-T5), which changes the parameter count the optimizer sees.
    """
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    try:
        config = AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):
            model = AutoModelForSeq2SeqLM.from_config(config)
    except Exception:  # a config transformers cannot build: reported as such by the caller
        return None
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    header = {n: e if "file" in e else dict(e, file=weights) for n, e in (header or {}).items()}
    names = {wrappers.strip(n): n for n in header}
    if (
        head is not None
        and head.weight is embed.weight
        and "lm_head.weight" in names
        and "shared.weight" in names
        and not tensors_equal(header, names["lm_head.weight"], names["shared.weight"])
    ):
        with torch.device("meta"):
            head.weight = torch.nn.Parameter(torch.empty_like(head.weight))
    return model


def expected_tensors(model) -> tuple[dict[str, tuple], dict[str, int]]:
    """(name -> shape of every state-dict tensor, name -> id of its parameter, tied names sharing one id)."""
    shapes = {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
    ids = {name: id(p) for name, p in model.named_parameters(remove_duplicate=False)}
    return shapes, ids


def our_layout(model) -> list[list[str]]:
    """Parameter names per optimizer group, in the order this project's optimizer holds them."""
    from chef_genius.model.loading import make_optimizer

    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = make_optimizer(model, 1e-4, 0.0, torch.device("cpu"))
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def hf_layout(model) -> list[list[str]]:
    """Parameter names per group as Hugging Face Trainer's default AdamW groups them."""
    from transformers import Trainer

    # called unbound: the method reads nothing of the Trainer it belongs to
    decay = set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [[n for n, _ in named if n in decay], [n for n, _ in named if n not in decay]]


def single_layout(model) -> list[list[str]]:
    return [[n for n, p in model.named_parameters() if p.requires_grad]]


def optimizer_problem(state: dict, layout: list[list[str]], shapes: dict[str, tuple]) -> str | None:
    """Why ``state`` (an optimizer state_dict) does not fit ``layout``; None when it does."""
    groups = state.get("param_groups") or []
    if [len(g.get("params", [])) for g in groups] != [len(g) for g in layout]:
        return (
            f"its parameter groups hold {[len(g.get('params', [])) for g in groups]} tensors, "
            f"the model needs {[len(g) for g in layout]}"
        )
    per_param = state.get("state") or {}
    for group, names in zip(groups, layout):
        for index, name in zip(group["params"], names):
            entry = per_param.get(index)
            if entry is None:
                return f"no moments for {name}"
            avg = entry.get("exp_avg")
            if isinstance(avg, torch.Tensor) and tuple(avg.shape) != shapes.get(name):
                return f"moments of {name} have shape {tuple(avg.shape)}, the parameter {shapes.get(name)}"
    return None


def remap_optimizer(state: dict, model) -> tuple[dict | None, str]:
    """``state`` in this project's group layout, from whichever known layout it fits; (None, why) if none."""
    shapes, _ = expected_tensors(model)
    target = our_layout(model)
    for label, layout in (
        ("this project's", target),
        ("Hugging Face Trainer's", hf_layout(model)),
        ("a single-group", single_layout(model)),
    ):
        if optimizer_problem(state, layout, shapes) is not None:
            continue
        by_name = {}
        for group, names in zip(state["param_groups"], layout):
            for index, name in zip(group["params"], names):
                by_name[name] = (
                    state["state"][index],
                    {k: v for k, v in group.items() if k not in ("params", "param_names")},
                )
        new_state, new_groups, index = {}, [], 0
        for names in target:
            settings = dict(by_name[names[0]][1]) if names else {}
            settings["params"] = list(range(index, index + len(names)))
            for name in names:
                new_state[index] = by_name[name][0]
                index += 1
            new_groups.append(settings)
        return {"state": new_state, "param_groups": new_groups}, label
    return None, optimizer_problem(state, target, shapes) or "unknown layout"
