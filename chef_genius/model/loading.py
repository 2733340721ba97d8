"""Loading the model and tokenizer, and the device-dependent choices around them."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from chef_genius.checkpoint import trust
from chef_genius.checkpoint import weight_files
from chef_genius.errors import UserError
from chef_genius.model import wrappers
from chef_genius.model.hub import check_hub_reachable

log = logging.getLogger(__name__)


def quiet_transformers() -> None:
    """Keep transformers' progress bars and advisory warnings out of the training log."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_tokenizer(name_or_path: str):
    check_hub_reachable(name_or_path)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise UserError(
            f"cannot load the tokenizer of {name_or_path!r} ({_first_line(err)}); give a model "
            "name the hub knows or a local folder with tokenizer files"
        ) from None


_NAMED = 3  # weight names quoted in an error


def load_model(name_or_path: str | Path):
    """The model in fp32 (master weights); mixed precision is autocast, never a cast of the weights.

    A local folder may hold ``model.safetensors``, sharded safetensors with their index, or
    ``pytorch_model.bin`` (read with ``weights_only=True``), or a LoRA adapter (``model/lora.py``:
    the recorded base, checked by its fingerprint, with the adapter merged in). Names saved through a wrapper
    (``_orig_mod.``, ``module.``) are loaded without it, with a warning; any other missing,
    unexpected or misshapen weight is an error: a model is never returned with random weights.
    """
    check_hub_reachable(name_or_path)
    from transformers import AutoModelForSeq2SeqLM
    from chef_genius.checkpoint import layout as ckpt

    folder = Path(name_or_path)
    local = folder.is_dir()
    if local and ckpt.is_adapter(folder):  # a LoRA adapter: its base, checked, with the adapter merged in
        from chef_genius.model import lora

        return lora.load_merged(folder, load_model)
    options = {}
    if local:
        wrapped = wrappers.wrapped(weight_names(folder))
        if wrapped:
            log.warning(
                "%d weight names in %s carry a wrapper prefix (e.g. %s): loaded without it; repair "
                "the folder with: python cli/verify_and_fix_checkpoint.py %s --fix",
                len(wrapped),
                folder,
                wrapped[0],
                folder,
            )
            options["key_mapping"] = wrappers.KEY_MAPPING
    try:
        model, info = AutoModelForSeq2SeqLM.from_pretrained(
            name_or_path, dtype=torch.float32, weights_only=True, output_loading_info=True, **options
        )
    except Exception as err:
        if trust.refused_by_weights_only(err):  # a pickled .bin holding more than tensors
            raise _refused_pickle(name_or_path) from None
        if not isinstance(err, (OSError, ValueError)):
            raise
        raise UserError(
            f"cannot load the model {str(name_or_path)!r} ({_first_line(err)}); give a model "
            "name the hub knows or a local folder with config.json and model.safetensors "
            "(or sharded safetensors with their index, or pytorch_model.bin)"
        ) from None
    problems = [
        f"{what}: {len(names)} ({', '.join(sorted(names)[:_NAMED])}{', ...' if len(names) > _NAMED else ''})"
        for what, names in (
            ("missing", info.get("missing_keys") or []),
            ("unexpected", info.get("unexpected_keys") or []),
            ("with the wrong shape", [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or []]),
        )
        if names
    ]
    if problems:
        raise UserError(
            f"the weights of {str(name_or_path)!r} do not match its config.json: "
            f"{'; '.join(problems)}; the model would start from random weights there, "
            "so it was not loaded (check the folder with cli/verify_and_fix_checkpoint.py)"
        )
    return model


def weight_names(folder: Path) -> list[str]:
    """Tensor names of a local model folder's weights, in any layout (``checkpoint/weight_files.py``)."""
    try:
        return list(weight_files.read_weights(folder)[1])
    except weight_files.RefusedPickle:
        raise _refused_pickle(folder) from None
    except (ValueError, OSError) as err:  # trust.Untrusted and MissingShard too
        raise UserError(f"cannot load the model {str(folder)!r}: {err}") from None


