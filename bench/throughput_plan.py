"""What every throughput contender gets (``Plan``: the same split, order and token budget, chosen with the
trainer's own functions) and what one run measured in its timed window (``Run``). The comparisons and
their timing rules: ``bench/throughput.py``'s docstring."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from chef_genius.data.sampler import budget_bounds, epoch_order, padded
from chef_genius.data.tokenized import LABEL_PAD, RecipeDataset, load_tokenized, split_indices
from chef_genius.train.data_setup import eval_subset

from .common import Profile

SEED = 42
EVAL_SPLIT = 0.1
LEARNING_RATE = 1e-4
SAVE_LIMIT = 2
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
