"""Never lose the learning: a non-finite step changes nothing, a spike or a run of non-finite steps
rolls back to the newest healthy checkpoint (exactly), and checkpoints are judged by their numbers.

The poisoned steps go through the product path: ``CHEF_GENIUS_POISON`` multiplies the loss of the
named steps inside the trainer's own step (see ``chef_genius/train/divergence.py``)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.data.position import DataPosition
from chef_genius.train import divergence
from conftest import run_training, step_losses, train_args


def _records(out, kind):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def _poisoned(steps: str):
    """Context: CHEF_GENIUS_POISON set for one run (module fixtures cannot take monkeypatch)."""

    class Env:
        def __enter__(self):
            os.environ[divergence.POISON_ENV] = steps

        def __exit__(self, *exc):
            os.environ.pop(divergence.POISON_ENV, None)

    return Env()


# ---------------------------------------------------------------------------------------------
# pure parts


def test_a_spike_is_judged_against_the_median_of_recent_losses():
    recent = [6.0, 5.9, 6.1, 5.8, 40.0, 6.0, 5.7, 5.9]  # one outlier does not move the median
    assert divergence.is_spike(18.0, recent, 3.0)
    assert not divergence.is_spike(17.0, recent, 3.0)
    assert not divergence.is_spike(100.0, recent[:7], 3.0)  # too little history yet
    assert not divergence.is_spike(100.0, recent, 0.0)  # 0: spike detection off


@pytest.mark.parametrize("fused", [False, True], ids=["flag-read", "skipped-on-device"])
def test_a_nonfinite_gradient_changes_no_weight_and_no_moment(fused):
    """Read on the host (the CPU trainer), or fused AdamW's found_inf (CUDA's path, run here on the CPU)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.1, fused=fused)
    assert divergence.skips_on_device(optimizer) == fused
    layer(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    before = [p.detach().clone() for p in layer.parameters()]
    moments = [v.clone() for s in optimizer.state.values() for v in s.values()]
    optimizer.zero_grad()
    (layer(torch.ones(1, 4)).sum() * float("nan")).backward()
    norm = torch.nn.utils.clip_grad_norm_(layer.parameters(), 1.0)
    finite = divergence.step_is_finite(torch.tensor(1.0), norm)
    divergence.skip_nonfinite_update(optimizer.step, optimizer, finite)
    assert not bool(finite)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(moments, (v for s in optimizer.state.values() for v in s.values())))


def test_a_skip_is_part_of_the_saved_data_position():
    position = DataPosition(num_samples=94)
    position.epoch, position.samples_in_epoch = 0, 64
    assert position.skip_to(1, 8) == (0, 64, 1, 8)
    restored = DataPosition(num_samples=94)
    restored.load_state_dict(position.state_dict())
    assert (restored.epoch, restored.samples_in_epoch, restored.skipped) == (1, 8, [[0, 64, 1, 8]])


# ---------------------------------------------------------------------------------------------
# training runs (tiny model, 94 recipes / batch 8 = 12 steps per epoch)


def test_a_poisoned_step_is_skipped_counted_and_logged(tiny_model, small_csv, cache_dir, tmp_path):
    out = tmp_path / "run"
    with _poisoned("4:nan"):
        code = run_training(
            *train_args(tiny_model, small_csv, out, cache_dir, "--save-steps", 1, "--max-steps", 5, "--eval-steps", 100)
        )
    assert code == 0
    losses = step_losses(out)
    assert losses[4] is None and all(losses[s] is not None for s in (1, 2, 3, 5))
    (record,) = [r for r in _records(out, "train") if r["step"] == 4]
    assert record["skipped_steps"] == [4] and record["skipped_total"] == 1
    # step 4 changed no weight and no optimizer moment; step 5 trained again
    weights = {s: (out / f"checkpoint-{s}" / ckpt.WEIGHTS).read_bytes() for s in (3, 4, 5)}
    assert weights[3] == weights[4] != weights[5]
    states = {s: ckstate.load_training_state(out / f"checkpoint-{s}")["optimizer_state_dict"]["state"] for s in (3, 4)}
    for key, moments in states[3].items():
        assert all(torch.equal(v, states[4][key][name]) for name, v in moments.items())
    health = ckstate.load_training_state(out / "checkpoint-5")[ckstate.HEALTH]
    assert health["weights_finite"] and health["moments_finite"] and health["skipped_steps"] == 1


@pytest.fixture(scope="module")
def rolled_back(tiny_model, small_csv, cache_dir, tmp_path_factory):
    """A run whose step 11 spikes (its loss x 10^4): rolled back to checkpoint-8, then trained to step 16."""
    out = tmp_path_factory.mktemp("spike") / "run"
    with _poisoned("11:1e4"):
        assert (
            run_training(
                *train_args(
                    tiny_model, small_csv, out, cache_dir, "--save-steps", 4, "--max-steps", 16, "--eval-steps", 100
                )
            )
            == 0
        )
    return out


