"""evaluate_recipes.py: held-out recipes with a twin in the model's training data are counted, and a
run's validation split is rebuilt as the run drew it (by content with --dedup, by row without)."""

from __future__ import annotations

import numpy as np

from chef_genius.data import corpus, dedup
from chef_genius.data.recipes import format_target, recipe_from_fields
from chef_genius.data.tokenized import split_indices
from chef_genius.devtools.planted import planted_recipes
from chef_genius.evaluation.cli import _validation_rows, trained_twins
from chef_genius.evaluation.heldout import held_out_from_examples


def _examples(n: int, copies: int):
    recipes, planted = planted_recipes(n, copies, seed=21)
    examples = [
        {
            "source": "Write a recipe with these ingredients: " + ", ".join(r["ner"]),
            "target": format_target(recipe_from_fields(r["title"], r["ingredients"], r["directions"])),
        }
        for r in recipes
    ]
    return examples, planted


def test_held_out_recipes_with_a_twin_in_training_are_counted(tmp_path):
    examples, planted = _examples(150, 15)
    result = dedup.deduplicate([e["target"] for e in examples])
    found = corpus.FileDedup("t.csv", np.arange(1, len(examples) + 1), [""] * len(examples), result)
    train, held = corpus.content_split(result.keys, result.kept, 0.2, seed=3)
    model = tmp_path / "model"
    model.mkdir()
    assert trained_twins(model, held_out_from_examples(examples[:5])) is None  # nothing recorded
    corpus.save_signatures(model, result.keys[train], found.sketches()[train], result.threshold)
    trained = set(train.tolist())
    copies = [examples[c] for c, o, kind in planted if o in trained and kind != "reworded"]
    twins = trained_twins(model, held_out_from_examples(copies))
    assert twins == {"count": len(copies), "of": len(copies), "threshold": dedup.DEFAULT_THRESHOLD}
    clean = trained_twins(model, held_out_from_examples([examples[i] for i in held]))
    assert clean["count"] <= 0.25 * len(held)
    # a checkpoint folder finds its run folder's record
    (model / "checkpoint-5").mkdir()
    assert trained_twins(model / "checkpoint-5", held_out_from_examples(copies))["count"] == len(copies)


def test_the_runs_validation_split_is_rebuilt_as_the_run_drew_it():
    examples, _ = _examples(80, 8)
    old_run = {"seed": 4, "eval_split_ratio": 0.1}  # before --dedup: by row number
    assert list(_validation_rows(examples, old_run)) == list(split_indices(len(examples), 0.1, 4)[1])
    run = {"seed": 4, "eval_split_ratio": 0.1, "dedup": "remove", "dedup_threshold": 0.75}
    result = dedup.deduplicate([e["target"] for e in examples], 0.75)
    assert list(_validation_rows(examples, run)) == list(corpus.content_split(result.keys, result.kept, 0.1, 4)[1])


def test_a_signatures_file_of_band_keys_written_before_version_3_is_still_read(tmp_path):
    """Runs trained before the sketches recorded 32 band keys a recipe (signatures versions 1 and 2):
    their trained-on twins are still counted, by the count of equal band keys."""
    examples, planted = _examples(150, 15)
    targets = [e["target"] for e in examples]
    result = dedup.deduplicate(targets)
    train, _ = corpus.content_split(result.keys, result.kept, 0.2, seed=3)
    _, digests = dedup.signatures(targets)
    model = tmp_path / "model"
    model.mkdir()
    np.savez(
        model / corpus.SIGNATURES_FILE,
        keys=np.unique(result.keys[train]),
        bands=dedup.band_keys(digests[train]),
        version=np.array(2),
        threshold=np.array(dedup.DEFAULT_THRESHOLD),
    )
    trained = set(train.tolist())
    copies = [examples[c] for c, o, kind in planted if o in trained and kind != "reworded"]
    assert copies and trained_twins(model, held_out_from_examples(copies))["count"] == len(copies)
    reworded = [examples[c] for c, o, kind in planted if o in trained and kind == "reworded"]
    assert trained_twins(model, held_out_from_examples(reworded))["count"] >= 1  # near twins by band keys
