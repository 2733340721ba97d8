"""The demo learns: its own settings, on the bundled sample, on CPU, write recipes worth reading.

One demo run (about a minute of CPU) is shared by the tests of this module."""

from __future__ import annotations

import json

import pytest

from chef_genius.train.cli import main

pytestmark = pytest.mark.slow  # trains the demo model for 480 steps


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    import contextlib
    import io

    root = tmp_path_factory.mktemp("demo")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "--demo",
                "--model-output",
                str(root / "demo"),
                "--pretrained-model",
                str(root / "demo-t5"),
                "--cache-dir",
                str(root / "cache"),
                "--progress",
                "log",
            ]
        )
    records = [json.loads(line) for line in (root / "demo" / "metrics.jsonl").read_text().splitlines()]
    return code, out.getvalue(), records, root


def test_the_demo_model_writes_valid_recipes_from_held_out_ingredients(demo_run):
    code, printed, records, _ = demo_run
    assert code == 0
    final = [r for r in records if r["type"] == "generation"][-1]
    assert final["step"] == max(r["step"] for r in records if r["type"] == "train")
    assert final["recipes"] == 20  # every held-out recipe of the demo, none trained on
    # Measured with these settings (greedy, repetition penalty 1.15, no repeated 10-token span): structure_valid
    # 1.00, ingredient_coverage 0.68 at seed 42; 0.95 / 0.64 and 0.85 / 0.64 at seeds 1 and 2 (README: "What
    # the demo shows"); plain greedy gave 0.70 / 0.61 at seed 42.
    assert final["structure_valid"] >= 0.8
    assert final["ingredient_coverage"] >= 0.5


def test_the_demo_shows_a_recipe_before_and_after_training_and_the_metrics(demo_run):
    _, printed, _, _ = demo_run
    assert "(before training)" in printed and "(after training)" in printed
    assert "structure_valid" in printed and "ingredient_coverage" in printed
    before, after = printed.split("(before training):")[1].split("(after training):")
    assert "Ingredients:" in after and "  - " in after  # rendered: a title and an ingredient list at least
    assert "Ingredients:" not in before  # the untrained model writes no recipe


def test_the_demo_model_loads_with_from_pretrained_without_a_tie_warning(demo_run, caplog):
    from transformers import T5ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    *_, root = demo_run
    hf_logging.set_verbosity_warning()
    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            T5ForConditionalGeneration.from_pretrained(root / "demo")
    finally:
        hf_logging.disable_propagation()
    assert "tie_word_embeddings" not in caplog.text
