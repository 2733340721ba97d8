"""``Report``: the JSON users script against keeps its keys and values; the typed facts stay out of it.
Fast: no checkpoint is read."""

from __future__ import annotations

import json
from pathlib import Path

from chef_genius.doctor.problems import Problem
from chef_genius.doctor.report import Facts, Report


def test_json_keys_and_code_values_are_unchanged():
    report = Report(Path("run/checkpoint-4"), kind="chef_genius", global_step=4, epoch=0)
    report.fail(Problem.OPTIMIZER_EMPTY, "optimizer state is empty", "warn")
    report.facts.unfixed = ["could not restore config.json"]
    report.hint = "run/checkpoint-2"
    out = json.loads(json.dumps(report.to_json()))
    assert set(out) == {
        "path",
        "kind",
        "valid",
        "resumable",
        "global_step",
        "epoch",
        "problems",
        "repairs",
        "resume_instead",
    }
    assert out["problems"] == [{"code": "optimizer_empty", "message": "optimizer state is empty"}]
    assert out["resumable"] and not out["valid"] and report.codes() == {Problem.OPTIMIZER_EMPTY}


def test_a_fatal_code_is_not_resumable_and_facts_start_empty():
    report = Report(Path("run/checkpoint-4"), kind="chef_genius")
    assert report.facts == Facts() and report.facts.weight_files == [] and report.facts.state_status is None
    report.fail(Problem.WEIGHTS_CORRUPT, "model.safetensors does not match its sha256 in the manifest")
    assert not report.resumable and "[FAIL] model.safetensors" in report.text()
