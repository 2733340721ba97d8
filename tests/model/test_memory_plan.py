"""The memory plan: the exact part equals what torch really allocates for the tiny model's weights,
gradients and optimizer state; FLAN-T5-large is planned offline; --plan-only trains nothing."""

from __future__ import annotations

import pytest
import torch

from chef_genius.model import memory
from chef_genius.model.loading import load_model, make_optimizer
from conftest import run_training, train_args
from chef_genius.train.memory_plan import card_table


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("kind", ["adamw", "adafactor"])
def test_exact_part_equals_the_real_allocation(tiny_model, kind):
    model = load_model(tiny_model)
    optimizer = make_optimizer(model, 1e-3, 0.01, torch.device("cpu"), kind)
    ids = torch.tensor([[5, 6, 7, 1]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    planned = memory.plan(model, memory.Setting(optimizer=kind, micro_batch=1))
    assert planned.weights == tensor_bytes(model.parameters())
    assert planned.gradients == tensor_bytes(p.grad for p in model.parameters())
    state = [value for entry in optimizer.state.values() for value in entry.values()]
    assert planned.optimizer_state == tensor_bytes(state)


def test_flan_t5_large_is_planned_without_weights():
    model = memory.flan_t5_large()
    assert next(model.parameters()).device.type == "meta"
    planned = memory.plan(model, memory.Setting())
    assert planned.parameters == planned.trainable == 783_150_080
    tensors = len(list(model.parameters()))
    assert planned.weights == planned.gradients == 4 * 783_150_080
    assert planned.optimizer_state == 8 * 783_150_080 + 4 * tensors
    adafactor = memory.plan(model, memory.Setting(optimizer="adafactor"))
    assert adafactor.optimizer_state < 0.01 * planned.optimizer_state
    eight_bit = memory.plan(model, memory.Setting(optimizer="adamw-8bit"))
    assert 2 * 783_150_080 < eight_bit.optimizer_state < 2.1 * 783_150_080


def test_activation_estimate_scales_and_checkpointing_saves():
    model = memory.flan_t5_large()
    full = memory.plan(model, memory.Setting(micro_batch=4))
    assert full.activations == 4 * full.per_example + full.activation_fixed
    saved = memory.plan(model, memory.Setting(micro_batch=4, gradient_checkpointing=True))
    assert saved.activations < full.activations / 4
    assert full.largest_micro_batch(full.fixed + full.activation_fixed + 3 * full.per_example) == 3
    assert full.largest_micro_batch(full.fixed + full.activation_fixed - 1) == 0


def test_plan_only_prints_the_plans_and_trains_nothing(tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        run_training(
            "--plan-only", "--pretrained-model", str(tiny_model), "--model-output", str(out), "--batch-size", "4"
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "weights (fp32)" in text and "exact" in text and "estimated" in text
    assert "--optimizer adafactor --batch-size 4 --gradient-checkpointing" in text
    assert not out.exists()


def test_the_training_log_shows_the_plan(tiny_model, small_csv, cache_dir, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    args = train_args(
        tiny_model, small_csv, tmp_path / "run", cache_dir, "--max-steps", "1", "--optimizer", "adafactor"
    )
    assert run_training(*args) == 0
    assert "memory plan:" in caplog.text and "--optimizer adafactor" in caplog.text
    assert "optimizer state" in caplog.text and "activations" in caplog.text


def test_docs_memory_table_is_the_plans():
    from conftest import REPO

    assert card_table() in (REPO / "docs" / "memory.md").read_text(encoding="utf-8")


def test_advice_names_only_settings_that_fit():
    from chef_genius.train.config import TrainConfig
    from chef_genius.train.memory_plan import advice

    model = memory.flan_t5_large()
    config = TrainConfig(data="x", batch_size=8)
    text = advice(model, config, bf16=True, free=12 * memory.GIB)
    # One micro-batch per step (no accumulation): the gradients are not held beside the activations, so
    # the peak is the larger of the forward's end, 2.92 GiB weights + 0.59 CUDA + 1.40 bf16 weight copies
    # + 1.62 activations = 6.53 GiB, and the backward's end, weights + CUDA + 2.92 GiB gradients = 6.43
    # (was 8.0: gradients and activations counted together, no weight copies).
    assert "--optimizer adafactor --batch-size 8 --gradient-checkpointing (~6.5 GiB)" in text
    assert "--optimizer adamw --batch-size 8 --gradient-checkpointing (~" not in text  # 12.4 GiB
    assert "--gradient-checkpointing --lora-r 16 (~5.4 GiB)" in text  # the adapter's optimizer is small
    assert "no planned setting fits" in advice(model, config, bf16=True, free=4 * memory.GIB)


@pytest.mark.parametrize("kind", ["adamw", "adafactor"])
def test_lora_plan_equals_what_the_real_peft_model_allocates(tiny_model, kind):
    """The plan with --lora-r counts what training with peft really holds: the adapter's parameters,
    their gradients and the optimizer's state over them, and the frozen base's weights."""
    from chef_genius.model import lora

    model = load_model(tiny_model)
    planned = memory.plan(model, memory.Setting(optimizer=kind, micro_batch=1, lora_r=4))  # on the base
    model = lora.wrap(model, 4, 8.0, 0.0)
    optimizer = make_optimizer(model, 1e-3, 0.01, torch.device("cpu"), kind)
    ids = torch.tensor([[5, 6, 7, 1]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert planned.trainable == sum(p.numel() for p in trainable) > 0
    assert planned.weights == tensor_bytes(model.parameters())
    assert planned.gradients == tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
    state = [value for entry in optimizer.state.values() for value in entry.values()]
    assert len(optimizer.state) == len(trainable)
    assert planned.optimizer_state == tensor_bytes(state)


def test_activation_estimate_follows_the_lean_loss():
    """Only labelled positions are projected, a chunk at a time: the vocabulary no longer grows the
    per-example activations; one chunk of logits (and a trained head's gradient) is fixed."""
    from dataclasses import replace as copy

    model = memory.flan_t5_large()
    wide = memory.meta_model(copy_config(model.config, vocab_size=2 * model.config.vocab_size), untied_head=True)
    setting = memory.Setting(micro_batch=4)
    narrow_plan, wide_plan = memory.plan(model, setting), memory.plan(wide, setting)
    assert wide_plan.per_example == narrow_plan.per_example
    v, h = model.config.vocab_size, model.config.d_model
    assert wide_plan.activation_fixed - narrow_plan.activation_fixed == memory.CHUNK_ROWS * v * (2 + 4 + 2) + 4 * v * h
    assert narrow_plan.activations == 4 * narrow_plan.per_example + narrow_plan.activation_fixed
    lora_plan = memory.plan(model, copy(setting, lora_r=16))  # a frozen head: no head gradient
    assert narrow_plan.activation_fixed - lora_plan.activation_fixed == 4 * v * h
    budget = narrow_plan.fixed + narrow_plan.activation_fixed + 3 * narrow_plan.per_example
    assert narrow_plan.largest_micro_batch(budget) == 3


def copy_config(config, **changes):
    fresh = type(config).from_dict(config.to_dict())
    for key, value in changes.items():
        setattr(fresh, key, value)
    return fresh


FLAN_T5_LARGE_MATMUL_WEIGHTS = 783_150_080 - 32_128 * 1024 - 122 * 1024 - 2 * 32 * 16
# every parameter but the shared embedding, the 122 layer norms and the two relative position biases


def test_bf16_weight_copies_are_planned_for_every_matmul_weight():
    model = memory.flan_t5_large()
    planned = memory.plan(model, memory.Setting())
    assert planned.weight_copies == 2 * FLAN_T5_LARGE_MATMUL_WEIGHTS == 1_500_250_112  # 1.40 GiB
    assert memory.plan(model, memory.Setting(gradient_checkpointing=True)).weight_copies == planned.weight_copies
    assert memory.plan(model, memory.Setting(bf16=False)).weight_copies == 0
    # a frozen base is cast layer by layer under checkpointing (autocast caches trained weights only)
    assert memory.plan(model, memory.Setting(lora_r=16, gradient_checkpointing=True)).weight_copies == 0
    assert memory.plan(model, memory.Setting(lora_r=16)).weight_copies > planned.weight_copies
    assert planned.total >= planned.weights + planned.optimizer_state + planned.weight_copies + planned.activations


def test_the_weight_copies_are_what_autocast_keeps_for_the_backward(tiny_model):
    """Measured on the tiny model under bf16 autocast (CPU): the tensors autograd saves for the backward
    include a bf16 copy of every nn.Linear weight, and the plan counts exactly those."""
    model = load_model(tiny_model)
    saved = []
    ids = torch.randint(3, 100, (2, 8))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, decoder_input_ids=ids, use_cache=False)
    copies = [t for t in saved if t.dtype == torch.bfloat16]
    weights = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)}

    def is_copy_of(c, w):
        w = w.detach().to(torch.bfloat16)
        return any(c.shape == form.shape and torch.equal(c, form) for form in (w, w.t()))

    kept = [w for w in weights.values() if any(is_copy_of(c, w) for c in copies)]
    assert len(kept) == len(weights) > 0
    assert memory.plan(model, memory.Setting()).weight_copies == sum(2 * w.numel() for w in kept)


def test_gradients_are_held_with_the_activations_only_under_accumulation():
    """A step's backward frees the activations while it writes the gradients, and the step ends with
    zero_grad(set_to_none=True); with --gradient-accumulation-steps above 1 the next micro-batch's
    forward runs beside the gradients of the ones before."""
    model = memory.flan_t5_large()
    one, several = (memory.plan(model, memory.Setting(micro_batch=4, accumulation=a)) for a in (1, 2))
    assert several.total - one.total == one.gradients == 4 * 783_150_080
    assert one.total == one.weights + one.optimizer_state + memory.CUDA_OVERHEAD + one.weight_copies + one.activations
    # with checkpointing, little is held at the forward's end: the backward's end (all gradients) is the peak
    lean = memory.plan(model, memory.Setting(micro_batch=1, gradient_checkpointing=True, optimizer="adafactor"))
    assert lean.total == lean.weights + lean.optimizer_state + memory.CUDA_OVERHEAD + lean.gradients
    assert lean.largest_micro_batch(lean.total - 1) == 0
    # the training log says which case applies
    assert "held with the activations: gradient accumulation" in "\n".join(several.lines())
    assert "not held with the activations" in "\n".join(one.lines())
