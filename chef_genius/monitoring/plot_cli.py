"""``cli/plot_training.py``: PNG plots of a run's losses, learning rate, throughput and recipe metrics."""

from __future__ import annotations

import argparse
import json
from typing import Any
from pathlib import Path

from chef_genius.cli_support import Parser
from chef_genius.errors import EXIT_OK, DataError, UserError, run_cli
from chef_genius.monitoring.metrics import read_metrics
from chef_genius.evaluation.metrics import METRICS
from chef_genius.monitoring.plotting import SMOOTH_STEPS, history, plot_run
from chef_genius.monitoring.reporting import METRICS_FILE

EXAMPLES = """examples:
  python cli/plot_training.py models/flan-large
  python cli/plot_training.py models/flan-large --out plots/today --smooth 200
  python cli/plot_training.py models/flan-large --json

writes loss.png, learning_rate.png, throughput.png and overview.png (all three stacked), and for a
run trained with --eval-generate recipe_metrics.png (each recipe metric over steps); resume points
are dashed vertical lines; steps a resume from an older checkpoint replayed are drawn once.
"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="plot_training.py",
        description="Plot a training run from MODEL_OUTPUT/metrics.jsonl.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_output", metavar="MODEL_OUTPUT", help="the run folder (holds metrics.jsonl)")
    p.add_argument("--out", metavar="DIR", help="folder for the PNG files (default MODEL_OUTPUT/plots)")
    p.add_argument(
        "--smooth",
        type=int,
        metavar="N",
        default=SMOOTH_STEPS,
        help=f"steps in the training loss moving average (default {SMOOTH_STEPS})",
    )
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run = Path(args.model_output)
    if not run.is_dir():
        raise UserError(f"{run}: no such run folder")
    path = run / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{path} not found: give the --model-output folder of a training run")
    if args.smooth < 1:
        raise UserError(f"--smooth must be a positive integer, got {args.smooth}")
    h = history(read_metrics(path))
    if h.empty():
        raise DataError(f"{path} holds no training or validation record yet (one is written every --logging-steps)")
    out = Path(args.out) if args.out else run / "plots"
    written = plot_run(h, out, title=str(run.resolve().name), smooth=args.smooth)
    last = h.step_losses[-1][0] if h.step_losses else h.evals[-1]["step"]
    summary: dict[str, Any] = {
        "plots": [str(p) for p in written],
        "last_step": last,
        "resumes": [r["step"] for r in h.resumes],
        "best_eval_loss": min((r["eval_loss"] for r in h.evals), default=None),
        "recipe_metrics": (
            {"step": h.generations[-1]["step"], **{n: h.generations[-1].get(n) for n in METRICS}}
            if h.generations
            else None
        ),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        resumed = f", resumed at step {', '.join(map(str, summary['resumes']))}" if h.resumes else ""
        print(f"plotted steps up to {last}{resumed}:")
        for p in written:
            print(f"  {p}")
    return EXIT_OK


def entry() -> None:
    run_cli(main)
