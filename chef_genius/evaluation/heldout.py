"""Held-out recipes and scoring a model on them: generate (greedy, batched, bounded), then score.

The held-out recipes are rows of a tokenized dataset (the run's validation split, or ``--data``):
the given ingredients and the reference recipe are read back from the tokens, so any file the
trainer accepts can be scored, and scoring sees exactly what validation loss saw. The model input
is the row's own source, built by the run's ``--source-template`` (``data/recipes.py``); the given
ingredients are read back out of it through that template (``ingredients_from_source``).
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass

import torch

from chef_genius.data.recipes import DEFAULT_SOURCE_TEMPLATE, clean, fill_template
from chef_genius.evaluation.metrics import score_recipe, score_recipes

EVAL_MAX_NEW_TOKENS = 256
EVAL_BATCH_SIZE = 16


@dataclass
class HeldOut:
    ingredients: list[str]  # the given ingredients
    reference: str  # the recipe as written in the data (one line)
    source: str = ""  # the model input as training built it (the run's --source-template); "" = build it

    def model_input(self, template: str = DEFAULT_SOURCE_TEMPLATE) -> str:
        return self.source or fill_template(template, self.ingredients)

    @property
    def ingredient_text(self) -> str:
        return ", ".join(self.ingredients)


def _template_pattern(template: str, open_end: bool = False) -> re.Pattern:
    """``template`` as a regex: its literal text escaped (spaces as any run of spaces), each field a group;
    ``open_end``: the last field takes the rest of the text (an input cut at --max-source-length)."""
    import string

    parts, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(template):
        words = clean(literal)
        if words:
            parts.append(r"\s*" + r"\s*".join(re.escape(word) for word in words.split(" ")) + r"\s*")
        if name is not None:
            parts.append(f"(?P<{name}>.*?)" if name not in seen else ".*?")
            seen.add(name)
    if open_end:
        parts[-1] = parts[-1].replace(".*?)", ".*)")
    return re.compile(r"\s*" + "".join(parts) + ("" if open_end else r"\s*$"), re.DOTALL)


def ingredients_from_source(source: str, template: str = DEFAULT_SOURCE_TEMPLATE) -> list[str]:
    """The comma-separated ingredients ``template`` put into the model input ``source`` (also when the
    input was cut short after them); the whole source when it does not fit the template (an input /
    output pair's own input), [] for a template without ``{ingredients}``."""
    source = clean(source)
    if "{ingredients}" not in template:
        return []
    match = _template_pattern(template).match(source)
    if match is None:
        head = template[: template.index("{ingredients}") + len("{ingredients}")]
        match = _template_pattern(head, open_end=True).match(source)
    names = match.group("ingredients") if match is not None else source
    return [part.strip() for part in names.split(",") if part.strip()]


def held_out(dataset, tokenizer, count: int | None = None, template: str = DEFAULT_SOURCE_TEMPLATE) -> list[HeldOut]:
    """The first ``count`` rows (all when None) of a ``RecipeDataset`` (built with ``template``) as given
    ingredients + reference, with the row's own model input."""
    n = len(dataset) if count is None else min(count, len(dataset))
    examples = []
    for i in range(n):
        source_ids, label_ids = dataset[i]
        source = clean(tokenizer.decode(source_ids, skip_special_tokens=True))
        examples.append(
            HeldOut(
                ingredients_from_source(source, template),
                clean(tokenizer.decode(label_ids, skip_special_tokens=True)),
                source,
            )
        )
    return examples


@torch.no_grad()
def generate_for(
    model,
    tokenizer,
    examples: list[HeldOut],
    device: torch.device,
    max_new_tokens: int = EVAL_MAX_NEW_TOKENS,
    batch_size: int = EVAL_BATCH_SIZE,
    autocast=contextlib.nullcontext,
    max_source_length: int = 256,
    on_batch=None,
    template: str = DEFAULT_SOURCE_TEMPLATE,
    decoding: dict | None = None,
    synced: bool = False,
    stop=None,
) -> list[str]:
    """Greedy recipes for ``examples``, ``batch_size`` at a time (``on_batch(done)`` after each batch;
    ``stop()``: read after each token, a true one cuts the batch short, see ``generate_texts``);
    ``decoding``: ``no_repeat_ngram_size`` / ``repetition_penalty`` other than the project's defaults;
    ``synced``: every process of a sharded model calls this with the same examples (``generate_texts``).

    The caller owns RNG isolation and train/eval mode (see ``evaluate_model``)."""
    from chef_genius.model.generation import GenerationSettings, generate_texts

    settings = GenerationSettings(max_new_tokens=max_new_tokens, num_beams=1, **(decoding or {}))
    texts: list[str] = []
    stopping = {} if stop is None else {"stop": stop}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        out = generate_texts(
            model,
            tokenizer,
            [e.ingredient_text for e in chunk],
            settings,
            device,
            autocast,
            max_source_length,
            template,
            sources=[e.model_input(template) for e in chunk],
            synced=synced,
            **stopping,
        )
        texts += [outs[0] for outs in out]
        if on_batch is not None:
            on_batch(len(texts))
    return texts


def evaluate_model(
    model,
    tokenizer,
    examples: list[HeldOut],
    device: torch.device,
    autocast=contextlib.nullcontext,
    max_new_tokens: int = EVAL_MAX_NEW_TOKENS,
    batch_size: int = EVAL_BATCH_SIZE,
    max_source_length: int = 256,
    on_batch=None,
    template: str = DEFAULT_SOURCE_TEMPLATE,
    decoding: dict | None = None,
    synced: bool = False,
    stop=None,
) -> tuple[dict, list[dict]]:
    """(metrics, per-recipe details) of greedy generation on ``examples``.

    Every RNG stream is saved and restored around generation and the model's train/eval mode is
    restored, so calling this during training leaves a resumed run bit-identical. ``template``: the run's
    ``--source-template``, for examples without their own model input; ``synced``: every process of a
    sharded (FSDP) model calls this with the same examples (``generation.generate_texts``)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    was_training = model.training
    started = time.perf_counter()
    with torch.random.fork_rng(devices=devices):
        model.eval()
        try:
            texts = generate_for(
                model,
                tokenizer,
                examples,
                device,
                max_new_tokens,
                batch_size,
                autocast,
                max_source_length,
                on_batch,
                template,
                decoding,
                synced,
                stop,
            )
        finally:
            model.train(was_training)
    metrics = score_recipes(texts, [e.ingredients for e in examples], [e.reference for e in examples])
    metrics["generation_seconds"] = time.perf_counter() - started
    details = []
    for example, text in zip(examples, texts):
        s = score_recipe(text, example.ingredients, example.reference)
        details.append(
            {
                "ingredients": example.ingredient_text,
                "text": text,
                "structure_valid": s.structure_valid,
                "ingredient_coverage": s.ingredient_coverage,
                "invented": s.invented,
                "repetition": s.repetition,
                "step_loops": s.step_loops,
                "rouge_l": s.rouge_l,
            }
        )
    return metrics, details


def held_out_from_examples(examples, template: str = DEFAULT_SOURCE_TEMPLATE) -> list[HeldOut]:
    """Given ingredients + reference of ``{"source", "target"}`` examples (``data.readers.read_examples``
    with the run's ``ReadOptions``: ``template`` is the ``--source-template`` that built the sources)."""
    return [
        HeldOut(
            ingredients_from_source(example["source"], template), clean(example["target"]), clean(example["source"])
        )
        for example in examples
    ]
