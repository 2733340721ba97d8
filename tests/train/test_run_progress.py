"""The run's progress in one object (``train/state.py:RunProgress``), and the ``Trainer``'s attributes
declared in one place (``train/base.py:TrainerBase``). Fast: no training run."""

from __future__ import annotations

import ast
import typing

import torch

from chef_genius.data.position import DataPosition
from chef_genius.train.base import TrainerBase
from chef_genius.train.state import RunProgress, RunState
from conftest import REPO

TRAINER_PARTS = ("trainer", "base", "setup", "run_folder", "step", "periodic", "rollback", "ending")


def test_a_step_moves_the_step_the_tokens_and_the_log_window_together():
    run = RunProgress(RunState(global_step=4, tokens_seen=100))
    run.start_session()
    run.took_step(torch.tensor(2.5), 30, torch.tensor(True))
    run.took_step(torch.tensor(1.5), 20, torch.tensor(True))
    assert (run.step, run.session_start, run.unsettled_tokens, run.window.tokens) == (6, 4, 50, 50)
    assert [float(v) for v in run.window.losses] == [2.5, 1.5]
    assert run.state.tokens_seen == 100  # not read from the device until a log line or a save


def test_saving_settles_the_tokens_and_restoring_starts_a_new_window():
    run = RunProgress(RunState(global_step=4, tokens_seen=100))
    run.took_step(torch.tensor(2.0), torch.tensor(30), torch.tensor(True))  # a device tensor on several GPUs
    saved = run.state_dict()
    assert (saved["global_step"], saved["tokens_seen"], run.unsettled_tokens) == (5, 130, 0)
    run.took_step(torch.tensor(2.0), 7, torch.tensor(True))
    window = run.window
    run.load_state_dict(saved)  # a rollback to that checkpoint
    assert (run.step, run.state.tokens_seen, run.unsettled_tokens) == (5, 130, 0)
    assert run.window is not window and run.window.losses == []


def test_the_position_is_the_one_the_sampler_moves():
    position = DataPosition(epoch=1, samples_in_epoch=16, num_samples=94)
    run = RunProgress(position=position)
    position.advance(8)
    assert run.where == (1, 24)


def _assigned_attributes(path) -> set[str]:
    """Every ``self.NAME = ...`` (or annotated, or augmented) in a module's methods."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            for item in target.elts if isinstance(target, ast.Tuple) else [target]:
                if isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) and item.value.id == "self":
                    names.add(item.attr)
    return names


def test_every_trainer_attribute_is_declared_once_on_the_base():
    declared = set(typing.get_type_hints(TrainerBase))
    assigned = set().union(*(_assigned_attributes(REPO / "chef_genius" / "train" / f"{p}.py") for p in TRAINER_PARTS))
    assert assigned, "no attribute found: the parts moved?"
    assert assigned <= declared, f"set but not declared on TrainerBase: {sorted(assigned - declared)}"
    assert "window" not in declared and "unsettled_tokens" not in declared  # the run's progress: ``run``
