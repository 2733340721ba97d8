"""Weights & Biases for real, in its offline mode: a resumed run continues the same W&B run, rewound to
the checkpoint's step (needs the wandb package; requirements-dev.txt installs it)."""

from __future__ import annotations

import pytest

wandb = pytest.importorskip("wandb")

from chef_genius.checkpoint import training_state as ckstate  # noqa: E402
from conftest import run_training, train_args  # noqa: E402

QUICK = (
    "--max-steps",
    6,
    "--save-steps",
    3,
    "--max-source-length",
    32,
    "--max-target-length",
    64,
    "--eval-steps",
    100,
    "--report-to",
    "wandb",
    "--wandb-project",
    "chef-genius-test",
)


def test_a_resume_continues_the_wandb_run_from_the_checkpoint_step(
    tiny_model, small_csv, cache_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")  # nothing leaves the machine; `wandb sync` would upload it
    monkeypatch.setenv("WANDB_SILENT", "true")
    inits, real_init = [], wandb.init

    def init(**kwargs):
        run = real_init(**kwargs)
        inits.append((kwargs, run.id))
        return run

    monkeypatch.setattr(wandb, "init", init)
    out = tmp_path / "run"
    assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, *QUICK, "--stop-after-steps", 4)) == 0
    assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, *QUICK, "--auto-resume")) == 0
    (first, first_id), (second, second_id) = inits
    assert "resume_from" not in first and first_id
    assert ckstate.load_training_state(out / "checkpoint-3")["reporting"] == {"wandb_run_id": first_id}
    assert ckstate.load_training_state(out / "checkpoint-4")["reporting"] == {"wandb_run_id": first_id}
    assert second["resume_from"] == f"{first_id}?_step=5" and second_id == first_id  # steps 5.. replaced
    runs = sorted(p.name for p in (out / "wandb").iterdir() if p.name.startswith("offline-run-"))
    assert len(runs) == 2 and all(name.split("-")[-1] == first_id or name.split("-")[-2] == first_id for name in runs)
