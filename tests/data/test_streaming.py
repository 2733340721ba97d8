"""--streaming: trains without writing the tokenized cache, and resumes bit for bit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_training, step_losses, train_args

from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.data.sampler import ResumableBatchSampler
from chef_genius.data.streaming import StreamingDataset, StreamingSampler, group_order
from chef_genius.data.tokenized import LABEL_PAD, Collator


def test_streaming_trains_without_cache_and_resumes_exactly(tiny_model, small_csv, tmp_path):
    cache = tmp_path / "cache"
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    flags = ("--streaming", "--eval-split-ratio", "0", "--epochs", "1")
    assert run_training(*train_args(tiny_model, small_csv, whole, cache, *flags)) == 0
    losses = step_losses(whole)
    assert len(losses) == 12 and all(np.isfinite(v) for v in losses.values())  # 96 rows / 8
    assert not list(cache.rglob("*.arrow"))  # nothing tokenized on disk: the row counts and duplicate decision
    assert (whole / "removed_duplicates.csv").is_file()  # duplicates looked for, as on the cached path

    # Stop mid-epoch (step 7 of 12, inside the second length group) and resume with a loader worker.
    assert (
        run_training(
            *train_args(
                tiny_model,
                small_csv,
                resumed,
                cache,
                *flags,
                "--stop-after-steps",
                "7",
                "--dataloader-num-workers",
                "1",
            )
        )
        == 0
    )
    assert ckmanifest.find_latest(resumed)[0].name == "checkpoint-7"
    assert (
        run_training(
            *train_args(
                tiny_model,
                small_csv,
                resumed,
                cache,
                *flags,
                "--dataloader-num-workers",
                "1",
                "--resume-from-checkpoint",
                "latest",
            )
        )
        == 0
    )
    assert step_losses(resumed) == losses


def test_group_order_is_a_permutation_longest_first_seeded_by_seed_epoch_and_group():
    lengths = np.repeat([3, 8, 5, 8], 10)  # many equal lengths: the seeded shuffle shows among them
    order = group_order(lengths, 42, 0, 3)
    assert sorted(order.tolist()) == list(range(40))
    assert np.all(np.diff(lengths[order]) <= 0)  # longest first
    assert np.array_equal(order, group_order(lengths, 42, 0, 3))  # pure: a resume recomputes it
    variants = {args: group_order(lengths, *args) for args in [(42, 0, 3), (43, 0, 3), (42, 1, 3), (42, 0, 4)]}
    assert len({v.tobytes() for v in variants.values()}) == 4, "seed, epoch and group each change the order"
    unshuffled = np.argsort(-lengths, kind="stable")
    assert not any(np.array_equal(v, unshuffled) for v in variants.values())


def test_streamed_epoch_is_the_file_shuffled_within_length_groups(tiny_model, seven_recipes):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def streamed(seed, epoch):
        sampler = StreamingSampler(7, 1, seed=seed, group_size=4)
        sampler.set_position(epoch, 0)
        stream = StreamingDataset(seven_recipes, tokenizer, 16, 16, sampler, Collator(tokenizer.pad_token_id))
        return [int(batch["sample_index"]) for batch in stream]

    epoch0 = streamed(3, 0)
    assert sorted(epoch0[:4]) == [0, 1, 2, 3] and sorted(epoch0[4:]) == [4, 5, 6]  # groups of 4 file rows
    assert streamed(3, 0) == epoch0
    assert streamed(3, 1) != epoch0 and streamed(4, 0) != epoch0


# ---------------------------------------------------------------------------------------------
# shares of a streamed epoch on several processes


@pytest.fixture(scope="module")
def seven_recipes(tmp_path_factory, sample_csv) -> Path:
    import csv

    with open(sample_csv, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))[:8]  # header + 7 recipes
    path = tmp_path_factory.mktemp("seven") / "seven.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def _rank_batches(path, tokenizer, world, batch_size, start=0):
    batches = []
    for rank in range(world):
        sampler = StreamingSampler(7, batch_size, seed=3, group_size=4, num_replicas=world, rank=rank)
        sampler.set_position(0, start)
        stream = StreamingDataset(path, tokenizer, 32, 64, sampler, Collator(tokenizer.pad_token_id))
        batches.append(list(stream))
    return batches


@pytest.mark.parametrize("world, batch_size", [(2, 3), (3, 2), (4, 1)])
def test_streamed_epoch_end_with_fewer_samples_than_ranks_pads_like_the_cached_path(
    tiny_model, seven_recipes, world, batch_size
):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    per_rank = _rank_batches(seven_recipes, tokenizer, world, batch_size)
    cached = [list(ResumableBatchSampler(7, batch_size, seed=3, num_replicas=world, rank=r)) for r in range(world)]

    # every rank steps the same number of times (DDP would hang otherwise), never on an empty batch
    assert [len(b) for b in per_rank] == [math.ceil(7 / (world * batch_size))] * world
    real = []
    for step, batches in enumerate(zip(*per_rank)):
        for rank, batch in enumerate(batches):
            index = batch["sample_index"]
            assert len(index) == batch["input_ids"].shape[0] == len(cached[rank][step]) >= 1
            # padding exactly where the cached path pads; a padding row is a real input with no target
            assert (index < 0).tolist() == [i < 0 for i in cached[rank][step]]
            assert torch.all(batch["labels"][index < 0] == LABEL_PAD)
            assert torch.all(batch["attention_mask"][index < 0].sum(dim=1) > 0)
            assert torch.all((batch["labels"][index >= 0] != LABEL_PAD).sum(dim=1) > 0)
            real += index[index >= 0].tolist()
    assert sorted(real) == list(range(7))  # every recipe of the file once per epoch, over all ranks

    # resumed at the last global micro-batch: only that one is left, padded the same way
    tail = _rank_batches(
        seven_recipes, tokenizer, world, batch_size, start=7 // (world * batch_size) * world * batch_size
    )
    assert [len(b) for b in tail] == [1] * world
    for rank in range(world):
        assert torch.equal(tail[rank][0]["sample_index"], per_rank[rank][-1]["sample_index"])
        assert torch.equal(tail[rank][0]["labels"], per_rank[rank][-1]["labels"])
