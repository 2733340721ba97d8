"""The recipe metrics on hand-made recipes: each number is what README's definition says it is."""

from __future__ import annotations

import pytest

from chef_genius.data.recipes import Recipe, format_target
from chef_genius.evaluation import metrics as m

GOOD = format_target(
    Recipe(
        "Garlic Rice",
        ["2 c. rice", "3 cloves garlic", "1 tbsp. butter"],
        ["Rinse the rice.", "Fry the garlic in the butter.", "Cook the rice in it."],
    )
)


def test_a_well_formed_recipe_is_valid_and_broken_ones_are_not():
    assert m.structure_valid(GOOD)
    assert m.structure_valid("  " + GOOD.replace(" ", "  ") + " ")  # spacing is not structure
    assert not m.structure_valid("Title::: 1 ; ; ; ; ; ;")  # the untrained demo's output
    assert not m.structure_valid(GOOD.split(" Directions:")[0])  # no directions
    assert not m.structure_valid(GOOD.replace("Ingredients:", "Stuff:"))  # no ingredient list
    assert not m.structure_valid(GOOD.replace("Title: Garlic Rice", "Title:"))  # no title
    assert not m.structure_valid(GOOD.replace("1. Rinse", "2. Rinse"))  # steps not numbered from 1
    assert not m.structure_valid(GOOD.replace("1. Rinse", "Rinse"))  # directions not numbered
    assert not m.structure_valid(GOOD.replace(" ; 3 cloves", " ; ; 3 cloves"))  # an empty ingredient


def test_coverage_counts_given_ingredients_used_in_ingredients_or_directions_not_the_title():
    assert m.ingredient_coverage(GOOD, ["rice", "garlic", "butter"]) == 1.0
    assert m.ingredient_coverage(GOOD, ["Rice", "garlic", "salmon", "dill"]) == 0.5
    assert m.ingredient_coverage(GOOD, ["clove"]) == 1.0  # "cloves" is the plural of "clove"
    assert m.ingredient_coverage(GOOD, ["olive oil", "ice"]) == 0.0  # words, not substrings ("rice")
    titled = format_target(Recipe("Salmon Surprise", ["2 c. rice"], ["Cook the rice."]))
    assert m.ingredient_coverage(titled, ["salmon", "rice"]) == 0.5  # a title is not a use
    assert m.ingredient_coverage(GOOD, []) == 1.0


def test_invented_ingredients_are_the_lines_that_mention_nothing_given():
    assert m.invented_ingredients(GOOD, ["rice", "garlic", "butter"]) == []
    assert m.invented_ingredients(GOOD, ["rice"]) == ["3 cloves garlic", "1 tbsp. butter"]
    assert m.invented_ingredients("no structure at all", ["rice"]) == []


def test_repetition_is_the_share_of_repeated_word_ngrams():
    assert m.repetition("a b c d e f g") == 0.0
    assert m.repetition("a b c d a b c d") == pytest.approx(1 / 5)  # 5 4-grams, "a b c d" once again
    assert m.repetition("x x x x x x x x x x x x x") == pytest.approx(9 / 10)
    assert m.repetition("too short") == 0.0
    assert m.repetition(GOOD) == 0.0


def test_overlap_scores_come_from_rouge_score_and_sacrebleu():
    assert m.rouge_l(GOOD, GOOD) == pytest.approx(1.0)
    assert m.bleu([GOOD], [GOOD]) == pytest.approx(100.0)
    half = "Title: Garlic Rice Ingredients: 2 c. rice"
    assert 0.0 < m.rouge_l(half, GOOD) < 1.0
    assert m.rouge_l("salmon dill lemon", GOOD) == 0.0


def test_score_recipes_averages_over_recipes():
    scores = m.score_recipes([GOOD, "Title::: 1 ; ; ; ;"], [["rice", "garlic"], ["rice", "salmon"]], [GOOD, GOOD])
    assert set(scores) == set(m.METRICS)
    assert scores["structure_valid"] == 0.5
    assert scores["ingredient_coverage"] == pytest.approx(0.5)  # (1.0 + 0.0) / 2
    assert scores["invented_ingredients"] == pytest.approx(0.5)  # "1 tbsp. butter" once, nothing in the other
    with pytest.raises(ValueError):
        m.score_recipes([GOOD], [], [GOOD])


def test_a_hub_name_offline_fails_at_once_with_one_sentence(monkeypatch):
    import time
    from chef_genius.errors import UserError
    from chef_genius.model import hub, loading
    import huggingface_hub  # noqa: F401  (imported before the clock starts: the machine may be busy)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(UserError, match="not a local folder and not in the download cache, and HF_HUB_OFFLINE"):
        loading.load_tokenizer("chef-genius-tests/no-such-model")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "_hub_answers", lambda endpoint: False)
    with pytest.raises(UserError, match="cannot be reached"):
        loading.load_model("chef-genius-tests/no-such-model")
    assert time.perf_counter() - started < 5


def test_training_with_a_hub_name_offline_fails_before_loading_torch_or_transformers(tmp_path):
    import os
    import subprocess
    import sys
    from conftest import REPO

    script = (
        "import sys\n"
        "from chef_genius.errors import UserError\n"
        "from chef_genius.train.cli import main\n"
        "try:\n"
        "    main(['--data', sys.argv[1], '--pretrained-model', 'chef-genius-tests/no-such-model',\n"
        "          '--model-output', sys.argv[2]])\n"
        "except UserError as err:\n"
        "    print('refused:', err)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script, str(REPO / "data" / "sample_recipes.csv"), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("refused: 'chef-genius-tests/no-such-model' is not a local folder")
    assert lines[1] == "[]"


def test_short_loops_inside_a_step_are_scored_as_looping():
    looping = format_target(
        Recipe(
            "Tomato Soup",
            ["4 tomatoes", "2 cloves garlic"],
            ["Chop the d tomatoes, d tomatoes, d tomatoes, d tomatoes.", "Add garlic s garlic s garlic s garlic."],
        )
    )
    assert m.structure_valid(looping)  # the structure is fine: only the new metric sees it
    assert m.repetition(looping) < 0.35
    assert m.step_loops(looping) > 0.4
    assert m.step_loops(GOOD) == 0.0
    # a phrase repeated across steps is no loop
    across = format_target(Recipe("Rice", ["2 c. rice"], ["Add salt and pepper.", "Stir, add salt and pepper."]))
    assert m.step_loops(across) == 0.0
    assert m.step_loops("d tomatoes, d tomatoes, d tomatoes") == pytest.approx(3 / 5)  # no structure: the text
    scores = m.score_recipes([looping, GOOD], [["tomatoes"], ["rice"]], [GOOD, GOOD])
    assert scores["step_loops"] == pytest.approx(m.step_loops(looping) / 2)
    assert not m.HIGHER_IS_BETTER["step_loops"] and "step_loops" in m.METRICS


def test_step_loops_can_choose_the_best_checkpoint():
    from chef_genius.train.config import build_parser
    from chef_genius.train.evaluation import is_better

    assert build_parser().parse_args(["--metric-for-best", "step_loops"]).metric_for_best == "step_loops"
    assert is_better("step_loops", 0.1, 0.3) and not is_better("step_loops", 0.3, 0.1)
