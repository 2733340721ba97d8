"""``bash bench/gpu_check.sh``, the first command of a session lent a GPU: its CPU dry run goes through
every phase and writes one JSON summary; a missing package ends it in seconds with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # every test starts the check in a subprocess
PHASES = ["build", "eager", "resume", "gc_adafactor", "compiled", "vs_seq2seq"]


def _env(**extra) -> dict:
    """The check's environment; no carried wheels unless ``extra`` names a folder of them."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHON": sys.executable,
        "GPU_CHECK_WHEELS": str(REPO / "tests" / "no-wheels-here"),
        **extra,
    }


def test_dry_run_passes_every_phase_without_datasets_and_writes_one_summary(tmp_path, tiny_model):
    """The GPU machine has no ``datasets``: the whole check (our trainer and the Seq2SeqTrainer baseline)
    runs without it."""
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run", "--model", str(tiny_model), "--out", str(out)],
        cwd=REPO,
        env=_env(PYTHONPATH=str(_hiding(tmp_path, "datasets"))),
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = json.loads((out / "gpu_check.json").read_text())
    phases = summary["phases"]
    assert done.returncode == 0, (done.stderr[-3000:], json.dumps(phases, indent=1)[-3000:])
    assert list(phases) == PHASES and all(p["status"] == "ok" for p in phases.values())
    assert summary["ok"] is True and summary["versions"]["torch"]["found"]
    assert summary["device"]["datasets_importable"] is False
    assert [p.name for p in out.iterdir()] == ["gpu_check.json"], "OUT holds the summary alone (it is copied back)"
    eager, resume = phases["eager"], phases["resume"]
    # eager saved half-way (in the background) and at the end; the resume continued from half-way
    assert eager["checkpoints"] == ["checkpoint-2", "checkpoint-4"] and [s["step"] for s in eager["saves"]] == [2, 4]
    assert resume["resumed_from_step"] == 2 and resume["steps_compared"] == [3, 4]
    assert resume["bitwise_equal"] is True, "on CPU a resumed run repeats the uninterrupted losses bit for bit"
    for name in ("eager", "gc_adafactor", "compiled"):
        assert phases[name]["tokens_per_s"] > 0 and phases[name]["memory"]["plan_gib"] > 0
    assert "adafactor" in phases["gc_adafactor"]["memory"]["setting"]
    assert phases["compiled"]["unique_graphs"] >= 1  # dynamo traced the model (eager backend in the dry run)
    versus = phases["vs_seq2seq"]
    assert versus["identical_batches"] is True and versus["ratio_tokens_per_s"] > 0
    assert versus["ours"]["saves"] == versus["seq2seq_trainer"]["saves"] == 1


def _hiding(tmp_path: Path, *modules: str) -> Path:
    """A folder whose sitecustomize makes ``modules`` unimportable in every Python started with it on
    PYTHONPATH (children too), as on a machine without them: ``import`` fails, ``find_spec`` says None."""
    folder = tmp_path / "hide"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({list(modules)!r}))\n")
    return folder


def test_missing_package_fails_in_seconds_with_one_line(tmp_path):
    hide = _hiding(tmp_path, "pyarrow")
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--out", str(tmp_path / "out")],
        cwd=REPO,
        env=_env(PYTHONPATH=str(hide)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("gpu_check: missing Python package 'pyarrow'") and "bench/fetch_wheels.sh" in lines[0]
    assert elapsed < 30, f"the missing package was found after {elapsed:.0f} s: no heavy import may come first"
    assert not (tmp_path / "out").exists(), "nothing runs, nothing is written"


def test_without_gpu_and_without_dry_run_refuses_with_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--out", str(tmp_path / "out")],
        cwd=REPO,
        env=_env(CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "gpu_check: no CUDA GPU is visible to torch; run with --dry-run" in done.stderr
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert summary["ok"] is False and all(p["status"] == "skipped" for p in summary["phases"].values())


def _wheel(folder: Path, name: str) -> Path:
    """A minimal pure-Python wheel of a package ``name`` whose module says it was imported from there."""
    import zipfile

    folder.mkdir(parents=True)
    path = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": "CARRIED = True\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def test_carried_wheels_are_installed_first_and_put_on_the_path(tmp_path):
    """gpu_check.sh installs .wheels/*.whl (here a folder named by GPU_CHECK_WHEELS) into its own folder,
    first on PYTHONPATH: a carried package is importable by the check, and the missing one is still named."""
    _wheel(tmp_path / "wheels", "chef_probe_pkg")
    site = tmp_path / "site"
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--out", str(tmp_path / "out")],
        cwd=REPO,
        env=_env(
            GPU_CHECK_WHEELS=str(tmp_path / "wheels"),
            GPU_CHECK_SITE=str(site),
            PYTHONPATH=str(_hiding(tmp_path, "pyarrow")),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (site / "chef_probe_pkg" / "__init__.py").read_text() == "CARRIED = True\n"
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("gpu_check: installed 1 wheels from ") and done.returncode == 2
    assert lines[-1].startswith("gpu_check: missing Python package 'pyarrow'")
