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
    assert full.activations == 4 * full.per_example
    saved = memory.plan(model, memory.Setting(micro_batch=4, gradient_checkpointing=True))
    assert saved.activations < full.activations / 4
    assert full.largest_micro_batch(full.fixed + 3 * full.per_example) == 3
    assert full.largest_micro_batch(full.fixed - 1) == 0


def test_plan_only_prints_the_plans_and_trains_nothing(tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_training("--plan-only", "--pretrained-model", str(tiny_model), "--model-output", str(out),
                        "--batch-size", "4") == 0
    text = capsys.readouterr().out
    assert "weights (fp32)" in text and "exact" in text and "estimated" in text
    assert "--optimizer adafactor --batch-size 4 --gradient-checkpointing" in text
    assert not out.exists()


def test_the_training_log_shows_the_plan(tiny_model, small_csv, cache_dir, tmp_path, caplog):
    import logging
    caplog.set_level(logging.INFO)
    args = train_args(tiny_model, small_csv, tmp_path / "run", cache_dir, "--max-steps", "1",
                      "--optimizer", "adafactor")
    assert run_training(*args) == 0
    assert "memory plan:" in caplog.text and "--optimizer adafactor" in caplog.text
    assert "optimizer state" in caplog.text and "activations" in caplog.text


def test_readme_table_is_the_plans():
    from conftest import REPO
    assert card_table() in (REPO / "README.md").read_text(encoding="utf-8")


def test_advice_names_only_settings_that_fit():
    from chef_genius.train.config import TrainConfig
    from chef_genius.train.memory_plan import advice
    model = memory.flan_t5_large()
    config = TrainConfig(data="x", batch_size=8)
    text = advice(model, config, bf16=True, free=12 * memory.GIB)
    assert "--optimizer adafactor --batch-size 8 --gradient-checkpointing (~8.9 GiB)" in text
    assert "--optimizer adamw --batch-size 8 --gradient-checkpointing" not in text  # 14.7 GiB
    assert "no planned setting fits" in advice(model, config, bf16=True, free=4 * memory.GIB)
