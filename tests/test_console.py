"""The installed ``chef-genius`` command: one subcommand per tool, and a wheel that carries it and the sample."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from chef_genius.console import COMMANDS, main

REPO = Path(__file__).resolve().parent.parent


def test_each_subcommand_runs_the_tool_of_its_script(capsys):
    for name, (_, _, script) in COMMANDS.items():
        assert (REPO / "cli" / script).is_file()
        with pytest.raises(SystemExit) as stop:
            main([name, "--help"])
        assert stop.value.code == 0
        usage = capsys.readouterr().out.splitlines()[0]
        assert usage.startswith((f"usage: chef-genius {name}", f"usage: {script}")), usage


def test_an_unknown_or_missing_command_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["trian"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown command 'trian'") and "\n" not in err
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 2


@pytest.mark.slow  # builds a wheel in a subprocess
def test_the_wheel_installs_the_command_and_the_demo_sample(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("chef_genius-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "chef-genius = chef_genius.console:main" in entry_points
    assert any(n.endswith("data/share/chef-genius/sample_recipes.csv") for n in names)
    assert "chef_genius/train/cli.py" in names and not any(n.startswith("tests/") for n in names)
