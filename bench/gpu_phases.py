"""The GPU check's phases (``bench/gpu_check.py`` says what each measures): run in one child process
that ``gpu_check`` starts and watches, reporting each phase's start and result as a JSON line in the
progress file, so the parent can stop a phase that outlives its budget and still write the summary."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .gpu_check import BUDGETS, DRY_BUDGET, DRY_SIZES, EXIT_OK, EXIT_USAGE, GPU_SIZES, Sizes, _importable


class Events:
    def __init__(self, path: Path):
        self.path = path

    def send(self, **event) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(event, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def child_main(args) -> int:
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    events = Events(Path(args.progress))
    from chef_genius.cli_support import setup_logging

    setup_logging()  # the trainer's log lines: the log tail a failed or stopped phase records
    import torch

    cuda = torch.cuda.is_available()
    device = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "bf16_supported": torch.cuda.is_bf16_supported() if cuda else False,
        "cpu_count": os.cpu_count(),
        "datasets_importable": _importable("datasets"),
    }
    if not cuda and not args.dry_run:
        events.send(
            event="fatal",
            error="no CUDA GPU is visible to torch; run with --dry-run to check the path on CPU",
            extra={"device": device},
        )
        return EXIT_USAGE
    events.send(event="env", device=device)
    check = Check(
        Path(args.work_dir),
        DRY_SIZES if args.dry_run else GPU_SIZES,
        args.dry_run,
        Path(args.model) if args.model else None,
    )
    for name in args.phases:
        budget = DRY_BUDGET if args.dry_run else BUDGETS[name]
        left = args.deadline - time.time()
        if left < budget.minimum:
            events.send(
                event="end",
                phase=name,
                result={
                    "status": "skipped",
                    "reason": f"budget spent: {left:.0f} s left, the phase needs {budget.minimum:.0f}",
                },
            )
            continue
        events.send(event="start", phase=name)
        began = time.time()
        try:
            result = {"status": "ok", **getattr(check, name)()}
        except Skipped as why:
            result = {"status": "skipped", "reason": str(why)}
        except Exception as err:  # one broken phase must not hide the others' figures
            import traceback

            traceback.print_exc()
            result = {
                "status": "failed",
                "reason": f"{type(err).__name__}: {err}",
                "traceback_tail": traceback.format_exc()[-2000:],
            }
        result["elapsed_s"] = round(time.time() - began, 1)
        check.release(name)
        events.send(event="end", phase=name, result=result)
    return EXIT_OK


class Skipped(Exception):
    """A phase that cannot run (what it needs was not made); the message says why."""


class Check:
    """The phases; each returns its figures as a dict."""

    def __init__(self, work: Path, sizes: Sizes, dry_run: bool, model: Path | None = None):
        import torch

        self.work, self.sizes, self.dry_run = work, sizes, dry_run
        self.given_model = model
        self.model_dir = model or work / "model"
        self.data = work / "train.csv"
        self.cache = work / "cache"
        if dry_run:
            torch.set_num_threads(1)  # the tiny model's matrices are too small to share (bench/common.py)

    # -- helpers --------------------------------------------------------------------------------

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

    # -- the phases -----------------------------------------------------------------------------

    def build(self) -> dict:
        from chef_genius.model.loading import load_tokenizer
        from chef_genius.data.tokenized import load_tokenized

        from .common import build_model_folder, write_recipes_csv

        began = time.perf_counter()
        if self.given_model is None:
            build_model_folder(self.work, self.sizes.model)
        elif not (self.given_model / "config.json").is_file():
            raise RuntimeError(f"--model {self.given_model}: no config.json there")
        built = time.perf_counter() - began
        write_recipes_csv(self.data, self.sizes.rows)
        began = time.perf_counter()
        tokenized = load_tokenized(
            self.data, load_tokenizer(str(self.model_dir)), self.sizes.max_source, self.sizes.max_target, self.cache
        )
        config = json.loads((self.model_dir / "config.json").read_text())
        weights = sum(p.stat().st_size for p in self.model_dir.glob("*.safetensors"))
        return {
            "model": str(self.given_model) if self.given_model else self.sizes.model,
            "build_and_save_s": round(built, 2),
            "weights_bytes": weights,
            "config": {
                k: config.get(k)
                for k in (
                    "d_model",
                    "d_ff",
                    "num_layers",
                    "num_decoder_layers",
                    "num_heads",
                    "d_kv",
                    "vocab_size",
                    "feed_forward_proj",
                    "tie_word_embeddings",
                )
            },
            "recipes": len(tokenized.dataset),
            "tokenize_s": round(time.perf_counter() - began, 2),
        }

    def eager(self) -> dict:
        self._need_model()
        s = self.sizes
        out = self._train(
            self._flags(
                self.work / "eager",
                2 * s.half,
                "--save-steps",
                s.half,
                "--async-save",
                "--save-total-limit",
                3,
                "--disable-compilation",
            )
        )
        out["checkpoints"] = sorted(p.name for p in (self.work / "eager").glob("checkpoint-*"))
        return out

    def resume(self) -> dict:
        s = self.sizes
        source = self.work / "eager" / f"checkpoint-{s.half}"
        if not source.is_dir():
            raise Skipped(f"the eager phase left no {source.name}")
        out = self._train(
            self._flags(
                self.work / "resume",
                2 * s.half,
                "--resume-from-checkpoint",
                source,
                "--save-steps",
                s.half,
                "--disable-compilation",
            ),
            save_final=False,
        )
        reference = self._eager_losses()
        common = sorted(set(out["step_losses"]) & set(reference))
        diffs = [abs(out["step_losses"][k] - reference[k]) for k in common]
        out.update(
            resumed_from_step=s.half,
            steps_compared=common,
            max_abs_loss_diff=max(diffs) if diffs else None,
            bitwise_equal=bool(diffs) and max(diffs) == 0.0,
        )
        if not common:
            raise RuntimeError("the resumed run logged no step that the eager run logged")
        return out

    def _eager_losses(self) -> dict:
        records = [json.loads(line) for line in (self.work / "eager" / "metrics.jsonl").read_text().splitlines()]
        return {
            int(r["step"]) - len(r["step_losses"]) + 1 + i: v
            for r in records
            if r.get("type") == "train"
            for i, v in enumerate(r["step_losses"])
        }

    def gc_adafactor(self) -> dict:
        self._need_model()
        return self._train(
            self._flags(
                self.work / "gc_adafactor",
                self.sizes.gc_steps,
                "--gradient-checkpointing",
                "--optimizer",
                "adafactor",
                "--save-steps",
                1_000_000_000,
                "--disable-compilation",
            ),
            save_final=False,
        )

    def compiled(self) -> dict:
        self._need_model()
        import torch._dynamo

        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        out = self._train(
            self._flags(self.work / "compiled", self.sizes.compiled_steps, "--compile", "--save-steps", 1_000_000_000),
            save_final=False,
            compile_backend="eager" if self.dry_run else None,
        )
        counters = torch._dynamo.utils.counters
        out["graph_breaks"] = {str(k): v for k, v in counters["graph_break"].items()}
        out["graph_break_count"] = sum(counters["graph_break"].values())
        out["unique_graphs"] = counters["stats"].get("unique_graphs")
        out["backend"] = "eager (dry run: dynamo traces, no code generated)" if self.dry_run else "inductor"
        return out

    def vs_seq2seq(self) -> dict:
        self._need_model()
        from . import throughput, throughput_plan
        from .common import Profile

        s = self.sizes
        w = s.vs_warmup
        profile = Profile(
            "gpucheck",
            s.model,
            s.rows,
            s.batch,
            w,
            w,
            0,
            s.workers,
            bf16=not self.dry_run,
            compile=False,
            max_source=s.max_source,
            max_target=s.max_target,
            repeats=1,
            eval_every=w,
            eval_max_samples=s.eval_samples,
            threads=1 if self.dry_run else 0,
        )
        plan = throughput_plan.make_plan(profile, self.model_dir, self.data, self.work, self.cache)
        results = throughput.alternate({name: plan for name in throughput.LOOP}, 1)
        runs = {name: runs[0] for name, runs in results.items()}
        keep = (
            "tokens_per_s",
            "wall_tokens_per_s",
            "mfu",
            "tflops_per_s",
            "peak_memory_gb",
            "eval_s",
            "save_s",
            "evals",
            "saves",
            "steps",
            "tokens",
            "padded_tokens_per_step",
        )
        ours, theirs = runs["ours_fixed"], runs["hf_same_batches"]
        return {
            "ours": {k: ours.get(k) for k in keep},
            "seq2seq_trainer": {k: theirs.get(k) for k in keep},
            "ratio_tokens_per_s": ours["tokens_per_s"] / theirs["tokens_per_s"],
            "ratio_wall_tokens_per_s": ours["wall_tokens_per_s"] / theirs["wall_tokens_per_s"],
            "identical_batches": ours["fingerprint"] == theirs["fingerprint"],
            "setting": {
                "batch": s.batch,
                "warmup_steps": w,
                "timed_steps": w,
                "eval_and_save_every": w,
                "bf16": not self.dry_run,
                "compile": False,
                "eval_recipes": len(plan.eval_rows),
            },
        }


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
