"""Writing recipes with a trained model: the shared generation call, and the samples of each evaluation.

Generation builds the model input as training did: the run's ``--source-template`` filled by
``recipes.source_from_ingredients`` (or a prompt given as is), and turns the model's one-line output
back into a recipe (``recipes.parse_target``).

The samples logged at each evaluation are greedy and short, made on the main process only (under
FSDP on every process, ``synced``), and never touch the training RNG streams
(``torch.random.fork_rng``), so a run with samples resumes bit for bit like one without.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from collections.abc import Callable

import torch

from chef_genius.data.recipes import DEFAULT_SOURCE_TEMPLATE, clean, parse_target, render, source_from_ingredients

SAMPLE_INGREDIENTS = (
    "chicken, rice, garlic",
    "flour, butter, sugar, eggs",
    "tomatoes, basil, mozzarella, olive oil",
    "potatoes, onion, cheddar cheese",
    "salmon, lemon, dill",
)
SAMPLE_TITLES = (
    "Garlic chicken and rice",
    "Butter cookies",
    "Caprese salad",
    "Cheesy potato bake",
    "Lemon dill salmon",
)  # for a --source-template that uses {title}
SAMPLE_MAX_NEW_TOKENS = 128
# Against greedy loops ("1 tbsp. honey ; 1 tbsp. honey ; ..."): a token already written scores 1.15
# times lower (transformers' repetition penalty) and no span of 10 tokens is written twice (a recipe
# rarely repeats 10 tokens on purpose; a loop always does, and the span ban also ends the one-token
# loops the penalty alone leaves, "a a a a"). Greedy and deterministic still. On the demo's 20 held-out
# recipes over 3 seeds they raised structure_valid from 0.45-0.70 to 0.85-1.0 and ingredient coverage
# from 0.50-0.61 to 0.64-0.68 (docs/training-and-data.md: "The demo"). They are the default decoding everywhere
# (generate_recipe.py, the recipe metrics during and after training, the samples), so the metrics
# measure what a user gets; 1.0 and 0 turn them off.
REPETITION_PENALTY = 1.15
NO_REPEAT_NGRAM_SIZE = 10


@dataclass
class GenerationSettings:
    """Decoding settings; the defaults (greedy with a repetition penalty of 1.15 and no repeated 10-token
    span, up to 384 new tokens, ending at the model's end-of-text token) finish in seconds for the tiny
    model on CPU and fit 95 % of the sample's recipes."""

    max_new_tokens: int = 384
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    num_return_sequences: int = 1
    no_repeat_ngram_size: int = NO_REPEAT_NGRAM_SIZE
    repetition_penalty: float = REPETITION_PENALTY

    def generate_kwargs(self) -> dict:
        kwargs = dict(
            max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams,
            do_sample=self.do_sample,
            num_return_sequences=self.num_return_sequences,
            repetition_penalty=self.repetition_penalty,
        )
        if self.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    ingredient_lists: list[str],
    settings: GenerationSettings,
    device: torch.device,
    autocast=contextlib.nullcontext,
    max_source_length: int = 256,
    template: str = DEFAULT_SOURCE_TEMPLATE,
    sources: list[str] | None = None,
    synced: bool = False,
    stop: Callable[[], bool] | None = None,
) -> list[list[str]]:
    """For each ingredient list, ``num_return_sequences`` generated one-line recipe texts; ``sources``
    given: those model inputs as they are (``--prompt``) instead of the template filled.

    ``synced``: every process of a sharded (FSDP) model makes this call together. Each forward then
    gathers the parameters from all of them, so a process whose recipes end early must keep stepping
    until every process is done (transformers' ``synced_gpus``), or the others wait for it forever.
    ``stop``: read after every generated token; once true the call ends early (the texts are cut
    short: the caller that asked to stop discards them)."""
    if sources is None:
        sources = [source_from_ingredients(text, template) for text in ingredient_lists]
    batch = tokenizer(sources, return_tensors="pt", padding=True, truncation=True, max_length=max_source_length)
    batch = {k: v.to(device) for k, v in batch.items()}
    extra = {} if stop is None else {"stopping_criteria": _stopping(stop)}
    with autocast():
        out = model.generate(**batch, **settings.generate_kwargs(), synced_gpus=synced, **extra)
    texts = [clean(text) for text in tokenizer.batch_decode(out, skip_special_tokens=True)]
    n = settings.num_return_sequences
    return [texts[i * n : (i + 1) * n] for i in range(len(sources))]


def _stopping(stop: Callable[[], bool]):
    """transformers' stopping criteria that end every sequence of a ``generate`` call once ``stop()``."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhen(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:  # a bool tensor, one per sequence
            return torch.full((input_ids.shape[0],), bool(stop()), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopWhen()])


def recipe_dict(text: str) -> dict:
    recipe = parse_target(text)
    return {"title": recipe.title, "ingredients": recipe.ingredients, "directions": recipe.directions, "raw": text}


def render_text(text: str) -> str:
    return render(parse_target(text))


def eval_samples(
    model,
    tokenizer,
    device: torch.device,
    count: int,
    autocast=contextlib.nullcontext,
    template: str = DEFAULT_SOURCE_TEMPLATE,
    synced: bool = False,
) -> list[dict]:
    """Greedy, short generations from the first ``count`` fixed ingredient lists (and titles), their
    inputs built by the run's ``template``; ``synced``: as in ``generate_texts``.

    The model is put in eval mode and back; every RNG stream is saved and restored around the call.
    """
    ingredients = list(SAMPLE_INGREDIENTS[:count])
    sources = [source_from_ingredients(text, template, title) for text, title in zip(ingredients, SAMPLE_TITLES)]
    settings = GenerationSettings(max_new_tokens=SAMPLE_MAX_NEW_TOKENS, num_beams=1)
    devices = [device.index or 0] if device.type == "cuda" else []
    was_training = model.training
    with torch.random.fork_rng(devices=devices):
        model.eval()
        try:
            texts = generate_texts(
                model, tokenizer, ingredients, settings, device, autocast, sources=sources, synced=synced
            )
        finally:
            model.train(was_training)
    return [
        {"ingredients": given, "prompt": source, "text": generated[0]}
        for given, source, generated in zip(ingredients, sources, texts)
    ]
