"""cli/generate_recipe.py on the tiny model: readable text, JSON, decoding options, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import commit as ckcommit
from chef_genius.model import generate_cli
from chef_genius.errors import EXIT_USAGE, UserError
from chef_genius.model.generate_cli import main, resolve_model_dir

REPO = Path(__file__).resolve().parents[2]
WELL_FORMED = (
    "Title: Garlic Chicken Rice Ingredients: 2 c. rice ; 1 lb. chicken ; 3 cloves garlic "
    "Directions: 1. Brown the chicken. 2. Add rice and garlic. 3. Simmer 20 minutes."
)


def test_text_output_is_a_readable_recipe(tiny_model, capsys, monkeypatch):
    seen = {}

    def fake_generate(model, tokenizer, ingredient_lists, settings, device, autocast, sources):
        seen["lists"], seen["settings"], seen["sources"] = ingredient_lists, settings, sources
        return [[WELL_FORMED]]

    monkeypatch.setattr(generate_cli, "generate_texts", fake_generate)
    assert main(["--model", str(tiny_model), "--ingredients", "chicken, rice, garlic"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "Garlic Chicken Rice",
        "",
        "Ingredients:",
        "  - 2 c. rice",
        "  - 1 lb. chicken",
        "  - 3 cloves garlic",
        "",
        "Directions:",
        "  1. Brown the chicken.",
        "  2. Add rice and garlic.",
        "  3. Simmer 20 minutes.",
    ]
    assert seen["lists"] == ["chicken, rice, garlic"] and seen["settings"].num_beams == 1
    assert seen["settings"].max_new_tokens == 384  # defaults that finish in seconds on CPU
    assert seen["sources"] == ["Write a recipe with these ingredients: chicken, rice, garlic"]  # no prompt file


def test_output_without_recipe_structure_is_shown_as_generated(tiny_model, capsys, monkeypatch):
    monkeypatch.setattr(generate_cli, "generate_texts", lambda *a, **k: [["rice rice rice"]])
    assert main(["--model", str(tiny_model), "--ingredients", "rice"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "rice rice rice" and "shown as generated" in out[1]


def test_real_generation_prints_text_and_json(tiny_model, capsys):
    assert (
        main(
            ["--model", str(tiny_model), "--ingredients", "chicken, rice", "--max-new-tokens", "12", "--num-beams", "2"]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert captured.out.strip()  # an untrained tiny model: rendered or, without structure, shown as is
    assert "beam search (2 beams)" in captured.err
    assert (
        main(
            [
                "--model",
                str(tiny_model),
                "--ingredients",
                "eggs",
                "--ingredients",
                "flour, sugar",
                "--max-new-tokens",
                "12",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert [r["ingredients"] for r in result["results"]] == ["eggs", "flour, sugar"]
    recipe = result["results"][0]["recipes"][0]
    assert set(recipe) == {"title", "ingredients", "directions", "raw"}
    assert result["settings"]["max_new_tokens"] == 12 and result["model"] == str(tiny_model)


def test_sampling_with_a_seed_repeats(tiny_model, capsys):
    argv = [
        "--model",
        str(tiny_model),
        "--ingredients",
        "salmon, dill",
        "--do-sample",
        "--temperature",
        "1.5",
        "--top-p",
        "0.95",
        "--seed",
        "3",
        "--num-return-sequences",
        "2",
        "--max-new-tokens",
        "16",
        "--json",
    ]
    outputs = []
    for _ in range(2):
        assert main(argv) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0]["results"] == outputs[1]["results"]
    assert outputs[0]["settings"]["do_sample"] and outputs[0]["settings"]["num_beams"] == 1
    assert len(outputs[0]["results"][0]["recipes"]) == 2


def test_a_run_folder_without_a_final_model_uses_its_newest_complete_checkpoint(tiny_model, tmp_path):
    def copy_model(folder):
        for path in Path(tiny_model).iterdir():
            shutil.copy(path, folder / path.name)

    for step in (5, 10):
        ckcommit.write_checkpoint(tmp_path, step, copy_model, {"global_step": step})
    (tmp_path / "checkpoint-10" / ckpt.MANIFEST).unlink()  # an unfinished save is never used
    assert resolve_model_dir(str(tmp_path)) == tmp_path / "checkpoint-5"
    assert resolve_model_dir(str(tmp_path / "checkpoint-5")) == tmp_path / "checkpoint-5"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ingredients", " , "], "--ingredients is empty"),
        (["--ingredients", "eggs", "--temperature", "0"], "--temperature must be positive"),
        (["--ingredients", "eggs", "--num-beams", "2", "--num-return-sequences", "3"], "cannot exceed --num-beams"),
    ],
)
def test_bad_options_are_user_errors(tiny_model, argv, message):
    with pytest.raises(UserError, match=message):
        main(["--model", str(tiny_model), *argv])


def test_missing_model_dir_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "cli" / "generate_recipe.py"),
            "--model",
            str(tmp_path / "missing"),
            "--ingredients",
            "chicken, rice",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == EXIT_USAGE
    assert (
        result.stderr == f"error: --model {tmp_path / 'missing'}: no such folder (give a run folder, a "
        "checkpoint-N folder or a saved model folder)\n"
    )
    assert result.stdout == ""


def test_a_folder_with_no_model_and_no_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no model here"):
        resolve_model_dir(str(tmp_path))


def test_a_model_with_nan_weights_is_one_line_and_exit_2(tiny_model, tmp_path):
    """A diverged run's weights: said in one line, never an empty recipe with exit 0."""
    import torch
    from safetensors.torch import load_file, save_file

    nan_model = tmp_path / "nan-model"
    shutil.copytree(tiny_model, nan_model)
    weights = load_file(nan_model / ckpt.WEIGHTS)
    weights = {k: torch.full_like(v, float("nan")) if k.startswith("decoder.") else v for k, v in weights.items()}
    save_file(weights, nan_model / ckpt.WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(UserError, match="hold NaN or Inf") as err:
        main(["--model", str(nan_model), "--ingredients", "eggs"])
    assert err.value.exit_code == EXIT_USAGE and "\n" not in str(err.value)
