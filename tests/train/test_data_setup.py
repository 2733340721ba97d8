"""The trainer's loaders on several processes: a rank whose share of a batch is empty trains and
validates on a padding row that counts nothing, on the cached path and with --streaming alike."""

from __future__ import annotations

import contextlib

import pytest
import torch

from chef_genius.data.tokenized import LABEL_PAD
from chef_genius.model.loading import load_tokenizer
from chef_genius.train.config import parse_args
from chef_genius.train.data_setup import EVAL_BATCH_FACTOR, make_data
from conftest import train_args


class _Rank:
    """What make_data asks of accelerate's Accelerator, for rank ``rank`` of ``world`` processes."""

    def __init__(self, world: int, rank: int):
        self.num_processes, self.process_index, self.device = world, rank, torch.device("cpu")
        self.is_main_process = rank == 0  # the ranks are built one after the other, rank 0 first

    def main_process_first(self):
        return contextlib.nullcontext()

    def wait_for_everyone(self):
        pass


@pytest.mark.parametrize("streaming", [False, True], ids=["cached", "streaming"])
def test_validation_padding_rows_count_nothing(tiny_model, small_csv, cache_dir, tmp_path, streaming):
    # 2 ranks, one validation recipe more than a whole number of global validation batches: the last
    # global batch holds 1 recipe, so rank 1 gets a padding row there; over both ranks every recipe's
    # tokens are counted exactly once.
    global_eval_batch = 2 * 2 * EVAL_BATCH_FACTOR  # --batch-size 2 per rank, 2 ranks
    n_eval = 2 * global_eval_batch + 1
    eval_csv = tmp_path / "eval.csv"
    eval_csv.write_text(
        "".join(small_csv.read_text(encoding="utf-8").splitlines(keepends=True)[: n_eval + 1]), encoding="utf-8"
    )
    flags = train_args(
        tiny_model,
        small_csv,
        tmp_path / "run",
        cache_dir,
        "--eval-data",
        eval_csv,
        "--batch-size",
        2,
        *(["--streaming"] if streaming else []),
    )
    config = parse_args(flags)
    tokenizer = load_tokenizer(str(tiny_model))
    counted, padding_rows = {}, 0
    for rank in (0, 1):
        data = make_data(config, tokenizer, _Rank(2, rank), tmp_path / "run", tokenizer.pad_token_id)
        assert len(data.eval) == n_eval
        for batch in data.eval_loader:
            for index, labels in zip(batch["sample_index"].tolist(), batch["labels"]):
                real = int((labels != LABEL_PAD).sum())
                if index < 0:
                    padding_rows += 1
                    assert real == 0  # a padding row adds no loss and no tokens
                else:
                    assert index not in counted
                    counted[index] = real
    assert sorted(counted) == list(range(n_eval)) and all(counted.values())
    assert padding_rows == 1
