"""Training throughput: our trainer vs Seq2SeqTrainer (default, group_by_length) vs a bare loop.

Every contender trains the same model folder on the same tokenized data (variable-length recipes),
with the same batch size, step count and seed, in this one process. Throughput is real (non-padding)
target tokens per second over the timed steps (after ``warmup_steps`` untimed ones).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from chef_genius.data.tokenized import LABEL_PAD, Collator, RecipeDataset, load_tokenized
from chef_genius.data.sampler import ResumableBatchSampler

from .common import Profile, train_flags

log = logging.getLogger("bench")
SEED = 42


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_ours(profile: Profile, model: Path, data: Path, work: Path, cache: Path) -> dict:
    from chef_genius.train.cli import main

    output = work / "ours"
    assert main(train_flags(profile, model, data, output, cache)) == 0
    windows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    timed = [w for w in windows if w["type"] == "train"][1:]  # the first window is the warm-up
    tokens, seconds = sum(w["tokens"] for w in timed), sum(w["seconds"] for w in timed)
    mfus = [w["mfu"] for w in timed if w.get("mfu") is not None]
    return {"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds,
            "mfu": sum(mfus) / len(mfus) if mfus else None,
            "tflops_per_s": sum(w["tflops_per_s"] * w["seconds"] for w in timed) / seconds}


def run_seq2seq_trainer(profile: Profile, model_dir: Path, data: Path, work: Path, cache: Path,
                        strategy: str = "random") -> dict:
    from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer,
                              Seq2SeqTrainingArguments, TrainerCallback)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenized = load_tokenized(data, tokenizer, profile.max_source, profile.max_target, cache).dataset
    dataset = tokenized.map(lambda b: {"length": [s + t for s, t in zip(b["source_len"], b["target_len"])]},
                            batched=True).remove_columns(["source_len", "target_len"])
    counts = []
    inner = DataCollatorForSeq2Seq(tokenizer, model=model)

    def collate(features):
        batch = inner(features)
        counts.append(int((batch["labels"] != LABEL_PAD).sum()))
        return batch

    marks = {}
    first, last = profile.warmup_steps, profile.warmup_steps + profile.timed_steps

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (first, last):
                _sync()
                marks[state.global_step] = time.perf_counter()

    args = Seq2SeqTrainingArguments(
        output_dir=str(work / f"hf-{strategy}"), per_device_train_batch_size=profile.batch_size,
        max_steps=last, learning_rate=1e-4, warmup_steps=0, seed=SEED, logging_strategy="no",
        save_strategy="no", report_to="none", disable_tqdm=True, bf16=profile.bf16,
        use_cpu=not torch.cuda.is_available(), train_sampling_strategy=strategy)
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate,
                             callbacks=[Clock()])
    trainer.train()
    tokens = sum(counts[first:last])
    seconds = marks[last] - marks[first]
    return {"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds}


def run_bare_loop(profile: Profile, model_dir: Path, data: Path, cache: Path) -> dict:
    """forward / backward / clip / AdamW step on the batches our sampler makes, built beforehand."""
    from chef_genius.model.loading import load_model, load_tokenizer, make_optimizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(str(model_dir))
    torch.manual_seed(SEED)
    model = load_model(model_dir).to(device)
    model.train()
    dataset = RecipeDataset(load_tokenized(data, tokenizer, profile.max_source, profile.max_target, cache).dataset)
    sampler = ResumableBatchSampler(len(dataset), profile.batch_size, SEED, dataset.lengths(), 1024)
    collate = Collator(tokenizer.pad_token_id, model.config.decoder_start_token_id)
    steps = profile.warmup_steps + profile.timed_steps
    batches = []
    for indices in sampler:
        batches.append(collate([dataset[i] for i in indices]))
        if len(batches) == steps:
            break
    if profile.compile:
        model = torch.compile(model, dynamic=True)
    optimizer = make_optimizer(model, 1e-4, 0.01, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=profile.bf16)
    tokens = 0
    for step, batch in enumerate(batches):
        if step == profile.warmup_steps:
            _sync()
            started = time.perf_counter()
        count = int((batch["labels"] != LABEL_PAD).sum())
        if step >= profile.warmup_steps:
            tokens += count
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=batch["decoder_input_ids"]).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=LABEL_PAD,
                               reduction="sum") / count
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync()
    seconds = time.perf_counter() - started
    return {"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds}


def throughput_records(profile: Profile, model: Path, data: Path, work: Path, cache: Path) -> list[dict]:
    ours = run_ours(profile, model, data, work, cache)
    bare = run_bare_loop(profile, model, data, cache)  # right after ours: the machine's load drifts
    hf = run_seq2seq_trainer(profile, model, data, work, cache, "random")
    hf_grouped = run_seq2seq_trainer(profile, model, data, work, cache, "group_by_length")
    setting = {"batch_size": profile.batch_size, "timed_steps": profile.timed_steps,
               "warmup_steps": profile.warmup_steps, "bf16": profile.bf16, "compile_ours": profile.compile,
               "rows": profile.rows, "model": profile.model_config}
    common = dict(unit="target tokens/s", setting=setting, ours_detail=ours)
    return [
        dict(name="throughput_vs_seq2seqtrainer", ours=ours["tokens_per_s"], baseline=hf["tokens_per_s"],
             target=">= 1.5", baseline_detail=hf, **common),
        dict(name="throughput_vs_seq2seqtrainer_grouped", ours=ours["tokens_per_s"],
             baseline=hf_grouped["tokens_per_s"], target=">= 1.1", baseline_detail=hf_grouped, **common),
        dict(name="loop_efficiency", ours=ours["tokens_per_s"], baseline=bare["tokens_per_s"], target=">= 0.95",
             baseline_detail=bare, **common),
    ]
