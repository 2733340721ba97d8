"""``cli/complete_optimized_training.py``: parse flags, build the trainer, train."""

from __future__ import annotations

import logging
import sys

from .config import parse_args
from .errors import EXIT_OK, run_cli


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")


def main(argv=None) -> int:
    config = parse_args(argv)
    setup_logging()
    if config.demo:
        from .modeling import quiet_transformers
        from .tiny import ensure_tiny
        quiet_transformers()  # no "Writing model shards" bar in the middle of the log
        ensure_tiny(config.pretrained_model)
    from .trainer import Trainer
    trainer = Trainer(config)
    trainer.setup()
    state = trainer.train()
    if trainer.is_main:
        best = f"{state.best_loss:.4f} at step {state.best_step}" if state.best_loss is not None else "n/a"
        print(f"done: step {state.global_step}, epoch {state.epoch}, best validation loss {best}; "
              f"model in {config.model_output}")
        logging.getLogger("chef_genius").info(
            "try it: python cli/generate_recipe.py --model %s --ingredients \"chicken, rice, garlic\"; "
            "plots: python cli/plot_training.py %s", config.model_output, config.model_output)
    return EXIT_OK


def entry() -> None:
    run_cli(main)
