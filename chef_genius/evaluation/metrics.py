"""Recipe metrics: how good a generated recipe is, as pure functions of text (docs/monitoring.md, "Recipe metrics").

General text overlap comes from well-kept libraries (``rouge-score`` for ROUGE-L, ``sacrebleu`` for
BLEU; neither downloads anything). The recipe-specific ones are defined here:

- ``ingredient_coverage``: the share of the given ingredients that the generated recipe uses, i.e.
  whose words appear, as a phrase, in its ingredient lines or directions (the title does not count);
- ``invented_ingredients``: the generated ingredient lines that mention none of the given ingredients;
- ``structure_valid``: the text parses back, with the project's own parser (``data/recipes.py``),
  into a title, at least one ingredient and numbered directions, and writing that recipe back out
  gives the same text (nothing lost: no stray text, no empty items, steps numbered 1, 2, 3...);
- ``repetition``: the share of the text's word n-grams (n = ``REPETITION_N``) that repeat an earlier one;
- ``step_loops``: short loops inside one step: the share of word bigrams (n = ``LOOP_N``) of each
  direction, ingredient line and the title that repeat an earlier bigram of the same piece
  ("d tomatoes, d tomatoes, d tomatoes": 0.6). ``repetition``'s 4-grams miss such short loops once
  generation bans repeated long spans; a phrase repeated across steps ("salt and pepper") is no loop.

Matching is on normalised words: lower case, letters and digits only, a plural "s" / "es" dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chef_genius.data.recipes import format_target, parse_target

REPETITION_N = 4
LOOP_N = 2
METRICS = (
    "rouge_l",
    "bleu",
    "ingredient_coverage",
    "invented_ingredients",
    "structure_valid",
    "repetition",
    "step_loops",
)
HIGHER_IS_BETTER = {
    "rouge_l": True,
    "bleu": True,
    "ingredient_coverage": True,
    "invented_ingredients": False,
    "structure_valid": True,
    "repetition": False,
    "step_loops": False,
}
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Normalised words: lower case, alphanumeric runs, a trailing plural "es" / "s" removed."""
    return [_singular(w) for w in _WORD.findall(text.lower())]


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith(("ches", "shes", "oes", "xes", "sses")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _contains(haystack: list[str], phrase: list[str]) -> bool:
    n = len(phrase)
    return n > 0 and any(haystack[i : i + n] == phrase for i in range(len(haystack) - n + 1))


def structure_valid(text: str) -> bool:
    recipe = parse_target(text)
    if not (recipe.title and recipe.ingredients and recipe.directions):
        return False
    return format_target(recipe) == " ".join(text.split())


def _body_words(text: str) -> list[str]:
    """The words of the ingredient lines and directions; the whole text when it has no structure."""
    recipe = parse_target(text)
    if not recipe.ingredients and not recipe.directions:
        return words(text)
    return words(" ; ".join(recipe.ingredients) + " ; " + " ".join(recipe.directions))


def ingredient_coverage(text: str, given: list[str]) -> float:
    """Share of ``given`` ingredients used in the recipe ``text`` (1.0 when nothing was given)."""
    phrases = [words(name) for name in given]
    phrases = [p for p in phrases if p]
    if not phrases:
        return 1.0
    body = _body_words(text)
    return sum(_contains(body, p) for p in phrases) / len(phrases)


def invented_ingredients(text: str, given: list[str]) -> list[str]:
    """The recipe's ingredient lines that mention none of the ``given`` ingredients."""
    phrases = [p for p in (words(name) for name in given) if p]
    return [line for line in parse_target(text).ingredients if not any(_contains(words(line), p) for p in phrases)]


def repetition(text: str, n: int = REPETITION_N) -> float:
    """Share of word n-grams that already occurred earlier in ``text`` (0.0 for fewer than n words)."""
    tokens = _WORD.findall(text.lower()) if text else []
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def step_loops(text: str, n: int = LOOP_N) -> float:
    """Share of word n-grams of each step, ingredient line and the title that repeat an earlier n-gram
    of the same piece (the whole text when it has no structure; 0.0 without any n-gram)."""
    recipe = parse_target(text)
    pieces = (
        [recipe.title, *recipe.ingredients, *recipe.directions] if (recipe.ingredients or recipe.directions) else [text]
    )
    total = repeated = 0
    for piece in pieces:
        tokens = _WORD.findall(piece.lower())
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    return repeated / total if total else 0.0


@dataclass
class RecipeScore:
    """One generated recipe's scores."""

    rouge_l: float
    ingredient_coverage: float
    invented: list[str]
    structure_valid: bool
    repetition: float
    step_loops: float


_ROUGE = None


def rouge_l(generated: str, reference: str) -> float:
    """ROUGE-L F-measure (``rouge-score``, no stemming) between the two one-line texts."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return _ROUGE.score(reference, generated)["rougeL"].fmeasure


def bleu(generated: list[str], references: list[str]) -> float:
    """Corpus BLEU (``sacrebleu``, its default 13a tokenizer), on sacreBLEU's 0-100 scale."""
    import sacrebleu

    if not generated:
        return 0.0
    return sacrebleu.corpus_bleu(generated, [references]).score


def score_recipe(generated: str, given: list[str], reference: str) -> RecipeScore:
    return RecipeScore(
        rouge_l=rouge_l(generated, reference),
        ingredient_coverage=ingredient_coverage(generated, given),
        invented=invented_ingredients(generated, given),
        structure_valid=structure_valid(generated),
        repetition=repetition(generated),
        step_loops=step_loops(generated),
    )


def score_recipes(generated: list[str], given: list[list[str]], references: list[str]) -> dict:
    """Every metric of ``METRICS``, averaged over the recipes (BLEU: one corpus score)."""
    if not (len(generated) == len(given) == len(references)):
        raise ValueError("generated, given and references must have one entry per recipe")
    scores = [score_recipe(g, i, r) for g, i, r in zip(generated, given, references)]
    n = max(len(scores), 1)
    return {
        "rouge_l": sum(s.rouge_l for s in scores) / n,
        "bleu": bleu(generated, references),
        "ingredient_coverage": sum(s.ingredient_coverage for s in scores) / n,
        "invented_ingredients": sum(len(s.invented) for s in scores) / n,
        "structure_valid": sum(s.structure_valid for s in scores) / n,
        "repetition": sum(s.repetition for s in scores) / n,
        "step_loops": sum(s.step_loops for s in scores) / n,
    }