def test_a_spike_rolls_back_to_the_newest_healthy_checkpoint_and_skips_its_recipes(rolled_back):
    (record,) = _records(rolled_back, "rollback")
    assert record["at_step"] == 11 and record["step"] == 8 and record["checkpoint"].endswith("checkpoint-8")
    assert record["skipped"] == [0, 64, 0, 88]  # the recipes of steps 9-11 (8 each)
    assert "loss spike" in record["reason"]
    assert sorted(step_losses(rolled_back)) == list(range(1, 17))
    assert max(step_losses(rolled_back).values()) < 10  # the spike was replaced by the rolled-back steps
    position = ckstate.load_training_state(rolled_back / "checkpoint-12")["data_position"]
    assert position["skipped_ranges"] == [[0, 64, 0, 88]]


def test_a_rolled_back_run_equals_a_resume_from_its_checkpoint_with_the_same_skip(
    rolled_back, tiny_model, small_csv, cache_dir, tmp_path
):
    from chef_genius.train.config import parse_args
    from chef_genius.train.trainer import Trainer

    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(rolled_back / "checkpoint-8", out / "checkpoint-8")
    trainer = Trainer(
        parse_args(
            train_args(
                tiny_model,
                small_csv,
                out,
                cache_dir,
                "--save-steps",
                4,
                "--max-steps",
                16,
                "--eval-steps",
                100,
                "--resume-from-checkpoint",
                out / "checkpoint-8",
            )
        )
    )
    try:
        trainer.setup()
        trainer.position.skip_to(0, 88)
        trainer.train()
    finally:
        trainer.close()
    expected, got = step_losses(rolled_back), step_losses(out)
    assert sorted(got) == list(range(9, 17))
    assert [got[s] for s in got] == [expected[s] for s in got]  # bitwise


def test_a_resume_after_a_rollback_is_bitwise_exact(rolled_back, tiny_model, small_csv, cache_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(rolled_back / "checkpoint-12", out / "checkpoint-12")
    assert (
        run_training(
            *train_args(
                tiny_model,
                small_csv,
                out,
                cache_dir,
                "--save-steps",
                4,
                "--max-steps",
                16,
                "--eval-steps",
                100,
                "--resume-from-checkpoint",
                "latest",
            )
        )
        == 0
    )
    expected, got = step_losses(rolled_back), step_losses(out)
    assert sorted(got) == [13, 14, 15, 16]
    assert [got[s] for s in got] == [expected[s] for s in got]


def test_nonfinite_steps_in_a_row_roll_back(tiny_model, small_csv, cache_dir, tmp_path):
    out = tmp_path / "run"
    with _poisoned("10-12:nan"):
        assert (
            run_training(
                *train_args(
                    tiny_model, small_csv, out, cache_dir, "--save-steps", 4, "--max-steps", 13, "--eval-steps", 100
                )
            )
            == 0
        )
    (record,) = _records(out, "rollback")
    assert (record["at_step"], record["step"], record["skipped"]) == (12, 8, [0, 64, 1, 0])
    assert "3 non-finite steps in a row" in record["reason"]


def test_a_divergence_with_no_rollback_left_stops_with_exit_6_naming_the_healthy_checkpoint(
    tiny_model, small_csv, cache_dir, tmp_path
):
    from chef_genius.errors import Diverged

    out = tmp_path / "run"
    with _poisoned("11:1e4"), pytest.raises(Diverged, match=r"diverged at step 11 \(loss spike") as err:
        run_training(
            *train_args(
                tiny_model,
                small_csv,
                out,
                cache_dir,
                "--save-steps",
                4,
                "--max-steps",
                16,
                "--eval-steps",
                100,
                "--max-rollbacks",
                0,
            )
        )
    assert err.value.exit_code == 6
    assert f"the newest healthy checkpoint is {out / 'checkpoint-8'}" in str(err.value)
    assert not (out / ckpt.WEIGHTS).exists()  # no final model


def test_nan_weights_are_never_saved_as_the_final_model(tiny_model, small_csv, cache_dir, tmp_path):
    """Weights that went NaN (rollback off, so each step is only skipped): exit 6, no final model."""
    from chef_genius.errors import Diverged
    from chef_genius.train.config import parse_args
    from chef_genius.train.trainer import Trainer

    out = tmp_path / "run"
    trainer = Trainer(
        parse_args(
            train_args(
                tiny_model,
                small_csv,
                out,
                cache_dir,
                "--save-steps",
                100,
                "--max-steps",
                2,
                "--eval-steps",
                100,
                "--max-nonfinite-steps",
                0,
            )
        )
    )
    try:
        trainer.setup()
        with torch.no_grad():
            next(trainer.model.parameters()).fill_(float("nan"))
        with pytest.raises(Diverged, match="final weights .*are not finite: no final model was saved") as err:
            trainer.train()
    finally:
        trainer.close()
    assert err.value.exit_code == 6
    assert not (out / ckpt.WEIGHTS).exists() and not ckpt.list_checkpoints(out)
