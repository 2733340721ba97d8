"""The throughput contenders: our trainer and Hugging Face's ``Seq2SeqTrainer``, each instrumented to time
its window the same way (``throughput_plan.Run``), each run in a fresh process. What they are compared
on: ``bench/throughput.py``'s docstring."""

from __future__ import annotations

import shutil
import sys

import torch

from chef_genius.data.tokenized import LABEL_PAD, load_tokenized
from chef_genius.train.data_setup import EVAL_BATCH_FACTOR

from .throughput_plan import EPOCHS, EVAL_SPLIT, LEARNING_RATE, SAVE_LIMIT, SEED, Plan, Run


def run_ours(plan: Plan, name: str, budget: bool, attempt: int) -> dict:
    """Our trainer, in this process, with its flags for this plan; timed from outside by wrapping its
    step and periodic helpers (they only read the clock and the CPU batches)."""
    from chef_genius.train.config import parse_args
    from chef_genius.train.trainer import Trainer

    p = plan.profile
    output = plan.work / f"{name}-{attempt}"
    first, last, every = plan.window(name)
    stop = last + 1 if plan.epochs else last
    flags = [
        "--data",
        str(plan.data),
        "--pretrained-model",
        str(plan.model),
        "--model-output",
        str(output),
        "--cache-dir",
        str(plan.cache),
        "--epochs",
        str(EPOCHS + 1 if plan.epochs else 1000),
        "--max-steps",
        str(stop),
        "--learning-rate",
        str(LEARNING_RATE),
        "--warmup-steps",
        "0",
        "--seed",
        str(SEED),
        "--eval-split-ratio",
        str(EVAL_SPLIT),
        "--eval-max-samples",
        str(p.eval_max_samples),
        "--eval-steps",
        str(every),
        "--save-steps",
        str(every),
        "--logging-steps",
        str(every),
        "--save-total-limit",
        str(SAVE_LIMIT),
        "--eval-samples",
        "0",
        "--max-source-length",
        str(p.max_source),
        "--max-target-length",
        str(p.max_target),
        "--dataloader-num-workers",
        str(p.workers),
        "--mixed-precision",
        "bf16" if p.bf16 else "no",
        "--progress",
        "log",
        "--compile" if p.compile else "--disable-compilation",
        "--dedup",
        "off",
    ]  # the same rows as the baseline's split: a speed comparison
    flags += ["--max-tokens-per-batch", str(plan.max_tokens)] if budget else ["--batch-size", str(p.batch_size)]
    run = Run(name, first, last, every)
    trainer = Trainer(parse_args(flags))
    try:
        trainer.setup()
        _instrument_ours(trainer, run)
        trainer.train()
    finally:
        trainer.close()
    shutil.rmtree(output, ignore_errors=True)
    return run.result(trainer.model_config)


def _instrument_ours(trainer, run: Run) -> None:
    step, evaluate = trainer._step, trainer.maybe_evaluate
    save, after_step = trainer.checkpoints.save, trainer._after_step

    def timed_step(window):
        if run.timed(trainer.state.global_step + 1):
            for b in window:
                run.batch(b["input_ids"], b["attention_mask"], b["labels"])
        return step(window)

    def timed_save(*args, **kwargs):
        return run.periodic("save", trainer.state.global_step, save, *args, **kwargs)

    def marked_after_step(*args, **kwargs):
        # after the step's periodic work (log, evaluate, save): what the window's end includes
        went_on = after_step(*args, **kwargs)
        run.mark(trainer.state.global_step)
        return went_on

    trainer._step = timed_step
    trainer.maybe_evaluate = lambda *a, **k: (
        run.periodic("eval", trainer.state.global_step, evaluate, *a, **k)
        if run.due(trainer.state.global_step)
        else evaluate(*a, **k)
    )
    trainer.checkpoints.save = timed_save
    trainer._after_step = marked_after_step


