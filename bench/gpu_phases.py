"""The GPU check's phases (``bench/gpu_check.py`` says what each measures): run in one child process
that ``gpu_check`` starts and watches, reporting each phase's start and result as a JSON line in the
progress file, so the parent can stop a phase that outlives its budget and still write the summary."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .gpu_check import BUDGETS, DRY_BUDGET, DRY_SIZES, EXIT_OK, EXIT_USAGE, GPU_SIZES, _importable
from .gpu_harness import Harness, Skipped


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


class Check(Harness):
    """The phases; each returns its figures as a dict."""

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
