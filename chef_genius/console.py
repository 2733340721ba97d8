"""``chef-genius COMMAND ...``: the installed console command, one subcommand per tool.

Each subcommand runs the same entry point as its script in ``cli/`` (``chef-genius train`` is
``python cli/complete_optimized_training.py``), with the same flags, messages and exit codes.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, entry function, the script it stands for)
COMMANDS = {
    "train": ("chef_genius.train.cli", "entry", "complete_optimized_training.py"),
    "verify": ("chef_genius.doctor.cli", "verify_entry", "verify_and_fix_checkpoint.py"),
    "fix-all": ("chef_genius.doctor.cli", "fix_all_entry", "fix_all_checkpoints.py"),
    "generate": ("chef_genius.model.generate_cli", "entry", "generate_recipe.py"),
    "evaluate": ("chef_genius.evaluation.cli", "entry", "evaluate_recipes.py"),
    "plot": ("chef_genius.monitoring.plot_cli", "entry", "plot_training.py"),
    "inspect": ("chef_genius.data.inspect_cli", "entry", "inspect_data.py"),
}

USAGE = "usage: chef-genius {" + ",".join(COMMANDS) + "} [flags ...]   (chef-genius COMMAND --help for its flags)"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        print("\n".join(f"  {name:<9} same as python cli/{script}" for name, (_, _, script) in COMMANDS.items()))
        sys.exit(0 if args else 2)
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; {USAGE}", file=sys.stderr)
        sys.exit(2)
    module, function, _ = COMMANDS[name]
    # The tools read sys.argv (argparse): give them their own flags (their --help names their script).
    sys.argv = [f"chef-genius {name}", *rest]
    getattr(importlib.import_module(module), function)()


if __name__ == "__main__":
    main()
