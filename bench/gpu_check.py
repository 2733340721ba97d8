"""``bash bench/gpu_check.sh``: what a session lent a CUDA GPU runs first, from the repository root.

Within ``--budget-s`` (default 480: 8 minutes, so one 10-minute command holds it with room to spare)
it writes ONE JSON summary, ``$OUT/gpu_check.json`` (``--out``; default ``./gpu-check-out``),
rewritten after every phase, so whatever ends the run the phases done so far are on disk:

  preflight     (this process, no heavy import, a second) the packages the trainer needs, their versions
                against requirements.txt; one missing: one line on stderr, exit 2, nothing else runs
  build         FLAN-T5-large from its config (``bench/common.FLAN_T5_LARGE``, random weights, no hub)
                and generated recipes, tokenized into the cache
  eager         our trainer, bf16, eager, an async checkpoint half-way: tokens/s, MFU, peak memory
                against the memory plan (``chef_genius/model/memory.py``), what each save blocked
  resume        from eager's half-way checkpoint, in another folder, to the same last step: time to
                the first step, the resumed step losses against eager's
  gc_adafactor  ``--gradient-checkpointing --optimizer adafactor``: tokens/s, peak memory against plan
  compiled      ``--compile``: time to the first step (compilation), steady tokens/s, graph breaks
  vs_seq2seq    ours against transformers' ``Seq2SeqTrainer`` on identical batches (bench/throughput.py's
                loop comparison, each in a fresh process, eager bf16, one save and one evaluation in the
                timed window): tokens/s, MFU, peak memory, evaluation and save seconds

Each phase has its own budget (``BUDGETS``); a phase that outlives it is stopped and recorded as
timed out, and one that would start with less than its minimum left of the whole budget is skipped
with the reason. The phases run in one child process (one import of torch and transformers); this
process only watches the child's progress file, so a hung phase is killed, recorded, and the child
restarted for the phases after it. Exit 0 when every phase passed, 1 when one failed, timed out or
was skipped, 2 when a package is missing or there is no CUDA GPU (without ``--dry-run``).

``--dry-run``: the same phases on CPU with the tiny model, 2 steps each, fp32, the compiled phase
traced by dynamo with its eager backend (no code generation): the whole path in well under a minute.
The test suite runs it (tests/test_gpu_check.py).

The device machine has no package index: ``bash bench/fetch_wheels.sh`` (here) puts the wheels it
lacks in ``.wheels/`` (ignored by git, carried with the working tree), which ``gpu_check.sh`` installs
into a private folder first. The training path itself needs no ``datasets`` package (the cache is
read with pyarrow alone).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUMMARY = "gpu_check.json"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# import name -> (distribution, what needs it); checked with find_spec, nothing imported
REQUIRED = {
    "torch": ("torch", "everything"),
    "transformers": ("transformers", "the model and Seq2SeqTrainer"),
    "accelerate": ("accelerate", "the trainer's devices and mixed precision"),
    "safetensors": ("safetensors", "checkpoints"),
    "tokenizers": ("tokenizers", "the tokenizer"),
    "numpy": ("numpy", "the sampler"),
    "pyarrow": ("pyarrow", "the tokenized-data cache"),
    "huggingface_hub": ("huggingface-hub", "transformers' model files"),
}
OPTIONAL = ("datasets", "peft", "triton")  # versions recorded when present; the check runs without them

PHASES = ("build", "eager", "resume", "gc_adafactor", "compiled", "vs_seq2seq")


@dataclass(frozen=True)
class Budget:
    seconds: float   # the phase is stopped after this
    minimum: float   # skipped when less than this is left of the whole budget


# Sized for FLAN-T5-large on an H100 (a 9.4 GB checkpoint with AdamW; each fresh process imports torch
# and loads the 3.1 GB of weights): they add up to 460 s of the default 480, the rest for the start.
BUDGETS = {"build": Budget(45, 20), "eager": Budget(80, 40), "resume": Budget(55, 30),
           "gc_adafactor": Budget(45, 25), "compiled": Budget(110, 60), "vs_seq2seq": Budget(125, 80)}
DRY_BUDGET = Budget(240, 1)  # generous: the suite runs it on 2 shared cores; about 40 s of CPU in all


@dataclass(frozen=True)
class Sizes:
    """What each phase trains: steps, batch, lengths."""
    model: str
    rows: int
    batch: int
    max_source: int
    max_target: int
    half: int            # eager saves at step ``half`` and ends at ``2 * half``; resume continues from there
    log_every: int
    gc_steps: int
    compiled_steps: int
    vs_warmup: int       # vs_seq2seq: warm-up steps = timed steps = evaluation and save interval
    workers: int
    eval_samples: int


GPU_SIZES = Sizes("flan-t5-large", 2000, 8, 256, 512, half=10, log_every=5, gc_steps=10, compiled_steps=30,
                  vs_warmup=10, workers=2, eval_samples=16)
DRY_SIZES = Sizes("tiny", 200, 4, 64, 64, half=2, log_every=1, gc_steps=2, compiled_steps=2, vs_warmup=2,
                  workers=0, eval_samples=8)


# ---------------------------------------------------------------------------------------------
# this process: preflight, the child, the summary


def parse(argv):
    p = argparse.ArgumentParser(prog="bash bench/gpu_check.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model, 2 steps a phase (seconds)")
    p.add_argument("--budget-s", type=float, default=480.0, help="the whole check's time (default 480)")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out",
                   help="folder of the JSON summary (default $OUT, else ./gpu-check-out)")
    p.add_argument("--work-dir", help="scratch folder for the model, data and runs (default: OUT/work, "
                                      "removed at the end unless --keep-work)")
    p.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
    p.add_argument("--phases", nargs="+", choices=PHASES, help="run only these phases (build always runs)")
    p.add_argument("--model", help="a model folder (weights and tokenizer) to check instead of the one the build "
                                   "phase makes from FLAN-T5-large's config (the tiny one with --dry-run)")
    # the child's own flags
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--progress", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.child:
        return child_main(args)
    started = time.time()
    deadline = started + args.budget_s - 5  # the summary is written in the last seconds
    out = Path(args.out)
    missing, versions = preflight()
    if missing:
        module, (dist, needed_by) = missing[0]
        more = f" (also missing: {', '.join(m for m, _ in missing[1:])})" if len(missing) > 1 else ""
        print(f"gpu_check: missing Python package {dist!r} (import {module}, needed by {needed_by}){more}; put its "
              "wheel in .wheels/ with `bash bench/fetch_wheels.sh` on a machine with a package index, then run "
              "`bash bench/gpu_check.sh`", file=sys.stderr)
        return EXIT_USAGE
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir) if args.work_dir else out / "work"
    work.mkdir(parents=True, exist_ok=True)
    summary = {"check": "gpu_check", "dry_run": args.dry_run, "budget_s": args.budget_s,
               "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "commit": _commit(),
               "versions": versions, "phases": {}}
    wanted = ["build"] + [p for p in PHASES[1:] if not args.phases or p in args.phases]
    status = watch(args, work, wanted, deadline, summary, out)
    if not args.keep_work and not args.work_dir:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    summary["elapsed_s"] = round(time.time() - started, 1)
    summary["ok"] = status == EXIT_OK
    _write(out, summary)
    for name, phase in summary["phases"].items():
        print(f"gpu_check {name}: {phase.get('status')} in {phase.get('elapsed_s', 0)} s"
              + (f" ({phase['reason']})" if phase.get("reason") else ""), file=sys.stderr)
    if "error" in summary:
        print(f"gpu_check: {summary['error']}", file=sys.stderr)
    print(f"gpu_check: summary in {out / SUMMARY} ({summary['elapsed_s']} s)", file=sys.stderr)
    return status


def preflight() -> tuple[list, dict]:
    """(missing [(module, (distribution, needed by))], {distribution: {found, pinned}}): no heavy import."""
    import importlib.metadata
    import importlib.util

    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            pins[name.lower()] = version
    missing, versions = [], {}
    for module, (dist, needed_by) in REQUIRED.items():
        if not _importable(module):
            missing.append((module, (dist, needed_by)))
            continue
        versions[dist] = {"found": _version(dist), "pinned": pins.get(dist)}
    for dist in OPTIONAL:
        versions[dist] = {"found": _version(dist), "pinned": pins.get(dist)}
    return missing, versions


def _importable(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses the name, a broken package's metadata
        return False


def _version(dist: str) -> str | None:
    import importlib.metadata
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _write(out: Path, summary: dict) -> None:
    path = out / SUMMARY
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    os.replace(temporary, path)


def watch(args, work: Path, wanted: list[str], deadline: float, summary: dict, out: Path) -> int:
    """Run the phases in a child, each under its budget; a killed or crashed child is restarted for the
    phases after the one it was in."""
    results = summary["phases"]
    remaining = list(wanted)
    progress = work / "progress.jsonl"
    while remaining:
        if time.time() >= deadline:
            break
        progress.write_text("")
        command = [sys.executable, "-m", "bench.gpu_check", "--child", "--progress", str(progress),
                   "--deadline", str(deadline), "--work-dir", str(work), "--phases", *remaining]
        if args.model:
            command += ["--model", str(Path(args.model).resolve())]
        if args.dry_run:
            command.append("--dry-run")
        log_path = work / f"child-{len(wanted) - len(remaining)}.log"
        with open(log_path, "w") as log:
            child = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
            current, began, seen = None, time.time(), 0
            while True:
                events = progress.read_text().splitlines()
                for line in events[seen:]:
                    event = json.loads(line)
                    if event["event"] == "start":
                        current, began = event["phase"], time.time()
                    elif event["event"] == "fatal":
                        _stop(child)
                        summary["error"] = event["error"]
                        summary.update(event.get("extra", {}))
                        _skip_rest(results, remaining, f"not run: {event['error']}")
                        _write(out, summary)
                        return EXIT_USAGE
                    elif event["event"] == "env":
                        summary["device"] = event["device"]
                    else:
                        results[event["phase"]] = event["result"]
                        remaining.remove(event["phase"])
                        current = None
                        _write(out, summary)
                seen = len(events)
                budget = DRY_BUDGET if args.dry_run else BUDGETS.get(current, DRY_BUDGET)
                if current is not None and time.time() - began > budget.seconds:
                    _stop(child)
                    results[current] = {"status": "timeout", "elapsed_s": round(time.time() - began, 1),
                                        "reason": f"stopped after its budget of {budget.seconds:.0f} s",
                                        "log_tail": _tail(log_path)}
                    remaining.remove(current)
                    _write(out, summary)
                    break
                if time.time() >= deadline:
                    _stop(child)
                    if current is not None:
                        results[current] = {"status": "timeout", "elapsed_s": round(time.time() - began, 1),
                                            "reason": "the whole budget ran out", "log_tail": _tail(log_path)}
                        remaining.remove(current)
                    break
                if child.poll() is not None and seen == len(progress.read_text().splitlines()):
                    if current is not None:
                        results[current] = {"status": "failed", "elapsed_s": round(time.time() - began, 1),
                                            "reason": f"the check's process ended with exit code {child.returncode}",
                                            "log_tail": _tail(log_path)}
                        remaining.remove(current)
                        _write(out, summary)
                    elif remaining and child.returncode != 0:  # died before its first phase: do not loop
                        summary["error"] = f"the check's process ended with exit code {child.returncode}"
                        summary["log_tail"] = _tail(log_path)
                        _skip_rest(results, remaining, "not run: the check's process failed at start")
                    break
                time.sleep(0.2)
    _skip_rest(results, remaining, "skipped: the whole budget was spent")
    _write(out, summary)
    return EXIT_OK if all(r.get("status") == "ok" for r in results.values()) and "error" not in summary \
        else EXIT_FAILED


def _skip_rest(results: dict, remaining: list[str], reason: str) -> None:
    for name in list(remaining):
        results[name] = {"status": "skipped", "reason": reason}
        remaining.remove(name)


def _stop(child: subprocess.Popen) -> None:
    """End the child and everything it started (loader workers, the vs_seq2seq contenders)."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# the child: the phases


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
    device = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if cuda
              else None, "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
              "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
              "bf16_supported": torch.cuda.is_bf16_supported() if cuda else False, "cpu_count": os.cpu_count(),
              "datasets_importable": _importable("datasets")}
    if not cuda and not args.dry_run:
        events.send(event="fatal", error="no CUDA GPU is visible to torch; run with --dry-run to check the path on CPU",
                    extra={"device": device})
        return EXIT_USAGE
    events.send(event="env", device=device)
    check = Check(Path(args.work_dir), DRY_SIZES if args.dry_run else GPU_SIZES, args.dry_run,
                  Path(args.model) if args.model else None)
    for name in args.phases:
        budget = DRY_BUDGET if args.dry_run else BUDGETS[name]
        left = args.deadline - time.time()
        if left < budget.minimum:
            events.send(event="end", phase=name, result={
                "status": "skipped", "reason": f"budget spent: {left:.0f} s left, the phase needs {budget.minimum:.0f}"})
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
            result = {"status": "failed", "reason": f"{type(err).__name__}: {err}",
                      "traceback_tail": traceback.format_exc()[-2000:]}
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
        return ["--data", str(self.data), "--pretrained-model", str(self.model_dir), "--model-output", str(output),
                "--cache-dir", str(self.cache), "--batch-size", str(s.batch), "--epochs", "100",
                "--max-steps", str(max_steps), "--eval-split-ratio", "0", "--eval-steps", "1000000000",
                "--logging-steps", str(s.log_every), "--warmup-steps", "0", "--seed", "42",
                "--max-source-length", str(s.max_source), "--max-target-length", str(s.max_target),
                "--dataloader-num-workers", str(s.workers), "--progress", "log",
                "--mixed-precision", "no" if self.dry_run else "bf16", *[str(x) for x in extra]]

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
        out = {"steps": trainer.state.global_step, "setup_s": round(marks["setup_s"], 2),
               "first_step_s": round(marks.get("first_step_s", float("nan")), 2), "train_s": round(marks["train_s"], 2),
               "tokens_per_s": _median([r["tokens_per_s"] for r in steady]),
               "tokens_per_s_windows": [round(r["tokens_per_s"], 1) for r in train],
               "mfu": _median([r["mfu"] for r in steady if r.get("mfu") is not None]),
               "tflops_per_s": _median([r["tflops_per_s"] for r in steady]),
               "step_losses": {int(r["step"]) - len(r["step_losses"]) + 1 + i: v
                               for r in train for i, v in enumerate(r["step_losses"])},
               "saves": saves, "memory": plan}
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
        seen = memory.plan(model, replace(setting, micro_batch=rows, source_length=max((s[1] for s in shapes), default=0),
                                          target_length=max((s[2] for s in shapes), default=0)))
        gib = 2**30
        out = {"plan_gib": round(planned.total / gib, 2), "plan_at_longest_seen_gib": round(seen.total / gib, 2),
               "plan_terms_gib": {k: round(getattr(planned, k) / gib, 3)
                                  for k in ("weights", "gradients", "optimizer_state", "activations")},
               "longest_batch_seen": [rows, max((s[1] for s in shapes), default=0), max((s[2] for s in shapes), default=0)],
               "setting": setting.flags()}
        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated()
            out.update(peak_allocated_gib=round(peak / gib, 2),
                       peak_reserved_gib=round(torch.cuda.max_memory_reserved() / gib, 2),
                       peak_over_plan_at_seen=round(peak / seen.total, 3))
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
        tokenized = load_tokenized(self.data, load_tokenizer(str(self.model_dir)), self.sizes.max_source,
                                   self.sizes.max_target, self.cache)
        config = json.loads((self.model_dir / "config.json").read_text())
        weights = sum(p.stat().st_size for p in self.model_dir.glob("*.safetensors"))
        return {"model": str(self.given_model) if self.given_model else self.sizes.model, "build_and_save_s": round(built, 2), "weights_bytes": weights,
                "config": {k: config.get(k) for k in ("d_model", "d_ff", "num_layers", "num_decoder_layers",
                                                      "num_heads", "d_kv", "vocab_size", "feed_forward_proj",
                                                      "tie_word_embeddings")},
                "recipes": len(tokenized.dataset), "tokenize_s": round(time.perf_counter() - began, 2)}

    def eager(self) -> dict:
        self._need_model()
        s = self.sizes
        out = self._train(self._flags(self.work / "eager", 2 * s.half, "--save-steps", s.half, "--async-save",
                                      "--save-total-limit", 3, "--disable-compilation"))
        out["checkpoints"] = sorted(p.name for p in (self.work / "eager").glob("checkpoint-*"))
        return out

    def resume(self) -> dict:
        s = self.sizes
        source = self.work / "eager" / f"checkpoint-{s.half}"
        if not source.is_dir():
            raise Skipped(f"the eager phase left no {source.name}")
        out = self._train(self._flags(self.work / "resume", 2 * s.half, "--resume-from-checkpoint", source,
                                      "--save-steps", s.half, "--disable-compilation"), save_final=False)
        reference = self._eager_losses()
        common = sorted(set(out["step_losses"]) & set(reference))
        diffs = [abs(out["step_losses"][k] - reference[k]) for k in common]
        out.update(resumed_from_step=s.half, steps_compared=common,
                   max_abs_loss_diff=max(diffs) if diffs else None,
                   bitwise_equal=bool(diffs) and max(diffs) == 0.0)
        if not common:
            raise RuntimeError("the resumed run logged no step that the eager run logged")
        return out

    def _eager_losses(self) -> dict:
        records = [json.loads(line) for line in (self.work / "eager" / "metrics.jsonl").read_text().splitlines()]
        return {int(r["step"]) - len(r["step_losses"]) + 1 + i: v
                for r in records if r.get("type") == "train" for i, v in enumerate(r["step_losses"])}

    def gc_adafactor(self) -> dict:
        self._need_model()
        return self._train(self._flags(self.work / "gc_adafactor", self.sizes.gc_steps, "--gradient-checkpointing",
                                       "--optimizer", "adafactor", "--save-steps", 1_000_000_000,
                                       "--disable-compilation"), save_final=False)

    def compiled(self) -> dict:
        self._need_model()
        import torch._dynamo

        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        out = self._train(self._flags(self.work / "compiled", self.sizes.compiled_steps, "--compile",
                                      "--save-steps", 1_000_000_000), save_final=False,
                          compile_backend="eager" if self.dry_run else None)
        counters = torch._dynamo.utils.counters
        out["graph_breaks"] = {str(k): v for k, v in counters["graph_break"].items()}
        out["graph_break_count"] = sum(counters["graph_break"].values())
        out["unique_graphs"] = counters["stats"].get("unique_graphs")
        out["backend"] = "eager (dry run: dynamo traces, no code generated)" if self.dry_run else "inductor"
        return out

    def vs_seq2seq(self) -> dict:
        self._need_model()
        from . import throughput
        from .common import Profile

        s = self.sizes
        w = s.vs_warmup
        profile = Profile("gpucheck", s.model, s.rows, s.batch, w, w, 0, s.workers, bf16=not self.dry_run,
                          compile=False, max_source=s.max_source, max_target=s.max_target, repeats=1, eval_every=w,
                          eval_max_samples=s.eval_samples, threads=1 if self.dry_run else 0)
        plan = throughput.make_plan(profile, self.model_dir, self.data, self.work, self.cache)
        results = throughput.alternate({name: plan for name in throughput.LOOP}, 1)
        runs = {name: runs[0] for name, runs in results.items()}
        keep = ("tokens_per_s", "wall_tokens_per_s", "mfu", "tflops_per_s", "peak_memory_gb", "eval_s", "save_s",
                "evals", "saves", "steps", "tokens", "padded_tokens_per_step")
        ours, theirs = runs["ours_fixed"], runs["hf_same_batches"]
        return {"ours": {k: ours.get(k) for k in keep}, "seq2seq_trainer": {k: theirs.get(k) for k in keep},
                "ratio_tokens_per_s": ours["tokens_per_s"] / theirs["tokens_per_s"],
                "ratio_wall_tokens_per_s": ours["wall_tokens_per_s"] / theirs["wall_tokens_per_s"],
                "identical_batches": ours["fingerprint"] == theirs["fingerprint"],
                "setting": {"batch": s.batch, "warmup_steps": w, "timed_steps": w, "eval_and_save_every": w,
                            "bf16": not self.dry_run, "compile": False, "eval_recipes": len(plan.eval_rows)}}


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


if __name__ == "__main__":
    sys.exit(main())
