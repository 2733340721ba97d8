"""Model FLOPs and MFU (model FLOPs utilisation) for the T5 encoder-decoder, from its config.

FLOPs are counted on the real (non-padding) tokens, as matmul FLOPs of a training step (forward x1,
backward x2 = 6 FLOPs per parameter per token, plus the attention score and value products).
Embedding lookups, layer norms and softmax are not counted, as is usual for MFU. Padding tokens are
work the GPU does but not useful work, so MFU also reflects how well batches are length-grouped.

Peak FLOP/s are the vendor's dense (no sparsity) figures for the precision the step runs in; an
unknown GPU or a CPU has no MFU (``None``), never a made-up one.
"""

from __future__ import annotations

# Dense peak TFLOP/s by a substring of torch.cuda.get_device_name(); (bf16, tf32).
PEAK_TFLOPS = (
    ("H200", 989.0, 494.0),
    ("H100 PCIe", 756.0, 378.0),
    ("H100", 989.0, 494.0),
    ("GH200", 989.0, 494.0),
    ("B200", 2250.0, 1100.0),
    ("A100", 312.0, 156.0),
    ("A800", 312.0, 156.0),
    ("L40S", 362.0, 183.0),
    ("L40", 181.0, 90.5),
    ("L4", 121.0, 60.0),
    ("A10G", 70.0, 35.0),
    ("A10", 125.0, 62.5),
    ("RTX 4090", 165.0, 82.6),
    ("RTX 3090", 71.0, 35.6),
)


def _ff_matrices(config) -> int:
    gated = getattr(config, "is_gated_act", None)
    if gated is None:
        gated = str(getattr(config, "feed_forward_proj", "")).startswith("gated")
    return 3 if gated else 2


def t5_matmul_params(config) -> dict:
    """Parameters that take part in a matmul per encoder token and per decoder token."""
    d, inner, d_ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    ff = _ff_matrices(config) * d * d_ff
    attention = 4 * d * inner
    encoder = config.num_layers * (attention + ff)
    decoder_layers = getattr(config, "num_decoder_layers", None) or config.num_layers
    decoder = decoder_layers * (2 * attention + ff) + d * config.vocab_size  # + lm_head
    return {"encoder": encoder, "decoder": decoder}


def train_flops(
    config, source_tokens: int, target_tokens: int, source_len: float, target_len: float, frozen_weights: bool = False
) -> float:
    """Training FLOPs of one step over ``source_tokens`` / ``target_tokens`` real tokens whose mean
    sequence lengths are ``source_len`` / ``target_len``. The backward costs twice the forward (the
    inputs' and the weights' gradients); ``frozen_weights`` (LoRA): once, no weight gradients (the
    adapter's own FLOPs are a rounding error at small ranks)."""
    params = t5_matmul_params(config)
    inner = config.num_heads * config.d_kv
    decoder_layers = getattr(config, "num_decoder_layers", None) or config.num_layers
    # QK^T and AV: 2 * 2 * seq * inner FLOPs per token per attention, forward.
    enc_attn = config.num_layers * 4 * source_len * inner
    dec_attn = decoder_layers * 4 * (target_len + source_len) * inner  # self + cross attention
    forward = source_tokens * (2 * params["encoder"] + enc_attn) + target_tokens * (2 * params["decoder"] + dec_attn)
    return (2.0 if frozen_weights else 3.0) * forward


def peak_flops(device, precision: str) -> float | None:
    """Dense peak FLOP/s of one device for ``precision`` ('bf16' or 'no' = TF32), None if unknown."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, bf16, tf32 in PEAK_TFLOPS:
        if key in name:
            return (bf16 if precision == "bf16" else tf32) * 1e12
    return None


def mfu(flops: float, seconds: float, peak: float | None, num_devices: int = 1) -> float | None:
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / (peak * num_devices)
