"""Lean evaluation: a fixed, capped validation subset, evaluated in larger batches."""

from __future__ import annotations

import datasets
import numpy as np

from chef_genius.data.tokenized import RecipeDataset
from chef_genius.train.config import parse_args
from chef_genius.train.data_setup import EVAL_BATCH_FACTOR, _eval_loader, eval_subset


def _held_out(n=50, rows_in_file=60):
    rows = {
        "input_ids": [[i + 2] for i in range(rows_in_file)],
        "labels": [[i + 3, 1] for i in range(rows_in_file)],
        "source_len": [1] * rows_in_file,
        "target_len": [2] * rows_in_file,
    }
    return RecipeDataset(datasets.Dataset.from_dict(rows), np.arange(100, 100 + n) % rows_in_file)


def test_the_validation_subset_is_capped_fixed_and_drawn_from_the_held_out_recipes():
    held = _held_out()
    first, again = eval_subset(held, 20, seed=42), eval_subset(_held_out(), 20, seed=42)
    assert len(first) == 20
    np.testing.assert_array_equal(first.indices, again.indices)  # the same recipes at every evaluation
    assert set(first.indices) <= set(held.indices)
    assert len(set(first.indices.tolist())) == 20
    assert not np.array_equal(eval_subset(held, 20, seed=7).indices, first.indices)
    assert eval_subset(held, 0, seed=42) is held and eval_subset(held, 50, seed=42) is held


class _One:
    num_processes, process_index, device = 1, 0, __import__("torch").device("cpu")


def test_evaluation_batches_are_larger_than_training_batches(small_csv):
    config = parse_args(["--data", str(small_csv), "--batch-size", "4"])
    assert config.eval_max_samples > 0  # capped by default
    sampler = _eval_loader(config, _held_out(), _One(), None).batch_sampler
    batches = list(sampler)
    assert max(len(b) for b in batches) == 4 * EVAL_BATCH_FACTOR > 4
    assert sorted(i for b in batches for i in b) == list(range(50))
