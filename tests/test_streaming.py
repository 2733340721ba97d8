"""--streaming: trains without writing the tokenized cache, and resumes bit for bit."""

from __future__ import annotations

import numpy as np
from conftest import run_training, step_losses, train_args

from chef_genius.checkpoint import format as ckpt
from chef_genius.data.streaming import group_order


def test_streaming_trains_without_cache_and_resumes_exactly(tiny_model, small_csv, tmp_path):
    cache = tmp_path / "cache"
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    flags = ("--streaming", "--eval-split-ratio", "0", "--epochs", "1")
    assert run_training(*train_args(tiny_model, small_csv, whole, cache, *flags)) == 0
    losses = step_losses(whole)
    assert len(losses) == 12 and all(np.isfinite(v) for v in losses.values())  # 96 rows / 8
    assert [p.name for p in cache.iterdir()] == ["stream-counts.json"]  # nothing tokenized on disk

    # Stop mid-epoch (step 7 of 12, inside the second length group) and resume with a loader worker.
    assert run_training(*train_args(tiny_model, small_csv, resumed, cache, *flags, "--stop-after-steps", "7",
                                    "--dataloader-num-workers", "1")) == 0
    assert ckpt.find_latest(resumed)[0].name == "checkpoint-7"
    assert run_training(*train_args(tiny_model, small_csv, resumed, cache, *flags, "--dataloader-num-workers", "1",
                                    "--resume-from-checkpoint", "latest")) == 0
    assert step_losses(resumed) == losses


def test_group_order_is_seeded_and_longest_first():
    lengths = np.array([5, 9, 1, 9, 3])
    order = group_order(lengths, 42, 0, 3)
    assert sorted(order.tolist()) == list(range(5)) and list(lengths[order]) == sorted(lengths, reverse=True)
    assert order.tolist() == group_order(lengths, 42, 0, 3).tolist()
