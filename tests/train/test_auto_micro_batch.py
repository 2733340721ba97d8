"""Out of GPU memory in a step, injected on CPU: --auto-micro-batch halves the micro-batch until the
step fits, keeping the recipes of each step and the schedule; without it the run ends with exit 5."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.errors import EXIT_OUT_OF_MEMORY, OutOfMemory
from chef_genius.train.oom import is_out_of_memory, split_micro_batches
from chef_genius.train.trainer import Trainer
from conftest import run_training, step_losses, train_args

STEPS = ("--max-steps", "4", "--save-steps", "2", "--gradient-accumulation-steps", "2")


def fits_two_rows(monkeypatch, after_step: int = 0, recipes: dict | None = None, error=None):
    """Steps after ``after_step`` run out of memory whenever a micro-batch has more than 2 rows (raising
    ``error()``, by default a ``torch.cuda.OutOfMemoryError``); ``recipes``: step -> the source rows it
    trained on (pads stripped), for the steps that fit."""
    real = Trainer._train_step
    seen = []

    def step(self, window):
        seen.append([batch["input_ids"].shape[0] for batch in window])
        if self.state.global_step >= after_step and max(b["input_ids"].shape[0] for b in window) > 2:
            raise error() if error else torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        if recipes is not None:
            recipes[self.state.global_step + 1] = sorted(
                tuple(row[row != 0].tolist()) for batch in window for row in batch["input_ids"]
            )
        return real(self, window)

    monkeypatch.setattr(Trainer, "_train_step", step)
    return seen


@pytest.fixture(scope="module")
def reference(tiny_model, small_csv, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("oom-ref") / "run"
    recipes = {}
    with pytest.MonkeyPatch.context() as patch:
        fits_two_rows(patch, after_step=10**6, recipes=recipes)
        assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, *STEPS)) == 0
    return out, recipes


def test_split_keeps_every_row_in_order():
    batch = {"input_ids": torch.arange(10).view(5, 2), "labels": torch.arange(5).view(5, 1)}
    pieces = split_micro_batches([batch], 4)
    assert [p["input_ids"].shape[0] for p in pieces] == [2, 1, 1, 1]
    assert torch.equal(torch.cat([p["labels"] for p in pieces]), batch["labels"])


def test_auto_micro_batch_halves_until_it_fits(
    reference, tiny_model, small_csv, cache_dir, tmp_path, monkeypatch, caplog
):
    reference, reference_recipes = reference
    recipes = {}
    seen = fits_two_rows(monkeypatch, after_step=1, recipes=recipes)
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, *STEPS, "--auto-micro-batch")) == 0
    # step 1 at 2 x 8 rows; step 2 fails at 8, then 4, and trains at 8 micro-batches of 2 rows
    assert seen[:4] == [[8, 8], [8, 8], [4] * 4, [2] * 8] and seen[4:] == [[2] * 8] * 2
    assert "retrying it with micro-batch 4 x accumulation 4 (global batch 16 unchanged" in caplog.text
    assert "retrying it with micro-batch 2 x accumulation 8" in caplog.text
    expected, got = step_losses(reference), step_losses(out)
    assert sorted(got) == [1, 2, 3, 4]
    assert got[1] == expected[1]
    assert recipes == reference_recipes and sorted(recipes) == [1, 2, 3, 4]  # the same recipes in each step
    # the same loss up to dropout, whose masks are drawn per micro-batch
    assert [got[s] for s in (2, 3, 4)] == pytest.approx([expected[s] for s in (2, 3, 4)], rel=1e-2)

    def lrs(run):
        return [
            json.loads(line)["lr"]
            for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["type"] == "train"
        ]

    assert lrs(out) == lrs(reference)  # the schedule is untouched
    assert ckstate.load_training_state(out / "checkpoint-2")["run_state"]["micro_batch_split"] == 4

    # a resume keeps the smaller micro-batch: no out-of-memory error again
    seen.clear()
    caplog.clear()
    (out / "checkpoint-4").rename(out / "later")
    assert (
        run_training(
            *train_args(
                tiny_model,
                small_csv,
                out,
                cache_dir,
                *STEPS,
                "--auto-micro-batch",
                "--resume-from-checkpoint",
                "latest",
            )
        )
        == 0
    )
    assert seen == [[2] * 8] * 2 and "out of GPU memory" not in caplog.text
    assert "micro-batch 2 x accumulation 8 (--auto-micro-batch)" in caplog.text


def test_without_the_flag_the_run_ends_with_exit_5(tiny_model, small_csv, cache_dir, tmp_path, monkeypatch):
    fits_two_rows(monkeypatch, after_step=2)
    out = tmp_path / "run"
    with pytest.raises(OutOfMemory) as err:
        run_training(*train_args(tiny_model, small_csv, out, cache_dir, *STEPS))
    assert err.value.exit_code == EXIT_OUT_OF_MEMORY == 5
    message = str(err.value)
    assert "out of GPU memory in step 3 at micro-batch 8 x accumulation 2" in message
    assert "--auto-micro-batch" in message and "checkpoint-2 is intact" in message
    assert ckmanifest.manifest_problems(out / "checkpoint-2", verify_hashes=True) == []


class _CompiledRegionFailed(Exception):
    """Stands for torch.compile's wrapper of an error raised inside a compiled region."""


def _wrapped(inner: BaseException) -> BaseException:
    try:
        raise _CompiledRegionFailed("backend failed") from inner
    except _CompiledRegionFailed as err:
        return err


@pytest.mark.parametrize(
    "err, expected",
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
        (RuntimeError("Triton Error [CUDA]: out of memory"), True),
        (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"), True),
        (_wrapped(RuntimeError("Triton Error [CUDA]: out of memory")), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x64 and 32x64)"), False),
        (ValueError("out of memory"), False),  # not an error a device raises
        (_wrapped(RuntimeError("index out of range")), False),
    ],
)
def test_out_of_memory_is_recognised_whatever_its_type(err, expected):
    assert is_out_of_memory(err) is expected


def test_a_cublas_allocation_failure_is_retried_at_half_the_micro_batch(
    tiny_model, small_csv, cache_dir, tmp_path, monkeypatch, caplog
):
    seen = fits_two_rows(
        monkeypatch,
        after_step=1,
        error=lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"),
    )
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    assert (
        run_training(
            *train_args(
                tiny_model,
                small_csv,
                out,
                cache_dir,
                "--max-steps",
                "2",
                "--save-steps",
                "2",
                "--gradient-accumulation-steps",
                "2",
                "--auto-micro-batch",
            )
        )
        == 0
    )
    assert seen == [[8, 8], [8, 8], [4] * 4, [2] * 8]
    assert "retrying it with micro-batch 4 x accumulation 4" in caplog.text


def test_an_error_that_is_not_out_of_memory_ends_the_run_as_it_is(
    tiny_model, small_csv, cache_dir, tmp_path, monkeypatch
):
    seen = fits_two_rows(monkeypatch, after_step=1, error=lambda: RuntimeError("shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        run_training(
            *train_args(
                tiny_model,
                small_csv,
                tmp_path / "run",
                cache_dir,
                "--max-steps",
                "2",
                "--save-steps",
                "2",
                "--gradient-accumulation-steps",
                "2",
                "--auto-micro-batch",
            )
        )
    assert seen == [[8, 8], [8, 8]]  # not retried
