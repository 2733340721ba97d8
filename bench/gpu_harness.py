"""What the GPU check's phases (``bench/gpu_phases.py``) share: our trainer run in this process with the
check's flags, timed from outside (setup, first step, each save's block), its figures read from
``metrics.jsonl``, and its peak memory set against the memory plan."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .gpu_check import Sizes


class Skipped(Exception):
    """A phase that cannot run (what it needs was not made); the message says why."""


class Harness:
    """The folders, sizes and trainer runs of the check; ``gpu_phases.Check`` adds the phases."""

    def __init__(self, work: Path, sizes: Sizes, dry_run: bool, model: Path | None = None):
        import torch

        self.work, self.sizes, self.dry_run = work, sizes, dry_run
        self.given_model = model
        self.model_dir = model or work / "model"
        self.data = work / "train.csv"
        self.cache = work / "cache"
        if dry_run:
            torch.set_num_threads(1)  # the tiny model's matrices are too small to share (bench/common.py)

    # the run folders a phase leaves that no later phase reads: FLAN-T5-large's checkpoints are 9.4 GB each,
    # and the machine's disk is 64 GiB
    DONE_WITH = {"resume": ("eager", "resume"), "gc_adafactor": ("gc_adafactor",), "compiled": ("compiled",)}

    def release(self, phase: str) -> None:
        import gc
        import shutil

        import torch

        for folder in self.DONE_WITH.get(phase, ()):
            shutil.rmtree(self.work / folder, ignore_errors=True)
        if "torch._dynamo" in sys.modules:  # its caches hold the compiled model (and so its weights)
            torch._dynamo.reset()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _flags(self, output: Path, max_steps: int, *extra) -> list[str]:
        s = self.sizes
        return [
            "--data",
            str(self.data),
            "--pretrained-model",
            str(self.model_dir),
            "--model-output",
            str(output),
            "--cache-dir",
            str(self.cache),
            "--batch-size",
            str(s.batch),
            "--epochs",
            "100",
            "--max-steps",
            str(max_steps),
            "--eval-split-ratio",
            "0",
            "--eval-steps",
            "1000000000",
            "--logging-steps",
            str(s.log_every),
            "--warmup-steps",
            "0",
            "--seed",
            "42",
            "--max-source-length",
            str(s.max_source),
            "--max-target-length",
            str(s.max_target),
            "--dataloader-num-workers",
            str(s.workers),
            "--progress",
            "log",
            "--mixed-precision",
            "no" if self.dry_run else "bf16",
            *[str(x) for x in extra],
        ]

    def _need_model(self) -> None:
        if not (self.model_dir / "config.json").is_file() or not self.data.is_file():
            raise Skipped("the build phase did not make the model and data")

    def _train(self, flags: list[str], save_final: bool = True, compile_backend: str | None = None) -> dict:
        """Our trainer in this process with ``flags``; its figures from metrics.jsonl and the clock."""
        import torch

        from chef_genius.model.loading import unwrap
        from chef_genius.monitoring.reporting import METRICS_FILE
        from chef_genius.train.config import parse_args
        from chef_genius.train.trainer import Trainer

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        config = parse_args(flags)
        trainer = Trainer(config)
        marks, saves, shapes = {}, [], []
        try:
            with _compile_backend(compile_backend):
                trainer.setup()
            marks["setup_s"] = time.perf_counter() - started
            step, save = trainer._step, trainer.checkpoints.save

            def timed_step(window):
                for batch in window:
                    shapes.append((batch["input_ids"].shape[0], batch["input_ids"].shape[1], batch["labels"].shape[1]))
                out = step(window)
                if "first_step_s" not in marks:
                    _sync()
                    marks["first_step_s"] = time.perf_counter() - started
                return out

            def timed_save(step_number, *a, **k):
                _sync()
                began = time.perf_counter()
                out = save(step_number, *a, **k)
                saves.append({"step": step_number, "blocked_s": round(time.perf_counter() - began, 3)})
                return out

            trainer._step, trainer.checkpoints.save = timed_step, timed_save
            if not save_final:  # the end-of-run checkpoint and final model: measured once, in the eager phase
                trainer.finish = lambda: trainer.maybe_log(force=True)
            began = time.perf_counter()
            trainer.train()
            marks["train_s"] = time.perf_counter() - began
            model = unwrap(trainer.model)
            plan = self._plan(model, trainer, shapes)
        finally:
            trainer.close()
        records = [json.loads(line) for line in (Path(config.model_output) / METRICS_FILE).read_text().splitlines()]
        train = [r for r in records if r.get("type") == "train"]
        steady = train[1:] or train  # the first window holds the warm-up (allocation, autotuning, compilation)
        out = {
            "steps": trainer.state.global_step,
            "setup_s": round(marks["setup_s"], 2),
            "first_step_s": round(marks.get("first_step_s", float("nan")), 2),
            "train_s": round(marks["train_s"], 2),
            "tokens_per_s": _median([r["tokens_per_s"] for r in steady]),
            "tokens_per_s_windows": [round(r["tokens_per_s"], 1) for r in train],
            "mfu": _median([r["mfu"] for r in steady if r.get("mfu") is not None]),
            "tflops_per_s": _median([r["tflops_per_s"] for r in steady]),
            "step_losses": {
                int(r["step"]) - len(r["step_losses"]) + 1 + i: v for r in train for i, v in enumerate(r["step_losses"])
            },
            "saves": saves,
            "memory": plan,
        }
        return out

    def _plan(self, model, trainer, shapes) -> dict:
        """Peak memory against the plan at the configured longest batch and at the longest batch seen."""
        from dataclasses import replace

        import torch

        from chef_genius.model import memory
        from chef_genius.train.memory_plan import setting_of

        setting = setting_of(trainer.config, trainer.accelerator.mixed_precision == "bf16")
        planned = memory.plan(model, setting)
        rows = max((s[0] for s in shapes), default=setting.micro_batch)
        source = max((s[1] for s in shapes), default=0)
        target = max((s[2] for s in shapes), default=0)
        seen = memory.plan(model, replace(setting, micro_batch=rows, source_length=source, target_length=target))
        gib = 2**30
        out = {
            "plan_gib": round(planned.total / gib, 2),
            "plan_at_longest_seen_gib": round(seen.total / gib, 2),
            "plan_terms_gib": {
                k: round(getattr(planned, k) / gib, 3)
                for k in ("weights", "gradients", "optimizer_state", "activations")
            },
            "longest_batch_seen": [rows, source, target],
            "setting": setting.flags(),
        }
        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated()
            out.update(
                peak_allocated_gib=round(peak / gib, 2),
                peak_reserved_gib=round(torch.cuda.max_memory_reserved() / gib, 2),
                peak_over_plan_at_seen=round(peak / seen.total, 3),
            )
        return out


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median(values):
    import statistics

    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class _compile_backend:
    """``torch.compile`` with another backend while the trainer sets up (the dry run: ``eager``, so
    dynamo traces the model without generating code)."""

    def __init__(self, backend: str | None):
        self.backend = backend

    def __enter__(self):
        import torch

        self.original = torch.compile
        if self.backend:
            torch.compile = lambda model, **kwargs: self.original(model, **{**kwargs, "backend": self.backend})

    def __exit__(self, *exc):
        import torch

        torch.compile = self.original
