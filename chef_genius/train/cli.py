"""``cli/complete_optimized_training.py``: parse flags, build the trainer, train."""

from __future__ import annotations

import contextlib
import logging
import signal

from chef_genius.cli_support import setup_logging
from chef_genius.train.config import parse_args
from chef_genius.errors import EXIT_OK, Preempted, run_cli
from chef_genius.monitoring.progress import epoch_label
from chef_genius.train.preemption import abort_on_signal, stop_signals


def main(argv=None) -> int:
    config = parse_args(argv)
    setup_logging()
    with contextlib.ExitStack() as stack:
        if config.demo:
            stack.enter_context(_demo_model(config))
        if config.plan_only:
            from chef_genius.model.loading import quiet_transformers
            from chef_genius.train.memory_plan import print_plans

            quiet_transformers()
            print_plans(config)
            return EXIT_OK
        return _train(config)


@contextlib.contextmanager
def _demo_model(config):
    import torch
    from chef_genius.model.loading import quiet_transformers
    from chef_genius.model.tiny import DEMO_SIZES, ensure_tiny

    quiet_transformers()  # no "Writing model shards" bar in the middle of the log
    ensure_tiny(config.pretrained_model, **DEMO_SIZES)
    threads = torch.get_num_threads()
    if not torch.cuda.is_available():
        # The demo's matrices are too small to share among threads: on 2 busy cores, 2 threads made
        # each step 8 times slower than 1 (wall and CPU time; docs/training-and-data.md: The demo).
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(config) -> int:
    if not (config.resume_from_checkpoint or config.auto_resume):  # a resume takes the checkpoint's weights
        from chef_genius.model.hub import check_hub_reachable

        check_hub_reachable(config.pretrained_model)  # before the heavy imports: offline fails in seconds
    from chef_genius.train.trainer import Trainer

    trainer = Trainer(config)
    try:
        with abort_on_signal("setting up (reading the checkpoint, tokenizing, loading the model)"):
            trainer.setup()  # nothing to save yet: a stop signal ends it at once, cleaning up (exit 7)
        # held until the run folder is given back: a signal during the exit cannot cut it short
        with trainer.preemption:
            try:
                before = trainer.preview() if config.demo else None
                state = trainer.train()
                if config.demo:
                    show_learning(trainer, before)
            finally:
                trainer.close()  # after the final model is written: the run folder is this run's until then
    finally:
        trainer.close()
    if trainer.is_main:
        best = f"{state.best_loss:.4f} at step {state.best_step}" if state.best_loss is not None else "n/a"
        epoch = epoch_label(trainer.position.epoch + 1, trainer.config.epochs)
        print(
            f"done: step {state.global_step}, epoch {epoch}, "
            f"best validation loss {best}; "
            f"model in {config.model_output}"
        )
        logging.getLogger("chef_genius").info(
            'try it: python cli/generate_recipe.py --model %s --ingredients "chicken, rice, garlic"; '
            "plots: python cli/plot_training.py %s",
            config.model_output,
            config.model_output,
        )
    return EXIT_OK


def show_learning(trainer, before: tuple[int, str, str] | None) -> None:
    """The demo's proof that it learned: one held-out recipe before and after, and the recipe metrics.

    Called on every process (under FSDP they all generate); the main one prints."""
    from chef_genius.data.recipes import parse_target, render
    from chef_genius.train.evaluation import format_metrics

    final = trainer.final_generation()
    if before is None or final is None:
        return
    step, metrics, details = final
    start_step, given, text = before
    first = details[0]
    print(
        f"\nheld-out recipe from: {given}\n--- written at step {start_step} (before training):\n"
        f"{text[:300] or '(no text: the untrained model ends at once)'}\n"
        f"--- written at step {step} (after training):\n"
        f"{render(parse_target(first['text']))}\n"
    )
    print(
        f"recipe metrics at step {step} on {len(details)} held-out recipes "
        "(greedy, docs/monitoring.md: Recipe metrics): "
        f"{format_metrics(metrics)}"
    )


def entry() -> None:
    run_cli(_main_to_the_end)


def _main_to_the_end(argv=None) -> int:
    """``main`` for the command line: once a stop's checkpoint is committed the process is on its way
    out with exit 75, and a further SIGTERM / Ctrl+C must not turn that into 143 / 130 after the line
    saying 75 (the trainer's handlers are already given back by then)."""
    try:
        return main(argv)
    except Preempted:
        for sig in stop_signals():
            signal.signal(sig, signal.SIG_IGN)
        raise
