"""``cli/complete_optimized_training.py``: parse flags, build the trainer, train."""

from __future__ import annotations

import logging

from chef_genius.cli_support import setup_logging
from chef_genius.train.config import parse_args
from chef_genius.errors import EXIT_OK, run_cli


def main(argv=None) -> int:
    config = parse_args(argv)
    setup_logging()
    if config.demo:
        from chef_genius.model.loading import quiet_transformers
        from chef_genius.model.tiny import ensure_tiny
        quiet_transformers()  # no "Writing model shards" bar in the middle of the log
        ensure_tiny(config.pretrained_model)
    if config.plan_only:
        from chef_genius.model.loading import quiet_transformers
        from chef_genius.train.memory_plan import print_plans
        quiet_transformers()
        print_plans(config)
        return EXIT_OK
    from chef_genius.train.trainer import Trainer
    trainer = Trainer(config)
    try:
        trainer.setup()
        state = trainer.train()
    finally:
        trainer.close()  # after the final model is written: the run folder is this run's until then
    if trainer.is_main:
        best = f"{state.best_loss:.4f} at step {state.best_step}" if state.best_loss is not None else "n/a"
        print(f"done: step {state.global_step}, epoch {trainer.position.epoch}, best validation loss {best}; "
              f"model in {config.model_output}")
        logging.getLogger("chef_genius").info(
            "try it: python cli/generate_recipe.py --model %s --ingredients \"chicken, rice, garlic\"; "
            "plots: python cli/plot_training.py %s", config.model_output, config.model_output)
    return EXIT_OK


def entry() -> None:
    run_cli(main)
