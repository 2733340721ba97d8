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
"""

from __future__ import annotations

import logging
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from chef_genius.data.sampler import budget_bounds, epoch_order, padded
from chef_genius.data.tokenized import LABEL_PAD, RecipeDataset, load_tokenized, split_indices
from chef_genius.train.data_setup import EVAL_BATCH_FACTOR, eval_subset

from .common import Profile

log = logging.getLogger("bench")
SEED = 42
EVAL_SPLIT = 0.1
LEARNING_RATE = 1e-4
SAVE_LIMIT = 2
LOOP = ("ours_fixed", "hf_same_batches")  # the loop: identical batches, a window
WHOLE = ("ours_token_budget", "hf_tuned", "ours_fixed_epochs")  # the whole trainer: whole epochs
CONTENDERS = LOOP + WHOLE
EPOCHS = 2  # the first epoch is the warm-up, the second is timed; one step of a third ends the run (its
# end-of-training evaluation and save fall after the window, as for any step count)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# what every contender gets


@dataclass
class Plan:
    """The data every contender trains on, chosen once with the trainer's own functions."""

    profile: Profile
    model: Path
    data: Path
    cache: Path
    work: Path
    train_rows: np.ndarray  # rows of the tokenized file in the train split
    eval_rows: np.ndarray  # the held-out recipes every evaluation uses
    order: np.ndarray  # our epoch-0 order (positions in the train split)
    max_tokens: int  # the token budget of ours_token_budget
    mean_target_tokens: float  # over the train split: what a window's recipes are compared with
    target_tokens: int  # over the train split: what a whole epoch trains on
    target_lengths: np.ndarray  # target tokens of each recipe of the train split
    epochs: bool = False  # whole epochs (the whole-trainer plan) or a window of steps (the loop's)
    # whole epochs: per contender, optimizer steps in epoch 1 and epoch 2, and the evaluation / save interval
    epoch_steps: dict = field(default_factory=dict)
    every: dict = field(default_factory=dict)

    def window(self, name: str) -> tuple[int, int, int]:
        """(first, last, every): the timed steps are first+1 .. last, evaluation and save every ``every``."""
        if self.epochs:
            first, second = self.epoch_steps[name]
            return first, first + second, self.every[name]
        p = self.profile
        return p.warmup_steps, p.warmup_steps + p.timed_steps, p.eval_every


