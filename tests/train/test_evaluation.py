"""Evaluation during training leaves training untouched: with dropout in the model (training draws from
the torch RNG at every step) and a generation that draws from every RNG stream, a run that generates at
each evaluation trains exactly as one that does not, and leaves the same RNG state in its checkpoint."""

from __future__ import annotations

import dataclasses
import random
import time

import numpy as np
import torch

from conftest import run_training, step_losses, train_args
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.model import generation


def _sampling_generation(monkeypatch):
    """Generation that samples (torch RNG) and draws from python's and numpy's streams besides."""
    plain = generation.generate_texts

    def drawing(model, tokenizer, ingredient_lists, settings, *args, **kwargs):
        random.random(), np.random.rand(), torch.rand(1)
        sampling = dataclasses.replace(settings, do_sample=True, top_k=0, temperature=1.5)
        return plain(model, tokenizer, ingredient_lists, sampling, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_texts", drawing)


def test_generation_at_evaluation_draws_nothing_training_sees(tiny_model, small_csv, cache_dir, tmp_path, monkeypatch):
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tiny_model).dropout_rate > 0  # training itself draws from the torch RNG
    flags = (
        "--max-steps",
        "6",
        "--eval-steps",
        "3",
        "--save-steps",
        "6",
        "--max-target-length",
        "32",
        "--eval-split-ratio",
        "0.1",
    )
    plain, generating = tmp_path / "plain", tmp_path / "generating"
    assert run_training(*train_args(tiny_model, small_csv, plain, cache_dir, *flags)) == 0
    _sampling_generation(monkeypatch)
    assert (
        run_training(
            *train_args(
                tiny_model, small_csv, generating, cache_dir, *flags, "--eval-generate", "3", "--eval-samples", "1"
            )
        )
        == 0
    )
    assert '"type": "generation"' in (generating / "metrics.jsonl").read_text()
    assert step_losses(generating) == step_losses(plain)
    saved = [ckstate.rank0_rng(ckstate.load_training_state(run / "checkpoint-6")) for run in (plain, generating)]
    assert saved[0]["python"] == saved[1]["python"]
    assert torch.equal(saved[0]["numpy"]["keys"], saved[1]["numpy"]["keys"])
    assert saved[0]["numpy"]["pos"] == saved[1]["numpy"]["pos"]
    assert torch.equal(saved[0]["torch"], saved[1]["torch"])


def test_validation_shows_its_progress(caplog, monkeypatch):
    import logging
    from types import SimpleNamespace
    from chef_genius.monitoring import progress as progress_module
    from chef_genius.train.evaluation import Evaluation

    monkeypatch.setattr(progress_module, "LINE_SECONDS", 0.05)  # a line for each batch of 0.1 s
    caplog.set_level(logging.INFO, logger="chef_genius")
    accelerator = SimpleNamespace(
        device=torch.device("cpu"), is_main_process=True, reduce=lambda t: t, distributed_type="NO"
    )
    batches = [{"labels": torch.tensor([[5, 6, -100]])} for _ in range(3)]
    evaluation = Evaluation(SimpleNamespace(progress="log"), accelerator, None, None, batches, None, None)

    def slow_loss(batch):
        time.sleep(0.1)
        return torch.tensor(4.0, dtype=torch.float64)

    assert evaluation.validation_loss(torch.nn.Linear(1, 1), slow_loss) == 2.0  # 12 over 6 real target tokens
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("validation:")]
    assert {"validation: 1/3 batches", "validation: 2/3 batches"} <= {line.split(",")[0] for line in lines}
    assert all("batches/s" in line and "ETA" in line for line in lines)
