"""--source-template: how the model input is built, remembered by the run and the model folder, and
used again by the evaluation samples, a resume and generate_recipe.py."""

from __future__ import annotations

import json
import shutil

import pytest

from chef_genius.checkpoint import records as ckrecords
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.data.readers import ReadOptions, ReadStats, read_examples
from chef_genius.errors import UserError
from chef_genius.model.generate_cli import main as generate
from chef_genius.train.config import parse_args
from conftest import run_training, train_args

TEMPLATE = "Ingredients on hand: {ingredients}. Write the recipe."
RUN = (
    "--max-steps",
    "2",
    "--save-steps",
    "2",
    "--eval-steps",
    "2",
    "--eval-samples",
    "1",
    "--max-source-length",
    "32",
    "--max-target-length",
    "64",
)


@pytest.fixture(scope="module")
def run(tiny_model, small_csv, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("template") / "run"
    assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, *RUN, "--source-template", TEMPLATE)) == 0
    return out


def resume(out, cache_dir, *extra):
    return [
        "--model-output",
        str(out),
        "--resume-from-checkpoint",
        "latest",
        "--cache-dir",
        str(cache_dir),
        "--dataloader-num-workers",
        "0",
        *map(str, extra),
    ]


def test_template_builds_recipe_inputs_but_not_pair_inputs(tmp_path, small_csv):
    options = ReadOptions(source_template="Make {title} from {ingredients}")
    first = next(read_examples(small_csv, ReadStats(), options))
    default = next(read_examples(small_csv, ReadStats()))
    title = first["target"].split(" Ingredients:")[0].removeprefix("Title: ")
    assert first["source"] == f"Make {title} from " + default["source"].split(": ", 1)[1]
    assert first["target"] == default["target"]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"input": "Create a detailed recipe for Tea.", "output": "Title: Tea"}) + "\n")
    assert next(read_examples(pairs, ReadStats(), options))["source"] == "Create a detailed recipe for Tea."


@pytest.mark.parametrize(
    "template, message",
    [
        ("Write a recipe", "has no placeholder"),
        ("Cook {dish}", "unknown placeholder {dish}"),
        ("Cook {title", "not a valid template"),
    ],
)
def test_unusable_templates_are_refused(small_csv, template, message):
    with pytest.raises(UserError, match=message):
        parse_args(["--data", str(small_csv), "--source-template", template])


def test_template_is_kept_in_every_model_folder_and_used_by_the_samples(run):
    for folder in (run / "checkpoint-2", run):
        assert ckrecords.read_prompt(folder) == TEMPLATE
    assert ckmanifest.manifest_problems(run / "checkpoint-2", verify_hashes=True) == []
    assert "chef_genius_prompt.json" in ckmanifest.read_manifest(run / "checkpoint-2")["files"]
    assert ckstate.load_training_state(run / "checkpoint-2")["hyperparameters"]["source_template"] == TEMPLATE
    samples = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    samples = [r for r in samples if r["type"] == "samples"]
    assert (
        samples
        and samples[0]["samples"][0]["prompt"] == "Ingredients on hand: chicken, rice, garlic. Write the recipe."
    )


def test_a_resume_inherits_the_template_and_refuses_another(run, cache_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run / "checkpoint-2", out / "checkpoint-2")
    with pytest.raises(UserError, match="--source-template .* -> Cook {title}"):
        run_training(*resume(out, cache_dir, "--source-template", "Cook {title}", "--max-steps", "3"))
    with pytest.raises(UserError, match="--columns none -> title=name"):
        run_training(*resume(out, cache_dir, "--columns", "title=name", "--max-steps", "3"))
    assert run_training(*resume(out, cache_dir, "--max-steps", "3", "--eval-samples", "0")) == 0
    assert ckrecords.read_prompt(out / "checkpoint-3") == TEMPLATE == ckrecords.read_prompt(out)


def _generate_json(capsys, *argv) -> dict:
    assert generate([*map(str, argv), "--max-new-tokens", "4", "--num-beams", "1", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_fills_the_models_template_or_takes_a_prompt_as_is(run, capsys):
    result = _generate_json(capsys, "--model", run, "--ingredients", "tea, lemon")["results"][0]
    assert result["input"] == "Ingredients on hand: tea, lemon. Write the recipe."
    prompt = "Create a detailed recipe for Pad Thai with step-by-step instructions."
    result = _generate_json(capsys, "--model", run / "checkpoint-2", "--prompt", prompt)["results"][0]
    assert result["prompt"] == result["input"] == prompt


def test_generate_refuses_ingredients_for_a_model_trained_on_titles(tiny_model, tmp_path, capsys):
    model = tmp_path / "titles"
    shutil.copytree(tiny_model, model)
    ckrecords.write_prompt(model, "Create a detailed recipe for {title} with step-by-step instructions.")
    with pytest.raises(UserError, match="need more than ingredients: give the model's whole input with --prompt"):
        generate(["--model", str(model), "--ingredients", "tea"])
    assert _generate_json(capsys, "--model", model, "--prompt", "Create a detailed recipe for Tea.")["results"]
