"""Every tool's --help ends with examples of its own command line (README: "each has --help with examples")."""

from __future__ import annotations

import pytest

from chef_genius.doctor import cli as doctor_cli
from chef_genius.evaluation import cli as evaluate_cli
from chef_genius.model import generate_cli
from chef_genius.monitoring import plot_cli
from chef_genius.train import cli as train_cli

TOOLS = {
    "complete_optimized_training.py": train_cli.main,
    "generate_recipe.py": generate_cli.main,
    "plot_training.py": plot_cli.main,
    "evaluate_recipes.py": evaluate_cli.main,
    "verify_and_fix_checkpoint.py": doctor_cli.verify_main,
    "fix_all_checkpoints.py": doctor_cli.fix_all_main,
}


@pytest.mark.parametrize("script", sorted(TOOLS))
def test_help_shows_examples_of_the_tool(script, capsys):
    with pytest.raises(SystemExit) as done:
        TOOLS[script](["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    examples = text.split("examples:", 1)[1] if "examples:" in text else ""
    assert examples.count(f"python cli/{script}") >= 2, f"{script} --help has no examples"
