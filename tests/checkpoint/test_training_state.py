"""``checkpoint/training_state.py``: checkpoints of every layout written so far unpack to the same
slices and answer the accessors alike, and a new one (version 2) writes each fact once."""

from __future__ import annotations

import pytest
import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.train import rng
from conftest import same_values

POSITION = {"epoch": 1, "samples_in_epoch": 24, "sampler_seed": 42, "num_samples": 94}
RUN = {
    "global_step": 7,
    "best_loss": 0.5,
    "best_step": 6,
    "best_value": 0.5,
    "tokens_seen": 1234,
    "train_seconds": 12.5,
    "micro_batch_split": 1,
}
OPTIMIZER = {
    "state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.ones(2)}},
    "param_groups": [{"lr": 1e-3, "params": [0]}],
}
SCHEDULER = {"last_epoch": 7, "base_lrs": [1e-3]}
SETTINGS = {"batch_size": 8, "seed": 42, "world_size": 2}
RANKS = [rng.seeded(1), rng.seeded(2)]


def _todays_main_layout() -> dict:
    """A training state as the writer of main up to 2026-12 laid it out (every repeated fact)."""
    return {
        "format": ckpt.FORMAT_NAME,
        "format_version": 1,
        "global_step": 7,
        "epoch": 1,
        "best_loss": 0.5,
        "run_state": {
            "global_step": 7,
            "epoch": 1,
            "samples_in_epoch": 24,
            **{k: v for k, v in RUN.items() if k != "global_step"},
        },
        "data_position": dict(POSITION),
        "optimizer_state_dict": OPTIMIZER,
        "optimizer_state_empty": False,
        "scheduler_state_dict": SCHEDULER,
        "rng_states": RANKS[0],
        "hyperparameters": SETTINGS,
        "versions": {"chef_genius": "0"},
        "torch_num_threads": 2,
        ckstate.RNG_PER_RANK: list(RANKS),
        ckstate.OPTIMIZER_KIND: "adafactor",
        ckstate.REPORTING_KEY: {"wandb_run_id": "abc"},
    }


def _pre_slices_layout() -> dict:
    """Older still: no run_state, no per-rank RNG, the position at the top (epoch) and in data_position."""
    return {
        "format": ckpt.FORMAT_NAME,
        "format_version": 1,
        "global_step": 7,
        "epoch": 1,
        "best_loss": 0.5,
        "data_position": {"epoch": 1, "samples_in_epoch": 24},
        "optimizer_state_dict": OPTIMIZER,
        "scheduler_state_dict": SCHEDULER,
        "rng_states": RANKS[0],
        "hyperparameters": SETTINGS,
    }


def _slices() -> dict:
    return {
        ckstate.RUN_STATE: dict(RUN),
        ckstate.DATA_POSITION: dict(POSITION),
        ckstate.OPTIMIZER: {"state": OPTIMIZER, "layout": None, "kind": "adafactor"},
        ckstate.SCHEDULER: SCHEDULER,
        ckstate.RNG: list(RANKS),
        ckstate.REPORTING: {"wandb_run_id": "abc"},
        ckstate.SETTINGS: SETTINGS,
    }


def test_todays_main_layout_unpacks_to_the_values_it_was_written_with():
    slices = ckstate.unpack_training_state(_todays_main_layout())
    assert slices[ckstate.RUN_STATE] == {**RUN, "epoch": 1, "samples_in_epoch": 24}
    assert slices[ckstate.DATA_POSITION] == POSITION
    assert slices[ckstate.OPTIMIZER]["kind"] == "adafactor" and slices[ckstate.OPTIMIZER]["layout"] is None
    assert same_values(slices[ckstate.RNG], RANKS) and slices[ckstate.SETTINGS] == SETTINGS
    assert ckstate.saved_world_size(_todays_main_layout()) == 2


def test_new_layout_unpacks_like_the_old_and_writes_step_loss_and_sample_once():
    new = ckstate.pack_training_state(_slices())
    assert ckstate.state_contract_problem(new) is None
    assert same_values(ckstate.unpack_training_state(new), ckstate.unpack_training_state(_todays_main_layout()))
    assert "global_step" not in new["run_state"] and "best_loss" not in new["run_state"]
    assert "samples_in_epoch" not in new["run_state"]
    assert (new["global_step"], new["best_loss"], new["data_position"]["samples_in_epoch"]) == (7, 0.5, 24)


def test_new_layout_writes_the_epoch_and_the_rng_once():
    new = ckstate.pack_training_state(_slices())
    assert new["format_version"] == ckpt.FORMAT_VERSION == 2
    assert "epoch" not in new and "epoch" not in new["run_state"] and new["data_position"]["epoch"] == 1
    assert "rng_states" not in new and same_values(new[ckstate.RNG_PER_RANK], RANKS)


@pytest.mark.parametrize(
    "layout", [_todays_main_layout, _pre_slices_layout, lambda: ckstate.pack_training_state(_slices())]
)
def test_every_layout_answers_the_accessors_alike(layout):
    state = layout()
    assert ckstate.state_contract_problem(state) is None
    assert (ckstate.saved_step(state), ckstate.saved_epoch(state)) == (7, 1)
    assert same_values(ckstate.rank0_rng(state), RANKS[0]) and ckstate.saved_world_size(state) == 2
    assert ckstate.rebuilt_facts(state) == []


def test_the_contract_follows_the_version():
    new = ckstate.pack_training_state(_slices())
    old = _todays_main_layout()
    del old["rng_states"]
    assert ckstate.state_contract_problem(old) == "lacks rng_states"  # version 1 still needs its copy
    assert ckstate.state_contract_problem({**new, "data_position": {"epoch": "one"}}) == (
        "holds a data_position epoch that is not an integer"
    )
    assert "rng_states_per_rank" in ckstate.state_contract_problem({**new, ckstate.RNG_PER_RANK: {"torch": 1}})
    del new[ckstate.RNG_PER_RANK]
    assert ckstate.state_contract_problem(new) == f"lacks {ckstate.RNG_PER_RANK}"
    newer = {**ckstate.pack_training_state(_slices()), "format_version": ckpt.FORMAT_VERSION + 1}
    assert "newer than this chef-genius reads" in ckstate.state_contract_problem(newer)


def test_a_state_without_rng_writes_none_and_says_so():
    new = ckstate.pack_training_state({**_slices(), ckstate.RNG: []})
    assert new[ckstate.RNG_PER_RANK] == [] and ckstate.rank0_rng(new) == {}
    assert ckstate.saved_world_size(new) == 2  # the settings say it


def test_a_state_from_before_the_slices_still_unpacks():
    slices = ckstate.unpack_training_state(_pre_slices_layout())
    assert (slices[ckstate.RUN_STATE]["global_step"], slices[ckstate.RUN_STATE]["best_loss"]) == (7, 0.5)
    assert slices[ckstate.DATA_POSITION] == {"epoch": 1, "samples_in_epoch": 24}
    assert same_values(slices[ckstate.RNG], [RANKS[0]]) and ckstate.saved_world_size(_pre_slices_layout()) == 2
