"""Training throughput side by side with Hugging Face's ``Seq2SeqTrainer``: alternated, repeated, medians.

Two questions, two comparisons:

- **The loop** (``loop_efficiency``): our trainer with fixed ``--batch-size`` batches against
  ``Seq2SeqTrainer`` fed the very same recipes in the very same order (its sampler replaced by our
  epoch order, its collator padding to 8 as ours), so both step on identical padded batches. Figure:
  training-only real target tokens/s. Every batch is fingerprinted (shape, real tokens, token sum) and
  the record says whether all runs saw identical batches.
- **The whole trainer** (``throughput_vs_seq2seqtrainer``): each with its own best sampler. Ours with
  ``--max-tokens-per-batch`` token-budget batches; ``Seq2SeqTrainer`` tuned as a careful user would
  (``train_sampling_strategy="group_by_length"`` on a precomputed source + target length,
  ``DataCollatorForSeq2Seq(pad_to_multiple_of=8)``, the same loader workers, persistent,
  ``optim="adamw_torch_fused"``, ``prediction_loss_only`` evaluation at twice the training batch,
  bf16 and ``torch_compile`` on CUDA only). Figure: wall-clock real target tokens/s, evaluation and
  saving included. The budget is the padded size of a batch of the ``--batch-size`` longest recipes:
  the same peak tokens per micro-batch (so about the same peak memory) as Seq2SeqTrainer's longest
  batch, which is what its ``per_device_train_batch_size`` has to be sized for.
  ``token_budget_vs_fixed_batches`` compares ours with our fixed batches (``ours_fixed_epochs``), same
  figure, same timing.

  A window of steps would time different recipes for different samplers (ours puts the longest recipes
  of a length group first, and a step has fixed costs, so longer rows give more tokens/s). So these
  contenders train two whole epochs of a small split (``epoch_rows`` recipes in their own CSV) and are
  timed over the second one: every recipe exactly once each, the same real target tokens in total
  (the record's ``epoch_target_tokens``; the test checks it). Each contender evaluates and saves every
  ``eval_and_save_every[name]`` steps, chosen from its own steps per epoch so that it falls
  ``evals_per_epoch`` times in the timed epoch for every contender. The run stops one step into a
  third epoch, so the end-of-training evaluation and save fall after the window.

Every run uses the same model folder, held-out recipes of its split (our ``--eval-split-ratio`` and
``--eval-max-samples`` choice, given to both), seed, learning rate, a full checkpoint with optimizer
state at every evaluation (at most 2 kept), and the same loader workers; each run is a fresh process.
The loop's timed window is steps ``W+1 .. W+T``, from the end of step W's periodic work (log,
evaluation, save) to the end of step W+T's; the warm-up W is a whole evaluation / save interval, so
first-time costs (allocation, compilation, a first evaluation and save) stay outside it; the whole
trainer's warm-up is the first epoch. Training-only time is the window less the evaluations and saves
in it. Contenders run in a rotated order in each repetition (ABCDE, BCDEA, ...) so none always goes first
while the shared machine's load drifts; records give each contender's median, min and max and the
ratio of the medians.

Here: the alternation and the records. The plan and the timed window: ``throughput_plan.py``; the
contenders and their fresh processes: ``throughput_contenders.py``.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

import numpy as np
import torch

from .common import Profile
from .throughput_contenders import run_contender
from .throughput_plan import EPOCHS, make_plan

log = logging.getLogger("bench")
LOOP = ("ours_fixed", "hf_same_batches")  # the loop: identical batches, a window
WHOLE = ("ours_token_budget", "hf_tuned", "ours_fixed_epochs")  # the whole trainer: whole epochs
CONTENDERS = LOOP + WHOLE


# ---------------------------------------------------------------------------------------------
# alternation and the records


def alternate(plans: dict, repeats: int, runner=run_contender) -> dict:
    """Each contender (``plans``: name -> its plan) ``repeats`` times, the order rotated each repetition;
    {name: [result, ...]}."""
    import os

    contenders = tuple(plans)
    results = {name: [] for name in contenders}
    for attempt in range(repeats):
        shift = attempt % len(contenders)
        for name in contenders[shift:] + contenders[:shift]:
            load = os.getloadavg()[0]
            result = runner(plans[name], name, attempt)
            result["load_1min"] = round((load + os.getloadavg()[0]) / 2, 2)
            results[name].append(result)
            log.warning(
                "throughput %s run %d: %.0f target tokens/s training, %.0f wall-clock (load %.2f)",
                name,
                attempt + 1,
                result["tokens_per_s"],
                result["wall_tokens_per_s"],
                result["load_1min"],
            )
    return results


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def summarise(runs: list[dict]) -> dict:
    out = {key: spread([r[key] for r in runs]) for key in ("tokens_per_s", "wall_tokens_per_s")}
    for key in (
        "tokens",
        "steps",
        "rows_per_step",
        "target_tokens_per_row",
        "padded_tokens_per_step",
        "evals",
        "saves",
    ):
        out[key] = runs[0][key]
    for key in ("eval_s", "save_s", "tflops_per_s", "load_1min"):
        out[key] = statistics.median(r[key] for r in runs)
    mfus = [r["mfu"] for r in runs if r.get("mfu") is not None]
    out["mfu"] = statistics.median(mfus) if mfus else None
    if any("peak_memory_gb" in r for r in runs):
        out["peak_memory_gb"] = max(r.get("peak_memory_gb", 0.0) for r in runs)
    return out


def throughput_records(profile: Profile, model: Path, data: Path, work: Path, cache: Path) -> list[dict]:
    import os

    from .common import write_recipes_csv

    loop = make_plan(profile, model, data, work, cache)
    plans = {name: loop for name in LOOP} if profile.loop else {}
    if profile.whole_epochs:
        epoch_data = write_recipes_csv(work / "epochs.csv", profile.epoch_rows, seed=1, skew=profile.skewed)
        whole = make_plan(profile, model, epoch_data, work, cache, epochs=True)
        plans.update({name: whole for name in WHOLE})
    load_before = os.getloadavg()
    results = alternate(plans, profile.repeats)
    load_after = os.getloadavg()
    s = {name: summarise(runs) for name, runs in results.items()}
    prints = {name: [r["fingerprint"] for r in runs] for name, runs in results.items()}
    loop_prints = prints.get("ours_fixed", []) + prints.get("hf_same_batches", [])
    identical = all(fp == loop_prints[0] for fp in loop_prints)
    common = {
        "batch_size": profile.batch_size,
        "repeats": profile.repeats,
        "workers": profile.workers,
        "bf16": profile.bf16,
        "compile": profile.compile,
        "model": profile.model_config,
        "torch_threads": profile.threads or torch.get_num_threads(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
    }
    loop_setting = {
        **common,
        "max_tokens_per_batch": loop.max_tokens,
        "warmup_steps": profile.warmup_steps,
        "timed_steps": profile.timed_steps,
        "eval_and_save_every": profile.eval_every,
        "eval_recipes": len(loop.eval_rows),
        "train_recipes": len(loop.train_rows),
        "train_mean_target_tokens": loop.mean_target_tokens,
    }

    def record(name, ours, baseline, key, setting, target=None, **extra):
        a, b = s[ours][key]["median"], s[baseline][key]["median"]
        return dict(
            name=name,
            ours=a,
            baseline=b,
            ratio=a / b,
            unit=f"real target tokens/s ({key}, medians)",
            target=target,
            contenders=[ours, baseline],
            setting=setting,
            ours_detail=s[ours],
            baseline_detail=s[baseline],
            **extra,
            # per run, per timed batch: rows, source width, target width, real target tokens,
            # real source tokens, sum of input ids, sum of label ids
            batch_fingerprints={ours: prints[ours], baseline: prints[baseline]},
        )

    def training_only(rec):
        ours, baseline = (s[n]["tokens_per_s"]["median"] for n in rec["contenders"])
        rec["training_only"] = {"ours": ours, "baseline": baseline, "ratio": ours / baseline}
        return rec

    loop_records = (
        [
            record(
                "loop_efficiency",
                "ours_fixed",
                "hf_same_batches",
                "tokens_per_s",
                loop_setting,
                ">= 1.0",
                identical_batches=identical,
                batches_compared=len(loop_prints),
            )
        ]
        if profile.loop
        else []
    )
    if not profile.whole_epochs:
        return loop_records
    # the whole trainer: epoch 2 of 2 of a small split, every recipe once for every contender
    whole_setting = {
        **common,
        "max_tokens_per_batch": whole.max_tokens,
        "epochs": EPOCHS,
        "timed_epoch": EPOCHS,
        "train_recipes": len(whole.train_rows),
        "eval_recipes": len(whole.eval_rows),
        "epoch_target_tokens": whole.target_tokens,
        "evals_per_epoch": profile.evals_per_epoch,
        "steps_per_epoch": {n: list(v) for n, v in whole.epoch_steps.items()},
        "eval_and_save_every": dict(whole.every),
        "skewed_lengths": profile.skewed,
        "train_target_tokens_percentiles": {
            str(q): float(np.percentile(whole.target_lengths, q)) for q in (5, 50, 95, 100)
        },
    }
    return loop_records + [
        training_only(
            record(
                "throughput_vs_seq2seqtrainer",
                "ours_token_budget",
                "hf_tuned",
                "wall_tokens_per_s",
                whole_setting,
                ">= 1.3",
            )
        ),
        training_only(
            record(
                "token_budget_vs_fixed_batches",
                "ours_token_budget",
                "ours_fixed_epochs",
                "wall_tokens_per_s",
                whole_setting,
            )
        ),
    ]
