"""The memory plan: what a training setting needs on the GPU, before anything is allocated there.

Weights, gradients and optimizer state are counted exactly from the model's parameters (on the meta
device for ``--plan-only``: no weights are read): fp32 master weights (mixed precision is autocast,
never a cast of the weights), fp32 gradients of the trainable parameters, and the optimizer's state
as each optimizer lays it out:

- ``adamw`` (torch): two fp32 moments per element plus a 4-byte step per tensor;
- ``adafactor`` (transformers, no first moment): a row and a column vector of fp32 second moments per
  matrix, a full one per vector, plus a 4-byte RMS per tensor (the step is a Python int);
- ``adamw-8bit`` (bitsandbytes' defaults): two uint8 moments per element with an fp32 scale per block
  of 256, tensors under 4096 elements in fp32.

The activations of one micro-batch are an estimate (marked so wherever shown) from T5's shapes at
the longest batch (``--max-source-length`` x ``--max-target-length``): what each layer keeps for
the backward pass (all of it, or only its input with ``--gradient-checkpointing`` plus one layer
being recomputed), and the loss. The trainer's loss is the lean one (``model/lean_loss.py``): only
the labelled positions are projected to the vocabulary, ``CHUNK_ROWS`` at a time, and what it keeps
for the backward is the gradient of those positions' hidden states; one chunk of logits (with its
fp32 copy and gradient) and, for a trained head, the head's fp32 gradient exist once, whatever the
micro-batch (``activation_fixed``). Every target position is counted as labelled (the longest batch).
Under LoRA each adapted layer also keeps its dropped-out input and its rank-r projection.

Two more terms, and when each is held (``Plan.total``):

- bf16 weight copies (``weight_copy_bytes``, estimated): under bf16 autocast every ``nn.Linear``
  multiplies with a bf16 copy of its fp32 weight, and that copy is kept for the backward pass (2
  bytes per element of every matmul weight, the head included: 1.40 GiB for FLAN-T5-large). With
  gradient checkpointing, autocast's cache still holds the copies of trained weights until the
  forward ends; a LoRA run's frozen base is cast layer by layer then, so nothing stays. None in fp32.
- gradients are not held together with the activations: a step's backward frees the activations as it
  writes the gradients, and the step ends with ``zero_grad(set_to_none=True)``. They are, from the
  second micro-batch of a step on, with ``--gradient-accumulation-steps`` above 1 (``Setting.accumulation``).

  total = weights + optimizer state + CUDA overhead
          + max(activations + weight copies + (gradients if accumulation > 1 else 0),   # the forward's end
                gradients)                                                              # the backward's end

Pure functions except ``gpu_free_bytes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from chef_genius.model.lean_loss import CHUNK_ROWS
from chef_genius.model.names import LORA_TARGETS

GIB = 1 << 30
CUDA_OVERHEAD = 600 << 20  # CUDA context, cuBLAS workspace, allocator slack: an estimate
CARDS_GIB = (8, 12, 16, 24, 80)
OPTIMIZERS = ("adamw", "adafactor", "adamw-8bit")


@dataclass(frozen=True)
class Setting:
    """What the plan depends on, besides the model."""

    optimizer: str = "adamw"
    bf16: bool = True
    gradient_checkpointing: bool = False
    micro_batch: int = 8
    source_length: int = 256
    target_length: int = 512
    lora_r: int = 0  # 0: full fine-tuning
    lora_targets: tuple = LORA_TARGETS
    accumulation: int = 1  # micro-batches per optimizer step: above 1, gradients stay meanwhile

    def flags(self) -> str:
        words = [f"--optimizer {self.optimizer}", f"--batch-size {self.micro_batch}"]
        if self.gradient_checkpointing:
            words.append("--gradient-checkpointing")
        if self.lora_r:
            words.append(f"--lora-r {self.lora_r}")
        if not self.bf16:
            words.append("--mixed-precision no")
        return " ".join(words)


@dataclass(frozen=True)
class Plan:
    setting: Setting
    parameters: int  # elements, each shared tensor once
    trainable: int
    weights: int  # bytes, exact
    gradients: int  # bytes, exact
    optimizer_state: int  # bytes, exact
    activations: int  # bytes, estimated, one micro-batch
    per_example: int  # bytes of activations per example of the micro-batch, estimated
    activation_fixed: int = 0  # bytes of activations whatever the micro-batch (the loss's chunk), estimated
    weight_copies: int = 0  # bytes of bf16 weight copies kept for the backward, estimated

    @property
    def held_gradients(self) -> int:
        """Gradient bytes held while a micro-batch's activations are: all of them under accumulation."""
        return self.gradients if self.setting.accumulation > 1 else 0

    @property
    def fixed(self) -> int:
        """Bytes held at the forward's end that do not depend on the micro-batch."""
        return self.weights + self.optimizer_state + CUDA_OVERHEAD + self.weight_copies + self.held_gradients

    @property
    def total(self) -> int:
        """The peak: the forward's end, or the backward's end (all gradients, activations freed)."""
        return max(self.fixed + self.activations, self.weights + self.optimizer_state + CUDA_OVERHEAD + self.gradients)

    def largest_micro_batch(self, capacity: int) -> int:
        """The largest micro-batch whose estimated total fits ``capacity`` bytes (0: not even one)."""
        if self.weights + self.optimizer_state + CUDA_OVERHEAD + self.gradients > capacity:
            return 0
        left = capacity - self.fixed - self.activation_fixed
        return max(0, left // self.per_example) if self.per_example else 0

    def lines(self, free: int | None = None) -> list[str]:
        s = self.setting
        head = (
            f"memory plan: {self.parameters:,} parameters ({self.trainable:,} trainable), "
            f"{'bf16 autocast' if s.bf16 else 'fp32'}, --optimizer {s.optimizer}"
            f"{', LoRA r=' + str(s.lora_r) if s.lora_r else ''}"
            f"{', gradient checkpointing' if s.gradient_checkpointing else ''}, micro-batch {s.micro_batch} "
            f"x ({s.source_length} source + {s.target_length} target tokens)"
        )
        rows = [
            head,
            f"  weights (fp32)          {gib(self.weights)}  exact",
            f"  gradients               {gib(self.gradients)}  exact ("
            + (
                "held with the activations: gradient accumulation"
                if self.held_gradients
                else "not held with the activations: no gradient accumulation"
            )
            + ")",
            f"  optimizer state         {gib(self.optimizer_state)}  exact",
            f"  activations             {gib(self.activations)}  estimated ({gib(self.per_example).strip()} "
            "per example)",
            f"  bf16 weight copies      {gib(self.weight_copies)}  estimated (autocast's, kept for the backward)",
            f"  CUDA context and slack  {gib(CUDA_OVERHEAD)}  estimated",
            f"  total                   {gib(self.total)}  " + verdict(self.total, free),
        ]
        return rows


def gib(size: int) -> str:
    return f"{size / GIB:7.2f} GiB"


def verdict(total: int, free: int | None) -> str:
    if free is None:
        return "(no CUDA GPU here to compare with)"
    return f"{'fits in' if total <= free else 'does NOT fit in'} the GPU's {free / GIB:.2f} GiB free"


# ---------------------------------------------------------------------------------------------
# the exact part


def unique_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    return list(model.named_parameters())  # named_parameters already yields a tied tensor once


def lora_shapes(model, targets=LORA_TARGETS) -> list[tuple[int, int]]:
    """(in, out) features of every ``nn.Linear`` LoRA would wrap: those whose name ends in a target."""
    shapes = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            shapes.append((module.in_features, module.out_features))
    return shapes


def trainable_shapes(model, setting: Setting) -> list[tuple[int, ...]]:
    """The shapes of the tensors the optimizer updates."""
    if setting.lora_r:
        r = setting.lora_r
        return [
            shape
            for fan_in, fan_out in lora_shapes(model, setting.lora_targets)
            for shape in ((r, fan_in), (fan_out, r))
        ]
    return [tuple(p.shape) for _, p in unique_parameters(model) if p.requires_grad]


def optimizer_bytes(shapes: list[tuple[int, ...]], kind: str) -> int:
    total = 0
    for shape in shapes:
        n = math.prod(shape)
        if kind == "adamw":
            total += 2 * 4 * n + 4
        elif kind == "adafactor":
            if len(shape) >= 2:
                total += 4 * (math.prod(shape[:-1]) + math.prod(shape[:-2] + shape[-1:])) + 4
            else:
                total += 4 * n + 4
        elif kind == "adamw-8bit":
            total += 2 * 4 * n if n < 4096 else 2 * (n + 4 * math.ceil(n / 256))
        else:
            raise ValueError(f"no memory layout known for optimizer {kind!r}")
    return total


# ---------------------------------------------------------------------------------------------
# the estimated part


def weight_copy_bytes(model, setting: Setting) -> int:
    """The bf16 copies of matmul weights that autocast keeps for the backward (module docstring): 2 bytes
    per element of each ``nn.Linear`` weight (each shared tensor once) and, under LoRA, of the adapter."""
    if not setting.bf16 or (setting.lora_r and setting.gradient_checkpointing):
        return 0
    weights = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
    adapter = sum(math.prod(shape) for shape in trainable_shapes(model, setting)) if setting.lora_r else 0
    return 2 * (sum(weights.values()) + adapter)


def loss_fixed_bytes(config, setting: Setting) -> int:
    """The lean loss's memory that does not grow with the micro-batch: one chunk of logits in the
    autocast dtype, its fp32 copy turned into its gradient, and the head's fp32 gradient when the head
    trains (not under LoRA: it is frozen)."""
    a = 2 if setting.bf16 else 4
    chunk = CHUNK_ROWS * config.vocab_size * (a + 4 + a)
    return chunk + (0 if setting.lora_r else 4 * config.vocab_size * config.d_model)


def lora_per_token(config, setting: Setting, attentions: int) -> int:
    """Bytes per token an adapted layer keeps for the adapter's backward: each adapted projection's
    dropped-out input with its mask, and its rank-r projection (autocast dtype)."""
    a, r, targets = (2 if setting.bf16 else 4), setting.lora_r, set(setting.lora_targets)
    widths = [config.d_model] * (attentions * len(targets & {"q", "k", "v"}))
    widths += [config.num_heads * config.d_kv] * (attentions * ("o" in targets))
    gated = "gated" in config.feed_forward_proj
    widths += [config.d_model] * (len(targets & {"wi_0", "wi_1"}) if gated else int("wi" in targets))
    widths += [config.d_ff] * ("wo" in targets)
    return sum(width * (a + 1) + r * a for width in widths)


def activation_bytes(config, setting: Setting, batch: int | None = None) -> int:
    """What one micro-batch of ``batch`` examples keeps for the backward pass (an estimate), without
    ``loss_fixed_bytes``."""
    b = setting.micro_batch if batch is None else batch
    s, t = setting.source_length, setting.target_length
    h, f = config.d_model, config.d_ff
    inner, heads = config.num_heads * config.d_kv, config.num_heads
    a = 2 if setting.bf16 else 4  # bytes of an autocast activation
    scores = 4 + 2 * a + 1  # fp32 scores (+ fp32 position bias), softmax, dropout mask and output
    ff = (5 * a + 1) if "gated" in config.feed_forward_proj else (3 * a + 1)
    encoder_layer = b * s * (2 * (4 + a) * h + 4 * a * inner + 2 * h) + b * heads * s * s * scores + b * s * f * ff
    decoder_layer = (
        b * t * (3 * (4 + a) * h + 6 * a * inner + 3 * h)
        + b * heads * t * t * scores
        + b * heads * t * s * scores
        + 2 * a * b * s * inner
        + b * t * f * ff
    )
    if setting.lora_r:
        encoder_layer += b * s * lora_per_token(config, setting, attentions=1)
        decoder_layer += b * t * lora_per_token(config, setting, attentions=2)
    # the lean loss keeps the labelled positions' hidden states and their gradient (model/lean_loss.py)
    loss = b * t * h * 2 * a
    encoder_layers, decoder_layers = config.num_layers, config.num_decoder_layers
    if setting.gradient_checkpointing:
        kept = 4 * b * (encoder_layers * s + decoder_layers * t) * h
        return kept + max(encoder_layer, decoder_layer) + loss
    return encoder_layers * encoder_layer + decoder_layers * decoder_layer + loss


# ---------------------------------------------------------------------------------------------
# plans


def plan(model, setting: Setting) -> Plan:
    params = unique_parameters(model)
    base = sum(p.numel() for _, p in params)
    shapes = trainable_shapes(model, setting)
    trainable = sum(math.prod(shape) for shape in shapes)
    weights = 4 * (base + (trainable if setting.lora_r else 0))
    fixed = loss_fixed_bytes(model.config, setting)
    return Plan(
        setting,
        base + (trainable if setting.lora_r else 0),
        trainable,
        weights,
        4 * trainable,
        optimizer_bytes(shapes, setting.optimizer),
        activation_bytes(model.config, setting) + fixed,
        activation_bytes(model.config, setting, batch=1),
        fixed,
        weight_copy_bytes(model, setting),
    )


def alternatives(setting: Setting, lora: bool = True, eight_bit: bool = True) -> list[Setting]:
    """The chosen setting and cheaper ones: other optimizers, gradient checkpointing, LoRA, half batches."""
    options = [setting]
    optimizers = [o for o in OPTIMIZERS if o != setting.optimizer and (eight_bit or o != "adamw-8bit")]
    for optimizer in optimizers:
        options.append(replace(setting, optimizer=optimizer))
    if not setting.gradient_checkpointing:
        options += [replace(o, gradient_checkpointing=True) for o in list(options)]
    if lora and not setting.lora_r:
        options.append(replace(setting, lora_r=16, gradient_checkpointing=True))
    batch = setting.micro_batch // 2
    while batch >= 1:
        options.append(replace(setting, micro_batch=batch, gradient_checkpointing=True, optimizer="adafactor"))
        batch //= 2
    return list(dict.fromkeys(options))


def gpu_free_bytes() -> int | None:
    """Free memory of the current CUDA device (None without one)."""
    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info()
    return free


def fitting(model, settings: list[Setting], free: int) -> list[Plan]:
    """The plans among ``settings`` whose estimated total fits ``free`` bytes, cheapest change first."""
    return [p for p in (plan(model, s) for s in settings) if p.total <= free]


def meta_model(config, untied_head: bool = False):
    """The model of ``config`` on the meta device: shapes without memory. ``untied_head``: its own
    ``lm_head`` as FLAN-T5's weights have (transformers 5 ties T5's head in the config, and
    ``from_pretrained`` unties it when the weights hold a different one)."""
    from transformers import AutoModelForSeq2SeqLM

    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(config)
        head = model.get_output_embeddings()
        if untied_head and head.weight is model.get_input_embeddings().weight:
            head.weight = torch.nn.Parameter(torch.empty_like(head.weight))
    return model


def flan_t5_large():
    """FLAN-T5-large (783M parameters) on the meta device, its architecture written out here so the
    memory table (docs/memory.md) needs no download."""
    from transformers import T5Config

    # tie_word_embeddings goes through T5Config's **kwargs, which its annotations hide
    config = T5Config(
        d_model=1024,
        d_ff=2816,
        num_layers=24,
        num_decoder_layers=24,
        num_heads=16,  # type: ignore[call-arg]
        d_kv=64,
        vocab_size=32128,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    return meta_model(config, untied_head=True)