def _refused_pickle(name_or_path) -> UserError:
    """Never quotes torch's hint to retry with weights_only=False (that would run what the file carries)."""
    return UserError(
        f"the weights of {str(name_or_path)!r} are a pickle holding more than plain tensors; "
        "refused, never unpickled: get the model as model.safetensors from a source you trust"
    )


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def unwrap(model):
    """The bare model under torch.compile (``_orig_mod``) and DDP (``module``)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def triton_available() -> bool:
    """Triton imports (torch.compile's GPU code generator; absent on Windows, or broken installs)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        importlib.import_module("triton")
    except Exception:  # an install that does not load is no better than none
        return False
    return True


def _capability(device: torch.device) -> tuple[int, int]:
    major, minor = torch.cuda.get_device_capability(device)
    return major, minor


def _compile_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot generate code for this CUDA device, or None."""
    major, minor = _capability(device)
    if (major, minor) < (7, 0):
        return f"Triton cannot compile for this GPU (compute capability {major}.{minor}, it needs 7.0 or newer)"
    if not triton_available():
        return "Triton is not installed" + (" (usual on Windows)" if sys.platform == "win32" else "")
    return None


def should_compile(requested: bool | None, device: torch.device) -> tuple[bool, str]:
    """(compile?, why): on with CUDA where Triton can compile (the package imports and the GPU's compute
    capability is 7.0 or newer) unless disabled; off on CPU unless forced. An explicit ``--compile`` on a
    GPU where Triton cannot compile is refused here, at start (``UserError``, exit 2), not at the first
    forward."""
    if requested is False:
        return False, "disabled by --disable-compilation"
    if device.type != "cuda":
        if requested is True:
            return True, "forced by --compile"
        return False, "off on CPU (no steady gain, slow cold start); --compile forces it"
    problem = _compile_problem(device)
    if requested is True:
        if problem is not None:
            raise UserError(
                f"--compile cannot work here: {problem}; train without it (the default here) or "
                "pass --disable-compilation"
            )
        return True, "forced by --compile"
    if problem is not None:
        return False, f"off: {problem}"
    return True, "on: CUDA and Triton present"


def native_bf16(device: torch.device) -> bool:
    """bf16 in hardware (compute capability 8.0 or newer, or ROCm), not the emulation that
    ``torch.cuda.is_bf16_supported()`` also counts (T4, V100, RTX 20xx: much slower than fp32)."""
    if device.type != "cuda":
        return False
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the keyword
        return _capability(device) >= (8, 0)


def resolve_precision(requested: str, device: torch.device) -> str:
    """'bf16' or 'no'. fp16 is never used: T5 activations overflow in fp16. bf16 only where the GPU has
    it natively; elsewhere fp32, and the log says why."""
    if requested == "no":
        return "no"
    if native_bf16(device):
        return "bf16"
    if device.type == "cuda":
        major, minor = _capability(device)
        why = (
            f"this GPU (compute capability {major}.{minor}) has no native bf16 (emulated bf16 is slower than "
            "fp32) and fp16 is never used (T5 overflows in fp16): training in fp32"
        )
        if requested == "bf16":
            log.warning("--mixed-precision bf16 not used: %s", why)
        else:
            log.info("bf16 autocast off: %s", why)
        return "no"
    if requested == "bf16":
        log.warning("bf16 autocast needs a CUDA GPU with bf16 support; training in fp32")
    return "no"


def make_optimizer(model, learning_rate: float, weight_decay: float, device: torch.device, kind: str = "adamw"):
    """The optimizer over the trainable parameters, no weight decay on layer norms and biases.

    ``adamw``: torch's AdamW, fused on CUDA; ``adafactor``: transformers' Adafactor with the schedule's
    learning rate (no relative step, no parameter scaling, no first moment: factored second moments
    only); ``adamw-8bit``: bitsandbytes' 8-bit AdamW (CUDA only, checked by ``--optimizer``'s validation).
    """
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if "layer_norm" in name or param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if kind == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=learning_rate, scale_parameter=False, relative_step=False, warmup_init=False)
    if kind == "adamw-8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=learning_rate)
    extra: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=learning_rate, **extra)
