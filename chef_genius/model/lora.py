"""LoRA through ``peft``: the adapter around a frozen base, its files, and the base it belongs to.

``--lora-r R`` wraps the base model's linear projections named in ``--lora-target-modules`` (T5's
attention ``q k v o`` and feed-forward ``wi wi_0 wi_1 wo``, those the model has) with rank-R
adapters (``peft.LoraConfig`` / ``get_peft_model``); everything else is frozen, so the optimizer
holds the adapter's parameters only. What a LoRA checkpoint needs besides the adapter:

- ``fingerprint``: a sha256 over the base model's state dict (names, dtypes, shapes and bytes, a tied
  tensor once), computed once when the base is loaded and recorded beside the adapter, so a resume
  onto other base weights is refused instead of training an adapter that no longer fits;
- the adapter's files as peft writes them (``adapter_model.safetensors`` + ``adapter_config.json``,
  names in ``checkpoint/layout.py``), loadable with ``PeftModel.from_pretrained(base, folder)``;
- ``merged_state_dict``: the base's weights with each adapter folded in (W + scale * B A), computed
  without touching the trained model, for the final model that ``from_pretrained`` loads alone.

The lean loss (``model/lean_loss.py``) and gradient checkpointing are installed on the base before
it is wrapped: peft leaves ``lm_head`` alone (it is no target), so the head hook still sees the
decoder's hidden states.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import records as ckrecords
from chef_genius.errors import UserError
from chef_genius.model.names import LORA_TARGETS

log = logging.getLogger("chef_genius")

ADAPTER = "default"  # peft's adapter name; the only one a run trains


def present_targets(model, targets=LORA_TARGETS) -> list[str]:
    """The names among ``targets`` that end the name of at least one ``nn.Linear`` of ``model``."""
    found = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    return [t for t in targets if t in found and t != "lm_head"]


def wrap(model, r: int, alpha: float, dropout: float, targets=LORA_TARGETS):
    """``model`` frozen, with rank-``r`` adapters on the ``targets`` it has (a ``PeftModel``)."""
    from peft import LoraConfig, get_peft_model

    present = present_targets(model, targets)
    if not present:
        raise UserError(
            f"none of --lora-target-modules {' '.join(targets)} names a linear layer of the model "
            f"(T5's are {' '.join(LORA_TARGETS)})"
        )
    # No task type: peft 0.21's seq2seq wrapper calls a generation helper transformers 5 no longer has;
    # the plain PeftModel forwards calls (forward, generate) to the wrapped model as they are.
    # peft annotates lora_alpha as an int; it is only divided by r (scaling = alpha / r), a float works alike
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,  # type: ignore[arg-type]
        lora_dropout=dropout,
        target_modules=present,
        bias="none",
    )
    return get_peft_model(model, config)


def targets_of(peft_model) -> list[str]:
    """The target modules ``peft_model``'s adapter wraps, in ``LORA_TARGETS``' order."""
    wrapped = set(peft_model.peft_config[ADAPTER].target_modules)
    return [t for t in LORA_TARGETS if t in wrapped] + sorted(wrapped - set(LORA_TARGETS))


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


# ---------------------------------------------------------------------------------------------
# the base model's fingerprint


def fingerprint(model) -> str:
    """sha256 over ``model``'s state dict in name order: each name, dtype and shape, and each tensor's
    bytes once (a tied tensor's later names are hashed with the first name they share)."""
    digest = hashlib.sha256()
    seen: dict[tuple, str] = {}
    for name, tensor in sorted(model.state_dict().items()):
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if key in seen and tensor.data_ptr() != 0:
            digest.update(f"tied:{seen[key]}".encode())
            continue
        seen[key] = name
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(memoryview(data.numpy()))
    return digest.hexdigest()


def base_record(pretrained_model: str, digest: str, parameters: int) -> dict:
    return {"pretrained_model": str(pretrained_model), "sha256": digest, "parameters": int(parameters)}


def check_base(folder: Path, digest: str, pretrained_model: str) -> None:
    """Refuse (exit 2) to continue ``folder``'s adapter on a base whose fingerprint is not the recorded one."""
    record = ckrecords.read_base(folder)
    if record is None:
        raise UserError(
            f"{folder.name} records no fingerprint of its base model ({ckpt.BASE_RECORD} is missing "
            "or unreadable): check it with python cli/verify_and_fix_checkpoint.py "
            f"{folder}"
        )
    if record["sha256"] != digest:
        raise UserError(
            f"{folder.name}'s adapter was trained on base weights {record['sha256'][:12]} "
            f"({record['pretrained_model']}), but --pretrained-model {pretrained_model} has "
            f"{digest[:12]}: give the base model the run started from"
        )


# ---------------------------------------------------------------------------------------------
# the adapter's files


def base_of_run(model, pretrained_model: str, resumed_from: Path | None) -> dict:
    """The record of a LoRA run's base (its fingerprint computed once, at load); on a resume checked
    against the checkpoint's, so an adapter never continues on other weights (exit 2)."""
    began = time.perf_counter()
    digest = fingerprint(model)
    log.info("base model %s: weights' sha256 %s (%.1fs)", pretrained_model, digest[:12], time.perf_counter() - began)
    if resumed_from is not None:
        if not ckpt.is_adapter(resumed_from):
            raise UserError(
                f"{resumed_from.name} is a full fine-tuning checkpoint and has no adapter to "
                "continue: resume it without --lora-r"
            )
        check_base(resumed_from, digest, pretrained_model)
    return base_record(pretrained_model, digest, sum(p.numel() for p in model.parameters()))


def wrap_for_training(model, r: int, alpha: float, dropout: float, targets, resumed_from: Path | None):
    """``wrap``, with the checkpoint's adapter weights loaded on a resume; logs what trains."""
    model = wrap(model, r, alpha, dropout, targets)
    if resumed_from is not None:
        load_adapter(model, resumed_from)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(
        "LoRA r=%d alpha=%g dropout=%g on %s: %s of %s parameters train (%.2f%%)",
        r,
        alpha,
        dropout,
        " ".join(targets_of(model)),
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(total, 1),
    )
    return model


def adapter_state(peft_model) -> dict:
    """The trainable adapter tensors of ``peft_model`` under peft's in-memory names."""
    return {name: tensor for name, tensor in peft_model.state_dict().items() if "lora_" in name}


def save_adapter(peft_model, folder: Path, weights: dict) -> None:
    """``adapter_model.safetensors`` (peft's saved names) and ``adapter_config.json`` into ``folder``."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    saved = get_peft_model_state_dict(peft_model, state_dict=weights, adapter_name=ADAPTER)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in saved.items()},
        str(Path(folder) / ckpt.ADAPTER_WEIGHTS),
        metadata={"format": "pt"},
    )
    peft_model.peft_config[ADAPTER].save_pretrained(str(folder))


def load_adapter(peft_model, folder: Path) -> None:
    """The adapter weights of checkpoint ``folder`` into ``peft_model``; every adapter tensor must be
    there, with its shape (else ``UserError``: an adapter half made of fresh weights is never trained on)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        saved = load_file(str(Path(folder) / ckpt.ADAPTER_WEIGHTS))
    except Exception as err:  # safetensors' own errors for a damaged file
        raise UserError(
            f"{folder.name}/{ckpt.ADAPTER_WEIGHTS} is unreadable ({type(err).__name__}); check it with "
            f"python cli/verify_and_fix_checkpoint.py {folder}"
        ) from None
    expected = adapter_state(peft_model)
    try:
        # peft's helper is unannotated; it returns the model's load_state_dict result (missing / unexpected keys)
        result: Any = set_peft_model_state_dict(peft_model, saved, adapter_name=ADAPTER)
    except RuntimeError as err:
        first_line = str(err).splitlines()[0][:160]
        raise UserError(f"{folder.name}'s adapter does not fit this model's ({first_line})") from None
    missing = [k for k in result.missing_keys if k in expected]
    if missing or result.unexpected_keys:
        names = (missing or list(result.unexpected_keys))[:2]
        raise UserError(
            f"{folder.name}'s adapter does not fit this model: {len(missing)} adapter tensors missing, "
            f"{len(result.unexpected_keys)} unknown (e.g. {', '.join(names)})"
        )


def merged_state_dict(peft_model) -> dict:
    """The base model's state dict with every adapter folded into its layer (W + scale * B A), on the
    CPU, one layer at a time; ``peft_model`` itself is left as it was."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    merged = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
                weight = module.get_base_layer().weight
                # get_delta_weight is defined by each concrete LoraLayer (Linear, Embedding, Conv), not the base
                delta = module.get_delta_weight(ADAPTER)  # type: ignore[attr-defined]
                merged[f"{name}.weight"] = (weight + delta.to(weight.dtype)).cpu()
        for name, tensor in base.state_dict().items():
            if "lora_" in name:
                continue
            plain = name.replace(".base_layer.", ".")
            merged.setdefault(plain, tensor.detach().cpu())
    return merged


def load_merged(folder: Path, load_base):
    """The model of an adapter folder (a LoRA checkpoint, a ``--save-adapter-only`` final model) with the
    adapter merged in, for generation and evaluation: the base rebuilt by ``load_base`` from the
    recorded ``--pretrained-model``, refused when its weights are not the ones the adapter was trained on."""
    from peft import LoraConfig, get_peft_model

    folder = Path(folder)
    record = ckrecords.read_base(folder)
    if record is None:
        raise UserError(
            f"{folder} holds a LoRA adapter but no record of its base model ({ckpt.BASE_RECORD}): "
            f"check it with python cli/verify_and_fix_checkpoint.py {folder}"
        )
    base = load_base(record["pretrained_model"])
    digest = fingerprint(base)
    if digest != record["sha256"]:
        raise UserError(
            f"{folder}'s adapter was trained on base weights {record['sha256'][:12]}, but "
            f"{record['pretrained_model']} now has {digest[:12]}: the base model changed"
        )
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except Exception as err:  # peft raises ValueError / OSError / TypeError for a bad config
        raise UserError(f"{folder}/{ckpt.ADAPTER_CONFIG} is not a LoRA config ({type(err).__name__})") from None
    model = get_peft_model(base, config)
    load_adapter(model, folder)
    return model.merge_and_unload()
