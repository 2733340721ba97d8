"""``cli/evaluate_recipes.py``: which model or checkpoint writes the best recipes, on the same held-out recipes.

Scores every model given (a saved model folder, a ``checkpoint-N`` folder, or a run folder = each of
its complete checkpoints and its final model) with greedy generation and the recipe metrics
(``evaluation/metrics.py``), then prints a side-by-side table, writes ``evaluation.json`` and, with
two checkpoints or more, one PNG per metric over steps: into ``--out``, else the first folder given,
except that a checkpoint's report goes beside it, in its run folder (a checkpoint is never written
into). Bad input ends with one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import records as ckrecords
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.cli_support import Parser, setup_logging
from chef_genius.errors import EXIT_OK, UserError, run_cli
from chef_genius.evaluation.metrics import HIGHER_IS_BETTER, METRICS
from chef_genius.model.generation import NO_REPEAT_NGRAM_SIZE, REPETITION_PENALTY

log = logging.getLogger("chef_genius")

EXAMPLES = """examples:
  python cli/evaluate_recipes.py models/demo
  python cli/evaluate_recipes.py models/flan-large/checkpoint-12000 models/flan-large/checkpoint-24000
  python cli/evaluate_recipes.py models/flan-large --data held_out.csv --max-recipes 200 --json
  python cli/evaluate_recipes.py models/demo --out reports/demo

