"""``python -m bench``: one JSON object per line on stdout (name, ours, baseline, ratio, unit, ...).

    python -m bench --smoke      # seconds: every benchmark on tiny sizes (what the test suite runs)
    python -m bench --quick      # CPU, the FLAN-T5-head proxy model (bench/common.py: SHAPES["flan-head"])
    python -m bench              # full CPU sizes, 1M-row preprocessing
    python -m bench --quick --only throughput --comparisons whole --skewed --epoch-rows 30   # the proxy, whole epochs
    python -m bench --gpu        # FLAN-T5-large architecture, bf16, torch.compile (needs a CUDA GPU; 25-40 min)
    python -m bench --gpu --budget-s 480   # what fits 8 minutes on one H100 (one lease's command)
    python -m bench.start --rows 1000000 --work-dir DIR   # time to the first step on a cached corpus (its own entry)
    python -m bench.corpus_scale 2200000 500000 TINY_MODEL DIR   # a RecipeNLG-scale mixture to its first step

Logs go to stderr; stdout holds only the JSON lines.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import tempfile
import traceback
from pathlib import Path

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCHMARKS = ("throughput", "save_vs_raw", "async_save_stall", "resume_startup", "preprocess_cached")
# --budget-s with --gpu: the seconds each benchmark takes with FLAN-T5-large on one H100 at the budget's
# sizes (one repetition, a 9.4 GB checkpoint of weights and AdamW moments, each fresh process importing
# torch and loading 3.1 GB of weights), by estimate until a GPU session measures them (bench_s in each
# record); the benchmarks are taken in this order while their sum fits the budget
GPU_COST_S = {
    "throughput": 130,
    "async_save_stall": 80,
    "save_vs_raw": 50,
    "resume_startup": 100,
    "preprocess_cached": 30,
}
WHOLE_EPOCHS_COST_S = 220  # throughput's whole-trainer comparisons (three more contenders, whole epochs)
SETUP_COST_S = 30  # building FLAN-T5-large and writing the recipes


def parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (for the test suite)")
    size.add_argument("--quick", action="store_true", help="a few minutes on CPU")
    p.add_argument("--gpu", action="store_true", help="FLAN-T5-large architecture, bf16 and torch.compile")
    p.add_argument(
        "--threads", type=int, help="torch threads of each throughput run (default 1 on CPU; 0: torch's default)"
    )
    p.add_argument(
        "--model-config",
        choices=("tiny", "flan-head", "flan-t5-large"),
        default=None,
        help="model architecture (default: flan-t5-large with --gpu, tiny with --smoke, else flan-head: "
        "FLAN-T5's 32,128-token head at d_model 512 with 2 + 2 layers, bench/common.py)",
    )
    p.add_argument(
        "--comparisons",
        nargs="+",
        choices=("loop", "whole"),
        default=("loop", "whole"),
        help="the throughput comparisons to run: the loop's (identical batches) and the whole "
        "trainer's (whole epochs); default both",
    )
    p.add_argument(
        "--skewed",
        action="store_true",
        help="generated recipes with RecipeNLG's long tail of long directions (bench/common.py: write_recipes_csv)",
    )
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    p.add_argument(
        "--repeats",
        type=int,
        help="runs of each throughput contender, alternated (default 5; 3 with --quick, 1 with --smoke or --gpu)",
    )
    p.add_argument(
        "--epoch-rows",
        type=int,
        help="recipes in the CSV whose train split the whole-trainer "
        "comparisons train on for two epochs (default 200 with --quick)",
    )
    p.add_argument(
        "--preprocess-rows", type=int, help="rows of the generated CSV (default 1M; fewer with --quick / --smoke)"
    )
    p.add_argument("--work-dir", help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument(
        "--budget-s",
        type=float,
        help="fit the run in about this many seconds: one repetition, "
        "one evaluation and save in each timed window, and with --gpu "
        "only the benchmarks whose estimated time fits (GPU_COST_S); "
        "a benchmark left out, or not started because the time is "
        "spent, gets a record saying so",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import torch

    from chef_genius.model.loading import quiet_transformers

    from .common import build_model_folder, emit, machine, make_profile, write_recipes_csv

    quiet_transformers()
    if args.gpu and not torch.cuda.is_available():
        print("error: --gpu needs a CUDA GPU; run without --gpu for the CPU benchmark", file=sys.stderr)
        return 2
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    model_config = args.model_config or ("flan-t5-large" if args.gpu else "tiny" if args.smoke else "flan-head")
    profile = make_profile(mode, model_config, gpu=args.gpu)
    profile.loop, profile.whole_epochs = "loop" in args.comparisons, "whole" in args.comparisons
    profile.skewed = args.skewed
    wanted = set(args.only or BENCHMARKS)
    run_started = time.monotonic()
    planned = {}
    if args.budget_s:  # before the explicit --repeats / --epoch-rows, which it does not override
        planned = budgeted(profile, wanted, args.budget_s, gpu=args.gpu)
        wanted = {name for name in wanted if planned.get(name) is None}
    if args.repeats:
        profile.repeats = args.repeats
    if args.epoch_rows:
        profile.epoch_rows = args.epoch_rows
    if args.threads is not None:
        profile.threads = args.threads
    scratch = tempfile.TemporaryDirectory(prefix="chef-bench-") if not args.work_dir else None
    work = Path(args.work_dir or scratch.name)
    work.mkdir(parents=True, exist_ok=True)
    emit(
        {
            "name": "machine",
            "ours": None,
            "baseline": None,
            "ratio": None,
            "unit": None,
            "mode": mode,
            "model": model_config,
            **machine(),
        }
    )
    model = build_model_folder(work, model_config)
    data = write_recipes_csv(work / "train.csv", profile.rows, skew=profile.skewed)
    cache = work / "cache"
    failures = 0
    for name in BENCHMARKS:
        if planned.get(name):
            emit({"name": name, "ours": None, "baseline": None, "ratio": None, "unit": None, "skipped": planned[name]})
        if name not in wanted:
            continue
        left = args.budget_s - (time.monotonic() - run_started) if args.budget_s else None
        if left is not None and left < (GPU_COST_S[name] if args.gpu else 1):
            emit(
                {
                    "name": name,
                    "ours": None,
                    "baseline": None,
                    "ratio": None,
                    "unit": None,
                    "skipped": f"--budget-s {args.budget_s:.0f}: {max(left, 0):.0f} s left",
                }
            )
            continue
        try:
            started = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # stdout is for the JSON lines only
                records = _run(name, args, profile, model, data, work, cache)
            for record in records:
                emit({**record, "bench_s": round(time.perf_counter() - started, 1)})
        except Exception as err:  # one broken benchmark must not hide the others' figures
            failures += 1
            traceback.print_exc()
            emit(
                {
                    "name": name,
                    "ours": None,
                    "baseline": None,
                    "ratio": None,
                    "unit": None,
                    "error": f"{type(err).__name__}: {err}",
                }
            )
    if scratch is not None:
        scratch.cleanup()
    return 1 if failures else 0


def budgeted(profile, wanted: set, budget_s: float, gpu: bool) -> dict:
    """Sizes for ``--budget-s`` (set on ``profile``) and {benchmark: why it is left out, or None}."""
    profile.repeats = 1
    profile.checkpoint_repeats = 1
    # one evaluation and one save in the loop's timed window, after a warm-up of the same length
    profile.warmup_steps = profile.timed_steps = profile.eval_every = max(profile.eval_every, 1)
    if not gpu:
        return {}
    profile.epoch_rows = min(profile.epoch_rows, 120)
    left = budget_s - SETUP_COST_S
    planned = {}
    for name in BENCHMARKS:
        if name not in wanted:
            continue
        if GPU_COST_S[name] <= left:
            planned[name], left = None, left - GPU_COST_S[name]
        else:
            planned[name] = f"--budget-s {budget_s:.0f}: needs about {GPU_COST_S[name]} s, {max(left, 0):.0f} left"
    profile.whole_epochs = (
        profile.whole_epochs and planned.get("throughput", "") is None and left >= WHOLE_EPOCHS_COST_S
    )
    return planned


def _run(name, args, profile, model, data, work, cache):
    from . import checkpoints, preprocess, throughput

    if name == "throughput":
        return throughput.throughput_records(profile, model, data, work, cache)
    if name == "save_vs_raw":  # at a real checkpoint's size: the tiny model's 4 MB measure only fixed costs
        if profile.mode == "smoke" or profile.model_config == "flan-t5-large":
            return [dict(checkpoints.save_vs_raw(profile, model, work), shape=profile.model_config)]
        return [checkpoints.save_vs_raw_at(checkpoints.SAVE_SHAPE, profile, work)]
    if name == "async_save_stall":
        return [checkpoints.async_save_stall(profile, model, data, work, cache)]
    if name == "resume_startup":
        return [checkpoints.resume_startup(profile, model, data, work, cache)]
    rows = args.preprocess_rows or profile.preprocess_rows
    reduced = 1_000_000 if rows < 1_000_000 else None
    return [preprocess.preprocess_cached(rows, model, work, reduced)]


if __name__ == "__main__":
    sys.exit(main())
