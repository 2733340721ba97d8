"""Held-out recipes and scoring a model on them: generate (greedy, batched, bounded), then score.

The held-out recipes are rows of a tokenized dataset (the run's validation split, or ``--data``):
the given ingredients and the reference recipe are read back from the tokens, so any file the
trainer accepts can be scored, and scoring sees exactly what validation loss saw.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from chef_genius.data.recipes import SOURCE_PREFIX, clean
from chef_genius.evaluation.metrics import score_recipe, score_recipes

EVAL_MAX_NEW_TOKENS = 256
EVAL_BATCH_SIZE = 16


@dataclass
class HeldOut:
    ingredients: list[str]   # the given ingredients
    reference: str           # the recipe as written in the data (one line)

    @property
    def ingredient_text(self) -> str:
        return ", ".join(self.ingredients)


def held_out(dataset, tokenizer, count: int | None = None) -> list[HeldOut]:
    """The first ``count`` rows (all when None) of a ``RecipeDataset`` as given ingredients + reference."""
    n = len(dataset) if count is None else min(count, len(dataset))
    examples = []
    for i in range(n):
        source_ids, label_ids = dataset[i]
        source = clean(tokenizer.decode(source_ids, skip_special_tokens=True))
        names = source.removeprefix(SOURCE_PREFIX.strip()).strip()
        examples.append(HeldOut([part.strip() for part in names.split(",") if part.strip()],
                                clean(tokenizer.decode(label_ids, skip_special_tokens=True))))
    return examples


@torch.no_grad()
def generate_for(model, tokenizer, examples: list[HeldOut], device: torch.device, max_new_tokens: int = EVAL_MAX_NEW_TOKENS,
                 batch_size: int = EVAL_BATCH_SIZE, autocast=contextlib.nullcontext, max_source_length: int = 256,
                 on_batch=None) -> list[str]:
    """Greedy recipes for ``examples``, ``batch_size`` at a time (``on_batch(done)`` after each batch).

    The caller owns RNG isolation and train/eval mode (see ``evaluate_model``)."""
    from chef_genius.model.generation import GenerationSettings, generate_texts
    settings = GenerationSettings(max_new_tokens=max_new_tokens, num_beams=1)
    texts: list[str] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        out = generate_texts(model, tokenizer, [e.ingredient_text for e in chunk], settings, device, autocast,
                             max_source_length)
        texts += [outs[0] for outs in out]
        if on_batch is not None:
            on_batch(len(texts))
    return texts


def evaluate_model(model, tokenizer, examples: list[HeldOut], device: torch.device, autocast=contextlib.nullcontext,
                   max_new_tokens: int = EVAL_MAX_NEW_TOKENS, batch_size: int = EVAL_BATCH_SIZE,
                   max_source_length: int = 256, on_batch=None) -> tuple[dict, list[dict]]:
    """(metrics, per-recipe details) of greedy generation on ``examples``.

    Every RNG stream is saved and restored around generation and the model's train/eval mode is
    restored, so calling this during training leaves a resumed run bit-identical."""
    devices = [device.index or 0] if device.type == "cuda" else []
    was_training = model.training
    started = time.perf_counter()
    with torch.random.fork_rng(devices=devices):
        model.eval()
        try:
            texts = generate_for(model, tokenizer, examples, device, max_new_tokens, batch_size, autocast,
                                 max_source_length, on_batch)
        finally:
            model.train(was_training)
    metrics = score_recipes(texts, [e.ingredients for e in examples], [e.reference for e in examples])
    metrics["generation_seconds"] = time.perf_counter() - started
    details = []
    for example, text in zip(examples, texts):
        s = score_recipe(text, example.ingredients, example.reference)
        details.append({"ingredients": example.ingredient_text, "text": text, "structure_valid": s.structure_valid,
                        "ingredient_coverage": s.ingredient_coverage, "invented": s.invented,
                        "repetition": s.repetition, "rouge_l": s.rouge_l})
    return metrics, details


def held_out_from_examples(examples) -> list[HeldOut]:
    """Given ingredients + reference of ``{"source", "target"}`` examples (``data.readers.read_examples``)."""
    out = []
    for example in examples:
        names = clean(example["source"]).removeprefix(SOURCE_PREFIX.strip()).strip()
        out.append(HeldOut([part.strip() for part in names.split(",") if part.strip()], clean(example["target"])))
    return out
