"""``cli/inspect_data.py`` (``chef-genius inspect``): what a training run would see of its data, before training.

Takes the training command's data flags (the same definitions: ``--data``, ``--eval-data``,
``--columns``, ``--source-template``, ``--eval-split-ratio``, ``--seed``, ``--dedup``,
``--dedup-threshold``, the max lengths, ``--cache-dir``, ``--num-proc``) and ``--pretrained-model``
for its tokenizer only (no model is loaded, no GPU used). It reads, deduplicates, splits and tokenizes
exactly as training does, into the same cache (a training run afterwards maps it), and prints rows
read, kept, skipped by reason, duplicates (exact / near / twins of --eval-data), the split, token
lengths and truncation (with several ``--data`` sources: the whole, then each source's counts, twins
across sources and share of an epoch); ``--json`` prints the same as JSON. Histograms of the token lengths go to
``--out`` as PNG files. Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from chef_genius.cli_support import Parser, setup_logging
from chef_genius.errors import EXIT_OK, UserError, run_cli

log = logging.getLogger("chef_genius")

# the training flags this command takes, as training defines them
DATA_FLAGS = (
    "data",
    "eval_data",
    "columns",
    "source_template",
    "eval_split_ratio",
    "seed",
    "dedup",
    "dedup_threshold",
    "max_source_length",
    "max_target_length",
    "cache_dir",
    "num_proc",
    "pretrained_model",
    "progress",
)

EXAMPLES = """examples:
  python cli/inspect_data.py --data RecipeNLG_dataset.csv --pretrained-model google/flan-t5-large
  python cli/inspect_data.py --data recipes.jsonl --max-target-length 384 --json
  python cli/inspect_data.py --data recipes.csv --dedup-threshold 0.85 --out reports/data
"""


def build_parser() -> argparse.ArgumentParser:
    from chef_genius.settings.fields import add_section, settings_of
    from chef_genius.settings.schema import TrainConfig

    p = Parser(
        prog="inspect_data.py",
        description="Report what is in a recipe file as training would see it: "
        "rows, skips, duplicates, split, token lengths and truncation (of --pretrained-model only the "
        "tokenizer is loaded).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # the training settings themselves (settings/schema.py): one definition, one help text, one check
    add_section(p, "data, as training reads it", [f for f in settings_of(TrainConfig) if f.name in DATA_FLAGS])
    p.add_argument(
        "--out", default="data-report", metavar="DIR", help="where the length histograms go (default ./data-report)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")
    return p


def inspect(args) -> dict:
    """The data summary (``data/report.py``) of ``args``' data, as training would see it."""
    from chef_genius.data import corpus, fingerprint, report, training_set
    from chef_genius.data.readers import ReadOptions
    from chef_genius.data.tokenized import load_settings_file
    from chef_genius.model.loading import load_tokenizer, quiet_transformers
    from chef_genius.settings.fields import run_checks
    from chef_genius.settings.schema import TrainConfig

    if not args.data:
        raise UserError("--data is required: the recipe file(s) to inspect")
    c = TrainConfig(**{name: getattr(args, name) for name in DATA_FLAGS})
    run_checks(c)  # each setting's own check, as training runs it
    quiet_transformers()
    tokenizer = load_tokenizer(c.pretrained_model)
    options = ReadOptions(c.columns, c.source_template)
    default_root = Path(TrainConfig().model_output).parent / ".cache" / "tokenized"  # training's default
    cache_root = Path(c.cache_dir) if c.cache_dir else default_root
    fingerprint.remember_across_runs(cache_root)  # the data files' digests, as training remembers them
    settings = corpus.DedupOptions(c.dedup, c.dedup_threshold)
    evald = load_settings_file(c.eval_data, tokenizer, c, cache_root, options) if c.eval_data else None
    ts = training_set.training_set(c, tokenizer, cache_root, options, settings, evald is not None)
    lengths = report.full_lengths(ts.rows, ts.train)
    lengths_report = report.lengths_report(lengths, c.max_source_length, c.max_target_length)
    held = len(evald.dataset) if evald is not None else len(ts.eval)
    summary = report.summarize_set(ts, len(ts.train), held, lengths_report)
    if ts.several or not ts.mixture.plain:
        summary["sources"] = training_set.source_counts(ts)
    summary["warnings"] = report.truncation_warnings(lengths_report)
    summary["plots"] = [str(p) for p in report.write_histograms(lengths, lengths_report, Path(args.out))]
    return summary


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    summary = inspect(args)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        from chef_genius.data.report import summary_lines

        from chef_genius.data.training_set import source_lines

        lines = summary_lines(summary) + source_lines(summary.get("sources") or [], summary["dedup"]["mode"])
        print("\n".join(lines + [f"warning: {w}" for w in summary["warnings"]]))
        print("written: " + ", ".join(summary["plots"]))
    return EXIT_OK


def entry() -> None:
    run_cli(main)