A run folder stands for each of its complete checkpoints and its final model; without --data the
held-out recipes are the run's own validation split (its --data, --eval-split-ratio and --seed),
read from its newest checkpoint. Decoding is greedy, against loops as generate_recipe.py (repetition penalty, no repeated span).
"""  # noqa: E501 (printed verbatim by --help)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="evaluate_recipes.py",
        description="Score models and checkpoints on held-out recipes "
        "with the recipe metrics (docs/monitoring.md: Recipe metrics).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", nargs="+", metavar="MODEL_CHECKPOINT_OR_RUN_DIR")
    p.add_argument("--data", help="held-out recipes (CSV, JSONL or Parquet); default: the run's validation split")
    p.add_argument("--max-recipes", type=int, default=50, metavar="N", help="score the first N recipes (default 50)")
    p.add_argument("--max-new-tokens", type=int, default=384, metavar="N", help="longest recipe (default 384)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="recipes generated at once (default 16)")
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=REPETITION_PENALTY,
        metavar="X",
        help="penalise tokens already written, 1.0 = off (default "
        f"{REPETITION_PENALTY}, as generate_recipe.py and the metrics during training)",
    )
    p.add_argument(
        "--no-repeat-ngram-size",
        type=int,
        default=NO_REPEAT_NGRAM_SIZE,
        metavar="N",
        help=f"never write the same span of N tokens twice, 0 = off (default {NO_REPEAT_NGRAM_SIZE}, "
        "as generate_recipe.py and the metrics during training)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="where evaluation.json and the PNGs go (default: the first "
        "folder given; for a checkpoint-N folder its run folder: a checkpoint is never written into)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--progress", choices=("auto", "bar", "log"), default="auto")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    return p


def expand(given: str) -> list[tuple[str, int | None, Path]]:
    """(label, step, folder) of each model ``given`` stands for."""
    path = Path(given)
    if not path.is_dir():
        raise UserError(f"{given}: no such folder (give a model folder, a checkpoint-N folder or a run folder)")
    found = [(p.name, ckpt.step_of(p), p) for p in ckpt.list_checkpoints(path) if not ckmanifest.manifest_problems(p)]
    if (path / ckpt.MODEL_CONFIG).is_file():
        step = ckpt.step_of(path)
        found.append((path.name if step is not None or not found else f"{path.name} (final)", step, path))
    if not found:
        raise UserError(f"{given}: no model here ({ckpt.MODEL_CONFIG} missing) and no complete checkpoint-N folder")
    return found


def held_out_recipes(args, models) -> tuple[list, str]:
    from chef_genius.data.readers import ReadOptions, ReadStats, read_examples
    from chef_genius.data.recipes import DEFAULT_SOURCE_TEMPLATE
    from chef_genius.errors import DataError
    from chef_genius.evaluation.heldout import held_out_from_examples

    if args.data:
        if not Path(args.data).is_file():
            raise UserError(f"--data file not found: {args.data}")
        # the input the models were trained with (chef_genius_prompt.json), the default prompt without one
        template = next(
            (t for t in (ckrecords.read_prompt(folder) for _, _, folder in models) if t), DEFAULT_SOURCE_TEMPLATE
        )
        options = ReadOptions(source_template=template)
        examples, where = list(read_examples(args.data, ReadStats(), options)), args.data
    else:
        settings = _run_settings(models)
        options = ReadOptions(settings.get("columns"), settings.get("source_template") or DEFAULT_SOURCE_TEMPLATE)
        data = settings.get("eval_data") or settings.get("data")
        if isinstance(data, list):  # --data as runs save it since several sources
            from chef_genius.data.mixture import parse_sources

            if len(data) > 1:
                raise UserError(
                    "the run trained on several --data sources, each split by itself: pass --data with held-out recipes"
                )
            data = parse_sources(data)[0].path
        if not data or not Path(data).is_file():
            raise UserError(f"the run's data file {data} is not here: pass --data with held-out recipes")
        examples = list(read_examples(data, ReadStats(), options))
        if not settings.get("eval_data"):
            idx = _validation_rows(examples, settings)
            if not len(idx):
                raise UserError(f"the run held out no validation recipes from {data}: pass --data")
            examples = [examples[i] for i in idx]
        where = f"{data} (the run's validation split)" if not settings.get("eval_data") else data
    if not examples:
        raise DataError(f"{where}: no usable recipe")
    return held_out_from_examples(examples[: args.max_recipes], options.source_template), where


def _validation_rows(examples: list[dict], settings: dict):
    """The run's validation rows of its ``--data`` recipes: its content split when it looked for
    duplicates (``--dedup``), the split by row number when it did not (runs before the flag)."""
    import numpy as np

    from chef_genius.data import corpus, dedup

    mode, seed = settings.get("dedup", "off"), int(settings["seed"])
    ratio = float(settings.get("eval_split_ratio", 0.0))
    found = None
    if mode != "off":
        result = dedup.deduplicate(
            [e["target"] for e in examples], float(settings.get("dedup_threshold", dedup.DEFAULT_THRESHOLD))
        )
        found = corpus.FileDedup("", np.arange(1, len(examples) + 1), [""] * len(examples), result)
    return corpus.split_rows(len(examples), found, mode, False, ratio, seed)[1]


def trained_twins(folder: Path, examples) -> dict | None:
    """How many of the held-out ``examples`` have a twin in the training data the model folder records
    (``chef_genius_training_signatures.npz``, written by training with --dedup on); None without it."""
    from chef_genius.data import corpus

    signatures = corpus.find_signatures(folder)
    if signatures is None:
        return None
    hit, threshold = corpus.twins_in_training(signatures, [e.reference for e in examples])
    return {"count": int(hit.sum()), "of": len(examples), "threshold": threshold}


def _run_settings(models) -> dict:
    from chef_genius.checkpoint.manager import read_checkpoint

    for _, _, folder in sorted(models, key=lambda m: -1 if m[1] is None else m[1], reverse=True):
        if ckpt.step_of(folder) is not None:
            return read_checkpoint(folder).settings
    raise UserError("no checkpoint to read the run's validation split from: pass --data with held-out recipes")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("max_recipes", "max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.no_repeat_ngram_size < 0 or args.repetition_penalty <= 0:
        raise UserError("--no-repeat-ngram-size must be 0 or more and --repetition-penalty positive")
    decoding = {"no_repeat_ngram_size": args.no_repeat_ngram_size, "repetition_penalty": args.repetition_penalty}
    setup_logging()
    models = [m for given in args.models for m in expand(given)]
    examples, where = held_out_recipes(args, models)

    import torch
    from chef_genius.evaluation.heldout import evaluate_model
    from chef_genius.model.loading import load_model, load_tokenizer, quiet_transformers
    from chef_genius.monitoring.progress import CountProgress

    quiet_transformers()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to PyTorch")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    log.info("scoring %d model(s) on %d held-out recipes from %s", len(models), len(examples), where)
    results = []
    for label, step, folder in models:
        model, tokenizer = load_model(folder).to(device).eval(), load_tokenizer(str(folder))
        with CountProgress(f"{label}: generating", len(examples), args.progress) as progress:
            metrics, details = evaluate_model(
                model,
                tokenizer,
                examples,
                device,
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
                on_batch=progress.update,
                decoding=decoding,
            )
        twins = trained_twins(folder, examples)
        if twins is None:
            log.info(
                "%s: no record of its training data (trained before --dedup, or with --dedup off): "
                "its held-out recipes cannot be checked for twins in training",
                label,
            )
        elif twins["count"]:
            log.warning(
                "%s: %d of %d held-out recipes have a twin in its training data (exact, or similarity "
                ">= %.2f estimated from LSH bands): their scores are not held-out scores",
                label,
                twins["count"],
                twins["of"],
                twins["threshold"],
            )
        else:
            log.info("%s: none of the %d held-out recipes has a twin in its training data", label, twins["of"])
        results.append(
            {
                "model": label,
                "path": str(folder),
                "step": step,
                "metrics": metrics,
                "recipes": details,
                "trained_twins": twins,
            }
        )
    out = report_folder(args.out, args.models[0])
    report = {
        "data": where,
        "recipes": len(examples),
        "decoding": "greedy",
        "max_new_tokens": args.max_new_tokens,
        **decoding,
        "models": results,
    }
    files = write_report(report, out)
    if args.json:
        print(json.dumps({**report, "files": [str(f) for f in files]}, indent=2))
    else:
        print(table(results))
        print("written: " + ", ".join(str(f) for f in files))
    return EXIT_OK


def report_folder(given: str | None, first_model: str) -> Path:
    """Where the report goes: ``--out``, else the first folder given; never into a checkpoint, whose
    manifest lists every file it holds (a checkpoint's report goes beside it, in its run folder)."""
    if given is not None:
        checkpoint = ckpt.enclosing_checkpoint(given)
        if checkpoint is not None:
            raise UserError(
                f"--out {given} is in the checkpoint {checkpoint.name}, which nothing may write into; "
                f"give another folder, e.g. --out {checkpoint.parent}"
            )
        return Path(given)
    checkpoint = ckpt.enclosing_checkpoint(first_model)
    return checkpoint.parent if checkpoint is not None else Path(first_model)


def table(results: list[dict]) -> str:
    """Models side by side, one row each; the best value of each column marked with *."""
    head = ["model"] + [f"{name} ({'up' if HIGHER_IS_BETTER[name] else 'down'})" for name in METRICS]
    best = {name: (max if HIGHER_IS_BETTER[name] else min)(r["metrics"][name] for r in results) for name in METRICS}
    rows = [
        [r["model"]]
        + [f"{r['metrics'][n]:.3f}{'*' if r['metrics'][n] == best[n] and len(results) > 1 else ''}" for n in METRICS]
        for r in results
    ]
    widths = [max(len(row[i]) for row in [head] + rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [head] + rows)


def write_report(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "evaluation.json"
    path.write_text(json.dumps(report, indent=2))
    files = [path]
    stepped = sorted((r for r in report["models"] if r["step"] is not None), key=lambda r: r["step"])
    if len(stepped) >= 2:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        for name in METRICS:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.plot([r["step"] for r in stepped], [r["metrics"][name] for r in stepped], marker="o")
            ax.set_xlabel("step")
            ax.set_ylabel(name)
            ax.set_title(
                f"{name} ({'higher' if HIGHER_IS_BETTER[name] else 'lower'} is better), "
                f"{report['recipes']} held-out recipes"
            )
            ax.grid(alpha=0.3)
            fig.tight_layout()
            files.append(out / f"evaluation_{name}.png")
            fig.savefig(files[-1], dpi=100)
            plt.close(fig)
    return files


def entry() -> None:
    run_cli(main)
