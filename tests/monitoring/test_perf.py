"""FLOPs / MFU accounting and the speed flags that change how a step runs."""

from __future__ import annotations

import json

import pytest
from conftest import run_training, step_losses, train_args

from chef_genius.monitoring.flops import mfu, t5_matmul_params, train_flops


def test_flops_match_flan_t5_large_parameter_count():
    from transformers import T5Config

    import bench.common

    config = T5Config(**bench.common.FLAN_T5_LARGE)
    params = t5_matmul_params(config)
    # FLAN-T5-large has ~783M parameters; the matmul ones exclude the 33M-entry shared embedding.
    assert 0.70e9 < params["encoder"] + params["decoder"] < 0.80e9
    flops = train_flops(config, 1000, 2000, 100, 200)
    assert flops > 6 * (1000 * params["encoder"] + 2000 * params["decoder"])  # plus attention
    assert mfu(flops, 1.0, None) is None and mfu(1e12, 1.0, 1e12) == pytest.approx(1.0)


def test_log_has_tokens_and_null_mfu_on_cpu_and_checkpointing_keeps_losses(tiny_model, small_csv, cache_dir, tmp_path):
    plain, ckpt_run = tmp_path / "plain", tmp_path / "gc"
    assert run_training(*train_args(tiny_model, small_csv, plain, cache_dir, "--max-steps", "4")) == 0
    assert (
        run_training(
            *train_args(tiny_model, small_csv, ckpt_run, cache_dir, "--max-steps", "4", "--gradient-checkpointing")
        )
        == 0
    )
    records = [json.loads(line) for line in (plain / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert all(r["mfu"] is None and r["tokens"] > 0 and r["tflops_per_s"] > 0 for r in train)
    assert step_losses(ckpt_run) == step_losses(plain)  # recomputation changes memory, not the numbers