def run_seq2seq_trainer(plan: Plan, name: str, same_batches: bool, attempt: int) -> dict:
    """``Seq2SeqTrainer`` tuned; ``same_batches``: its sampler yields our epoch order instead of its
    own length grouping, so with the same batch size it steps on exactly our fixed batches."""
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    p = plan.profile
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(plan.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(plan.model, dtype=torch.float32)
    rows = load_tokenized(plan.data, tokenizer, p.max_source, p.max_target, plan.cache).dataset
    train, held_out = hf_dataset(rows, plan.train_rows), hf_dataset(rows, plan.eval_rows)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, pad_to_multiple_of=8, label_pad_token_id=LABEL_PAD)
    first, last, every = plan.window(name)
    stop = last + 1 if plan.epochs else last
    run = Run(name, first, last, every)
    order = plan.order

    class Timed(Seq2SeqTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            if run.timed(self.state.global_step + 1):
                run.batch(inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
            return super().training_step(model, inputs, num_items_in_batch)

        def _evaluate(self, *args, **kwargs):
            return run.periodic("eval", self.state.global_step, super()._evaluate, *args, **kwargs)

        def _save_checkpoint(self, *args, **kwargs):
            return run.periodic("save", self.state.global_step, super()._save_checkpoint, *args, **kwargs)

        def _maybe_log_save_evaluate(self, *args, **kwargs):
            super()._maybe_log_save_evaluate(*args, **kwargs)
            run.mark(self.state.global_step)

        def _get_train_sampler(self, train_dataset=None):
            if same_batches:
                return [int(i) for i in order]  # a sequence of indices is a sampler
            if isinstance(self.train_dataset, InMemoryRows):  # what it does with a datasets length column
                from transformers.trainer_pt_utils import LengthGroupedSampler

                return LengthGroupedSampler(
                    self.args.train_batch_size * self.args.gradient_accumulation_steps,
                    lengths=self.train_dataset.lengths,
                )
            return super()._get_train_sampler(train_dataset)

    workers = p.workers
    args = Seq2SeqTrainingArguments(
        output_dir=str(plan.work / f"{name}-{attempt}"),
        per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=p.batch_size * EVAL_BATCH_FACTOR,
        max_steps=stop,
        learning_rate=LEARNING_RATE,
        warmup_steps=0,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        max_grad_norm=1.0,
        seed=SEED,
        optim="adamw_torch_fused",
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        eval_strategy="steps",
        eval_steps=every,
        prediction_loss_only=True,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=SAVE_LIMIT,
        logging_strategy="steps",
        logging_steps=every,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,
        dataloader_pin_memory=cuda,
        bf16=p.bf16,
        torch_compile=p.compile and cuda,
        use_cpu=not cuda,
    )
    trainer = Timed(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        data_collator=collator,
        processing_class=tokenizer,
    )
    trainer.train()
    result = run.result(model.config)
    del trainer
    shutil.rmtree(plan.work / f"{name}-{attempt}", ignore_errors=True)
    return result


class InMemoryRows(torch.utils.data.Dataset):
    """The baseline's rows where ``datasets`` is not installed (the GPU machine): dicts of input_ids and
    labels, with the source + target length of each for its length-grouped sampler."""

    def __init__(self, rows, indices):
        self.rows = [rows[int(i)] for i in indices]
        self.lengths = [r["source_len"] + r["target_len"] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.rows[i]["input_ids"], "labels": self.rows[i]["labels"]}


def hf_dataset(rows, indices):
    """Rows ``indices`` of the cache (an ``ArrowRows``) as a careful ``Seq2SeqTrainer`` user feeds them: a
    ``datasets.Dataset`` of the same Arrow files with a ``length`` column (source + target tokens) for
    ``group_by_length``; without ``datasets``, the same rows in memory (``InMemoryRows``)."""
    try:
        import datasets
    except ImportError:
        return InMemoryRows(rows, indices)
    datasets.disable_progress_bars()
    opened = [datasets.Dataset.from_file(str(path)) for path in rows.paths]
    table = opened[0] if len(opened) == 1 else datasets.concatenate_datasets(opened)
    table = table.map(
        lambda b: {"length": [s + t for s, t in zip(b["source_len"], b["target_len"])]}, batched=True
    ).remove_columns(["source_len", "target_len", "source_full_len", "target_full_len"])
    return table.select(indices)


def run_in_process(plan: Plan, name: str, attempt: int) -> dict:
    if name in ("ours_fixed", "ours_fixed_epochs"):
        return run_ours(plan, name, budget=False, attempt=attempt)
    if name == "ours_token_budget":
        return run_ours(plan, name, budget=True, attempt=attempt)
    return run_seq2seq_trainer(plan, name, same_batches=name == "hf_same_batches", attempt=attempt)


def run_contender(plan: Plan, name: str, attempt: int) -> dict:
    """One run in a fresh process, so nothing carries over from the previous contender (accelerate's
    process-wide state, CUDA memory and its peak, torch.compile caches, loader workers). On a CPU-only
    machine the process is forked from this one (no second import of torch and transformers, which
    costs seconds); where CUDA is available, spawned (a forked child cannot use CUDA)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn" if torch.cuda.is_available() else "fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(plan, name, attempt, send), name=f"bench-{name}")
    child.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = None
    child.join()
    if child.exitcode != 0 or result is None:
        raise RuntimeError(
            f"throughput contender {name} (run {attempt + 1}) failed (exit code {child.exitcode}); "
            "its traceback is above"
        )
    return result


def _child(plan: Plan, name: str, attempt: int, send) -> None:
    import contextlib

    from chef_genius.model.loading import quiet_transformers

    quiet_transformers()
    if plan.profile.threads:
        torch.set_num_threads(plan.profile.threads)
    with contextlib.redirect_stdout(sys.stderr):  # the parent's stdout is for the JSON lines only
        result = run_in_process(plan, name, attempt)
    send.send(result)
    send.close()