def interval(first: int, second: int, count: int) -> int:
    """The evaluation / save interval closest to ``second / count`` steps that falls exactly ``count``
    times in the timed epoch (steps first+1 .. first+second) and at least once in the warm-up epoch."""
    fits = [e for e in range(1, first + 1) if (first + second) // e - first // e == count]
    if not fits:
        raise ValueError(f"no interval gives {count} evaluations in an epoch of {second} steps")
    return min(fits, key=lambda e: (abs(e - second / count), e))


def make_plan(profile: Profile, model: Path, data: Path, work: Path, cache: Path, epochs: bool = False) -> Plan:
    from chef_genius.model.loading import load_tokenizer

    assert profile.warmup_steps % profile.eval_every == 0 and profile.timed_steps % profile.eval_every == 0
    tokenizer = load_tokenizer(str(model))
    tokenized = load_tokenized(data, tokenizer, profile.max_source, profile.max_target, cache).dataset
    train_idx, eval_idx = split_indices(len(tokenized), EVAL_SPLIT, SEED)
    train = RecipeDataset(tokenized, train_idx)
    held_out = eval_subset(RecipeDataset(tokenized, eval_idx), profile.eval_max_samples, SEED)
    order = epoch_order(len(train), SEED, 0, train.lengths(), 1024)
    src, tgt = train.source_target_lengths()
    longest = np.argsort(-(padded(src) + padded(tgt)), kind="stable")[: profile.batch_size]
    budget = profile.batch_size * int(padded(src[longest]).max() + padded(tgt[longest]).max())
    plan = Plan(
        profile,
        model,
        data,
        cache,
        work,
        train.indices,
        held_out.indices,
        order,
        budget,
        float(tgt.mean()),
        int(tgt.sum()),
        tgt,
        epochs,
    )
    if not epochs:
        needed = (profile.warmup_steps + profile.timed_steps) * profile.batch_size
        assert needed <= len(train), "the loop comparison must stay within one epoch (same order for both)"
        return plan
    fixed = -(-len(train) // profile.batch_size)
    budgeted = [
        len(budget_bounds(epoch_order(len(train), SEED, e, train.lengths(), 1024), src, tgt, budget)) - 1
        for e in range(EPOCHS)
    ]
    plan.epoch_steps = {
        "ours_token_budget": tuple(budgeted),
        "hf_tuned": (fixed, fixed),
        "ours_fixed_epochs": (fixed, fixed),
    }
    plan.every = {name: interval(*steps, profile.evals_per_epoch) for name, steps in plan.epoch_steps.items()}
    return plan


@dataclass
class Run:
    """What one run did in its timed window."""

    contender: str
    first: int
    last: int
    every: int
    marks: dict = field(default_factory=dict)
    eval_s: float = 0.0
    save_s: float = 0.0
    evals: int = 0
    saves: int = 0
    batches: list = field(default_factory=list)  # (rows, source width, target width, tensors...) per batch

    def timed(self, step: int) -> bool:
        return self.first < step <= self.last

    def due(self, step: int) -> bool:
        return self.timed(step) and step % self.every == 0

    def mark(self, step: int) -> None:
        if step in (self.first, self.last) and step not in self.marks:
            _sync()
            self.marks[step] = time.perf_counter()

    def batch(self, input_ids, attention_mask, labels) -> None:
        # device tensors, read after the run: no host sync in the step
        self.batches.append(
            (
                *input_ids.shape,
                labels.shape[1],
                (labels != LABEL_PAD).sum(),
                attention_mask.sum(),
                input_ids.sum(),
                labels.clamp(min=0).sum(),
            )
        )

    def periodic(self, kind: str, step: int, fn, *args, **kwargs):
        """``fn`` timed as evaluation or save work when ``step`` is in the window (a sync only then)."""
        if not self.timed(step) or self.last in self.marks:  # outside the window (the end of training's is after it)
            return fn(*args, **kwargs)
        _sync()
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        _sync()
        seconds = time.perf_counter() - started
        if kind == "eval":
            self.eval_s, self.evals = self.eval_s + seconds, self.evals + 1
        else:
            self.save_s, self.saves = self.save_s + seconds, self.saves + 1
        return out

    def result(self, model_config) -> dict:
        from chef_genius.monitoring.flops import mfu, peak_flops, train_flops

        rows = [(r, s, t, int(tok), int(src), int(ids), int(lab)) for r, s, t, tok, src, ids, lab in self.batches]
        wall = self.marks[self.last] - self.marks[self.first]
        train_s = wall - self.eval_s - self.save_s
        tokens = sum(r[3] for r in rows)
        source = sum(r[4] for r in rows)
        samples = max(sum(r[0] for r in rows), 1)
        flops = train_flops(model_config, source, tokens, source / samples, tokens / samples)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        peak = peak_flops(device, "bf16" if torch.cuda.is_available() else "no")
        out = {
            "tokens": tokens,
            "steps": len(rows),
            "rows_per_step": samples / max(len(rows), 1),
            "target_tokens_per_row": tokens / samples,
            "padded_tokens_per_step": sum(r[0] * (r[1] + r[2]) for r in rows) / max(len(rows), 1),
            "wall_s": wall,
            "train_s": train_s,
            "eval_s": self.eval_s,
            "save_s": self.save_s,
            "evals": self.evals,
            "saves": self.saves,
            "tokens_per_s": tokens / train_s,
            "wall_tokens_per_s": tokens / wall,
            "tflops_per_s": flops / train_s / 1e12,
            "mfu": mfu(flops, train_s, peak),
            "fingerprint": [list(r) for r in rows],
        }
        if torch.cuda.is_available():
            out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        return out


# ---------------------------------------------------------------------------------------------
# the contenders


def run_ours(plan: Plan, name: str, budget: bool, attempt: int) -> dict:
    """Our trainer, in this process, with its flags for this plan; timed from outside by wrapping its
    step and periodic helpers (they only read the clock and the CPU batches)."""
    from chef_genius.train.config import parse_args
    from chef_genius.train.trainer import Trainer

    p = plan.profile
    output = plan.work / f"{name}-{attempt}"
    first, last, every = plan.window(name)
    stop = last + 1 if plan.epochs else last
    flags = [
        "--data",
        str(plan.data),
        "--pretrained-model",
        str(plan.model),
        "--model-output",
        str(output),
        "--cache-dir",
        str(plan.cache),
        "--epochs",
        str(EPOCHS + 1 if plan.epochs else 1000),
        "--max-steps",
        str(stop),
        "--learning-rate",
        str(LEARNING_RATE),
        "--warmup-steps",
        "0",
        "--seed",
        str(SEED),
        "--eval-split-ratio",
        str(EVAL_SPLIT),
        "--eval-max-samples",
        str(p.eval_max_samples),
        "--eval-steps",
        str(every),
        "--save-steps",
        str(every),
        "--logging-steps",
        str(every),
        "--save-total-limit",
        str(SAVE_LIMIT),
        "--eval-samples",
        "0",
        "--max-source-length",
        str(p.max_source),
        "--max-target-length",
        str(p.max_target),
        "--dataloader-num-workers",
        str(p.workers),
        "--mixed-precision",
        "bf16" if p.bf16 else "no",
        "--progress",
        "log",
        "--compile" if p.compile else "--disable-compilation",
        "--dedup",
        "off",
    ]  # the same rows as the baseline's split: a speed comparison
    flags += ["--max-tokens-per-batch", str(plan.max_tokens)] if budget else ["--batch-size", str(p.batch_size)]
    run = Run(name, first, last, every)
    trainer = Trainer(parse_args(flags))
    try:
        trainer.setup()
        _instrument_ours(trainer, run)
        trainer.train()
    finally:
        trainer.close()
    shutil.rmtree(output, ignore_errors=True)
    return run.result(trainer.model_config)


def _instrument_ours(trainer, run: Run) -> None:
    step, evaluate = trainer._step, trainer.maybe_evaluate
    save, after_step = trainer.checkpoints.save, trainer._after_step

    def timed_step(window):
        if run.timed(trainer.state.global_step + 1):
            for b in window:
                run.batch(b["input_ids"], b["attention_mask"], b["labels"])
        return step(window)

    def timed_save(*args, **kwargs):
        return run.periodic("save", trainer.state.global_step, save, *args, **kwargs)

    def marked_after_step(*args, **kwargs):
        # after the step's periodic work (log, evaluate, save): what the window's end includes
        went_on = after_step(*args, **kwargs)
        run.mark(trainer.state.global_step)
        return went_on

    trainer._step = timed_step
    trainer.maybe_evaluate = lambda *a, **k: (
        run.periodic("eval", trainer.state.global_step, evaluate, *a, **k)
        if run.due(trainer.state.global_step)
        else evaluate(*a, **k)
    )
    trainer.checkpoints.save = timed_save
    trainer._after_step = marked_after_step


def run_seq2seq_trainer(plan: Plan, name: str, same_batches: bool, attempt: int) -> dict:
    """``Seq2SeqTrainer`` tuned; ``same_batches``: its sampler yields our epoch order instead of its
    own length grouping, so with the same batch size it steps on exactly our fixed batches."""
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    p = plan.profile
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(plan.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(plan.model, dtype=torch.float32)
    rows = load_tokenized(plan.data, tokenizer, p.max_source, p.max_target, plan.cache).dataset
    train, held_out = hf_dataset(rows, plan.train_rows), hf_dataset(rows, plan.eval_rows)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, pad_to_multiple_of=8, label_pad_token_id=LABEL_PAD)
    first, last, every = plan.window(name)
    stop = last + 1 if plan.epochs else last
    run = Run(name, first, last, every)
    order = plan.order

    class Timed(Seq2SeqTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            if run.timed(self.state.global_step + 1):
                run.batch(inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
            return super().training_step(model, inputs, num_items_in_batch)

        def _evaluate(self, *args, **kwargs):
            return run.periodic("eval", self.state.global_step, super()._evaluate, *args, **kwargs)

        def _save_checkpoint(self, *args, **kwargs):
            return run.periodic("save", self.state.global_step, super()._save_checkpoint, *args, **kwargs)

        def _maybe_log_save_evaluate(self, *args, **kwargs):
            super()._maybe_log_save_evaluate(*args, **kwargs)
            run.mark(self.state.global_step)

        def _get_train_sampler(self, train_dataset=None):
            if same_batches:
                return [int(i) for i in order]  # a sequence of indices is a sampler
            if isinstance(self.train_dataset, InMemoryRows):  # what it does with a datasets length column
                from transformers.trainer_pt_utils import LengthGroupedSampler

                return LengthGroupedSampler(
                    self.args.train_batch_size * self.args.gradient_accumulation_steps,
                    lengths=self.train_dataset.lengths,
                )
            return super()._get_train_sampler(train_dataset)

    workers = p.workers
    args = Seq2SeqTrainingArguments(
        output_dir=str(plan.work / f"{name}-{attempt}"),
        per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=p.batch_size * EVAL_BATCH_FACTOR,
        max_steps=stop,
        learning_rate=LEARNING_RATE,
        warmup_steps=0,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        max_grad_norm=1.0,
        seed=SEED,
        optim="adamw_torch_fused",
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        eval_strategy="steps",
        eval_steps=every,
        prediction_loss_only=True,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=SAVE_LIMIT,
        logging_strategy="steps",
        logging_steps=every,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,
        dataloader_pin_memory=cuda,
        bf16=p.bf16,
        torch_compile=p.compile and cuda,
        use_cpu=not cuda,
    )
    trainer = Timed(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        data_collator=collator,
        processing_class=tokenizer,
    )
    trainer.train()
    result = run.result(model.config)
    del trainer
    shutil.rmtree(plan.work / f"{name}-{attempt}", ignore_errors=True)
    return result


class InMemoryRows(torch.utils.data.Dataset):
    """The baseline's rows where ``datasets`` is not installed (the GPU machine): dicts of input_ids and
    labels, with the source + target length of each for its length-grouped sampler."""

    def __init__(self, rows, indices):
        self.rows = [rows[int(i)] for i in indices]
        self.lengths = [r["source_len"] + r["target_len"] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.rows[i]["input_ids"], "labels": self.rows[i]["labels"]}


def hf_dataset(rows, indices):
    """Rows ``indices`` of the cache (an ``ArrowRows``) as a careful ``Seq2SeqTrainer`` user feeds them: a
    ``datasets.Dataset`` of the same Arrow files with a ``length`` column (source + target tokens) for
    ``group_by_length``; without ``datasets``, the same rows in memory (``InMemoryRows``)."""
    try:
        import datasets
    except ImportError:
        return InMemoryRows(rows, indices)
    datasets.disable_progress_bars()
    opened = [datasets.Dataset.from_file(str(path)) for path in rows.paths]
    table = opened[0] if len(opened) == 1 else datasets.concatenate_datasets(opened)
    table = table.map(
        lambda b: {"length": [s + t for s, t in zip(b["source_len"], b["target_len"])]}, batched=True
    ).remove_columns(["source_len", "target_len", "source_full_len", "target_full_len"])
    return table.select(indices)


def run_in_process(plan: Plan, name: str, attempt: int) -> dict:
    if name in ("ours_fixed", "ours_fixed_epochs"):
        return run_ours(plan, name, budget=False, attempt=attempt)
    if name == "ours_token_budget":
        return run_ours(plan, name, budget=True, attempt=attempt)
    return run_seq2seq_trainer(plan, name, same_batches=name == "hf_same_batches", attempt=attempt)


def run_contender(plan: Plan, name: str, attempt: int) -> dict:
    """One run in a fresh process, so nothing carries over from the previous contender (accelerate's
    process-wide state, CUDA memory and its peak, torch.compile caches, loader workers). On a CPU-only
    machine the process is forked from this one (no second import of torch and transformers, which
    costs seconds); where CUDA is available, spawned (a forked child cannot use CUDA)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn" if torch.cuda.is_available() else "fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(plan, name, attempt, send), name=f"bench-{name}")
    child.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = None
    child.join()
    if child.exitcode != 0 or result is None:
        raise RuntimeError(
            f"throughput contender {name} (run {attempt + 1}) failed (exit code {child.exitcode}); "
            "its traceback is above"
        )
    return result


def _child(plan: Plan, name: str, attempt: int, send) -> None:
    import contextlib

    from chef_genius.model.loading import quiet_transformers

    quiet_transformers()
    if plan.profile.threads:
        torch.set_num_threads(plan.profile.threads)
    with contextlib.redirect_stdout(sys.stderr):  # the parent's stdout is for the JSON lines only
        result = run_in_process(plan, name, attempt)
    send.send(result)
    send.close()


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
