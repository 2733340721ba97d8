"""``python -m bench --smoke`` runs every benchmark and prints well-formed JSON lines (no speed target
is checked here: benchmarks are not timed tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
THROUGHPUT = {"loop_efficiency", "throughput_vs_seq2seqtrainer", "token_budget_vs_fixed_batches"}
EXPECTED = {"machine", *THROUGHPUT, "save_vs_raw", "async_save_stall", "resume_startup", "preprocess_cached"}

pytestmark = pytest.mark.slow  # runs every benchmark in a subprocess


def test_bench_smoke_prints_one_json_object_per_benchmark(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--work-dir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines()]  # every stdout line is JSON
    assert {r["name"] for r in records} == EXPECTED
    for record in records:
        assert {"name", "ours", "baseline", "ratio", "unit"} <= record.keys()
        assert "error" not in record
        if record["name"] != "machine":
            assert record["ours"] is not None and record["baseline"] is not None and record["unit"]
    preprocess = next(r for r in records if r["name"] == "preprocess_cached")
    assert preprocess["cached_from_cache"] and preprocess["rows"] < 1_000_000 and "note" in preprocess
    check_throughput({r["name"]: r for r in records if r["name"] in THROUGHPUT})


def check_throughput(records):
    """The throughput records are medians over alternated runs, and the loop comparison is fair: ours and
    Seq2SeqTrainer trained on identical batches (same rows, padded shapes and tokens, step by step)."""
    loop, whole = records["loop_efficiency"], records["throughput_vs_seq2seqtrainer"]
    assert loop["contenders"] == ["ours_fixed", "hf_same_batches"]
    assert whole["contenders"] == ["ours_token_budget", "hf_tuned"]
    assert records["token_budget_vs_fixed_batches"]["contenders"] == ["ours_token_budget", "ours_fixed_epochs"]
    assert whole["unit"].startswith("real target tokens/s (wall_tokens_per_s")
    for record in records.values():
        assert abs(record["ratio"] - record["ours"] / record["baseline"]) < 1e-3 * record["ratio"]
        setting = record["setting"]
        for detail in (record["ours_detail"], record["baseline_detail"]):
            for key in ("tokens_per_s", "wall_tokens_per_s"):
                runs = detail[key]["runs"]
                assert len(runs) == setting["repeats"]
                assert detail[key]["min"] <= detail[key]["median"] <= detail[key]["max"]
            # wall-clock includes the evaluations and saves, as many of them for every contender
            assert detail["wall_tokens_per_s"]["median"] < detail["tokens_per_s"]["median"]
            expected = (
                setting["evals_per_epoch"]
                if record is not loop
                else setting["timed_steps"] // setting["eval_and_save_every"]
            )
            assert detail["evals"] == detail["saves"] == expected > 0
    for record in (whole, records["token_budget_vs_fixed_batches"]):
        # the whole trainer is timed over a whole epoch: every recipe of the split exactly once, so each
        # contender trained on the same real target tokens (its own batches, but the same recipes)
        ours, theirs = record["ours_detail"], record["baseline_detail"]
        assert ours["tokens"] == theirs["tokens"] == record["setting"]["epoch_target_tokens"] > 0, (
            "the whole-trainer contenders trained on different real target tokens"
        )
        for name, detail in zip(record["contenders"], (ours, theirs)):
            assert detail["steps"] == record["setting"]["steps_per_epoch"][name][1]
            assert all(sum(b[3] for b in run) == ours["tokens"] for run in record["batch_fingerprints"][name])
    ours, theirs = (loop["batch_fingerprints"][name] for name in loop["contenders"])
    steps = loop["setting"]["timed_steps"]
    assert all(len(run) == steps for run in ours + theirs)
    assert all(run == ours[0] for run in ours + theirs), "the loop comparison timed different batches"
    assert loop["identical_batches"] is True
    assert loop["ours_detail"]["tokens"] == loop["baseline_detail"]["tokens"] == sum(b[3] for b in ours[0]) > 0
    # the fingerprint tells batches apart: Seq2SeqTrainer's own length grouping drew other recipes
    assert whole["batch_fingerprints"]["hf_tuned"][0] != ours[0]


def test_spent_budget_skips_every_benchmark_with_a_record(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--budget-s", "0.01", "--work-dir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = {r["name"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert set(records) == {
        "machine",
        "throughput",
        "save_vs_raw",
        "async_save_stall",
        "resume_startup",
        "preprocess_cached",
    }
    assert all(r["skipped"].startswith("--budget-s 0: ") for name, r in records.items() if name != "machine")
