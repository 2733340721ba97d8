"""Metrics across resumes, TensorBoard, Weights & Biases and evaluation samples, on real tiny runs.

One uninterrupted run and one run stopped and resumed (with samples, TensorBoard and a stand-in
wandb module) are trained once for the whole module; each test checks one promise on them.
"""

from __future__ import annotations

import importlib.machinery
import logging
import sys
import types
from pathlib import Path

import pytest

from conftest import run_training, step_losses, train_args
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.monitoring.metrics import read_metrics
from chef_genius.monitoring.plotting import history

LOGGING_STEPS = 3


class FakeWandb(types.ModuleType):
    """Records what the trainer asks of wandb; never touches the network."""

    def __init__(self):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self
        rewound = (kwargs.get("resume_from") or "").split("?")[0]  # "ID?_step=N": the same run, rewound
        run_id = kwargs.get("id") or rewound or f"run{len(self.inits)}"

        class Run:
            id = run_id

            def log(self, values, step):
                fake.logged.append((step, values))

            def finish(self):
                fake.finished += 1

        return Run()

    def Html(self, text):  # noqa: N802 - wandb's API
        return text


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _run(*argv) -> list[str]:
    logger = logging.getLogger("chef_genius")
    handler, level = Capture(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert run_training(*argv) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return handler.lines


@pytest.fixture(scope="module")
def runs(tiny_model, small_csv, cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("monitoring")
    common = ("--logging-steps", LOGGING_STEPS, "--epochs", 1)
    plain = root / "plain"
    plain_log = _run(*train_args(tiny_model, small_csv, plain, cache_dir, *common))

    wandb = FakeWandb()
    saved_module = sys.modules.get("wandb")
    sys.modules["wandb"] = wandb
    try:
        resumed = root / "resumed"
        report = ("wandb", "tensorboard") if _has_tensorboard() else ("wandb",)
        extra = (*common, "--eval-samples", "2", "--wandb-project", "test-project", "--report-to", *report)
        first_log = _run(*train_args(tiny_model, small_csv, resumed, cache_dir, *extra, "--stop-after-steps", 7))
        second_log = _run(
            *train_args(tiny_model, small_csv, resumed, cache_dir, *extra, "--resume-from-checkpoint", "latest")
        )
    finally:
        if saved_module is None:
            sys.modules.pop("wandb", None)
        else:
            sys.modules["wandb"] = saved_module
    return types.SimpleNamespace(
        plain=plain, plain_log=plain_log, resumed=resumed, first_log=first_log, second_log=second_log, wandb=wandb
    )


def _has_tensorboard() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def test_resume_with_samples_stays_bitwise_equal_to_an_uninterrupted_run_without(runs):
    plain, resumed = step_losses(runs.plain), step_losses(runs.resumed)
    assert sorted(plain) == list(range(1, len(plain) + 1)) and len(plain) > 7
    assert resumed == plain  # exact float equality: samples drew nothing from the training RNG


def test_samples_are_logged_at_each_evaluation(runs):
    records = read_metrics(runs.resumed / "metrics.jsonl")
    eval_steps = [r["step"] for r in records if r["type"] == "eval"]
    samples = [r for r in records if r["type"] == "samples"]
    assert [r["step"] for r in samples] == eval_steps
    assert [s["ingredients"] for s in samples[0]["samples"]] == ["chicken, rice, garlic", "flour, butter, sugar, eggs"]
    assert all(isinstance(s["text"], str) for r in samples for s in r["samples"])
    assert any(line.startswith("sample at step 5 from chicken, rice, garlic") for line in runs.first_log)
    assert not [r for r in read_metrics(runs.plain / "metrics.jsonl") if r["type"] == "samples"]


def test_metrics_are_appended_across_a_resume_with_a_resume_record(runs):
    records = read_metrics(runs.resumed / "metrics.jsonl")
    marks = [r for r in records if r["type"] in ("start", "resume")]
    assert [(r["type"], r["step"]) for r in marks] == [("start", 0), ("resume", 7)]
    assert Path(marks[1]["from_checkpoint"]).name == "checkpoint-7"
    first_session = records[: records.index(marks[1])]
    assert [r["step"] for r in first_session if r["type"] == "train"] == [3, 6, 7]  # kept, not overwritten
    train = [r for r in records if r["type"] == "train"]
    assert {"step", "epoch", "loss", "step_losses", "lr", "tokens_per_s", "time"} <= set(train[0])


def test_log_lines_come_at_each_logging_step_without_a_terminal(runs):
    total = max(step_losses(runs.plain))
    lines = [line for line in runs.plain_log if line.startswith("step ") and " ETA " in line]
    expected = [s for s in range(1, total + 1) if s % LOGGING_STEPS == 0]
    if total % LOGGING_STEPS:
        expected.append(total)  # the final flush
    assert [int(line.split()[1].split("/")[0]) for line in lines] == expected
    assert all(line.split()[1].endswith(f"/{total}") for line in lines)


def test_wandb_run_id_is_kept_in_checkpoints_and_reused_on_resume(runs):
    wandb = runs.wandb
    assert len(wandb.inits) == 2 and wandb.finished == 2
    assert wandb.inits[0]["project"] == "test-project" and wandb.inits[0].get("id") is None
    assert wandb.inits[1]["resume_from"] == "run1?_step=8"  # the same run, from after checkpoint-7 on
    state = ckstate.load_training_state(runs.resumed / "checkpoint-7")
    assert state["reporting"] == {"wandb_run_id": "run1"}
    logged_steps = [step for step, values in wandb.logged if "train/loss" in values]
    assert logged_steps == sorted(logged_steps) and logged_steps[-1] == max(step_losses(runs.resumed))


@pytest.mark.skipif(not _has_tensorboard(), reason="tensorboard is not installed")
def test_tensorboard_curves_span_the_resume_once(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs.resumed / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == sorted(set(steps))
    train = [r["step"] for r in read_metrics(runs.resumed / "metrics.jsonl") if r["type"] == "train"]
    assert steps == sorted(set(train))
    assert [e.step for e in events.Scalars("eval/loss")]


def test_a_resume_from_an_older_checkpoint_replaces_the_replayed_steps_in_the_history():
    records = [
        {"type": "start", "step": 0},
        {"type": "train", "step": 4, "loss": 4.0, "step_losses": [1.0, 2.0, 3.0, 4.0], "lr": 1, "tokens_per_s": 1},
        {"type": "eval", "step": 4, "eval_loss": 9.0},
        {"type": "train", "step": 6, "loss": 5.5, "step_losses": [5.0, 6.0], "lr": 1, "tokens_per_s": 1},
        {"type": "resume", "step": 3, "from_checkpoint": "checkpoint-3"},
        {"type": "train", "step": 6, "loss": 0.5, "step_losses": [0.4, 0.5, 0.6], "lr": 1, "tokens_per_s": 1},
    ]
    h = history(records)
    assert h.step_losses == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 0.4), (5, 0.5), (6, 0.6)]
    assert h.evals == [] and [r["step"] for r in h.resumes] == [3]
    assert history(records + [{"type": "start", "step": 0}]).empty()  # a fresh run in the same folder


def test_report_to_an_uninstalled_package_is_one_line(tiny_model, small_csv, cache_dir, tmp_path, monkeypatch):
    from chef_genius.errors import UserError

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else object())
    with pytest.raises(UserError, match="--report-to wandb needs the wandb package: pip install wandb"):
        run_training(*train_args(tiny_model, small_csv, tmp_path / "run", cache_dir, "--report-to", "wandb"))
    assert not (tmp_path / "run").exists()
