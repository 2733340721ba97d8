"""Checkpoints judged by their numbers: a checkpoint whose weights went NaN is never picked by `latest`,
`--auto-resume`, the doctor's `resume_instead` or fix_all's `newest_resumable`, whether it says so in
its health record or (written before the record existed) its numbers have to be read."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint.resume import resolve
from chef_genius.doctor.cli import fix_all_main
from chef_genius.doctor.verify import verify


def _poison(folder, recorded: bool) -> None:
    """Make ``folder``'s weights NaN, as a diverged run saved them, and seal it again with a manifest.
    ``recorded``: its health record says so; else it has no record (a checkpoint of an older version)."""
    weights = load_file(folder / ckpt.WEIGHTS)
    save_file(
        {k: torch.full_like(v, float("nan")) for k, v in weights.items()},
        folder / ckpt.WEIGHTS,
        metadata={"format": "pt"},
    )
    state = ckstate.load_training_state(folder)
    if recorded:
        state[ckstate.HEALTH] = dict(state[ckstate.HEALTH], weights_finite=False)
    else:
        state.pop(ckstate.HEALTH)
    torch.save(state, folder / ckpt.TRAINING_STATE)
    manifest = ckmanifest.build_manifest(folder, ckpt.step_of(folder))
    (folder / ckpt.MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture(params=[True, False], ids=["health-record", "no-record"])
def nan_run(request, stopped_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    _poison(out / "checkpoint-10", recorded=request.param)
    return out


def test_latest_and_auto_resume_skip_a_nan_checkpoint(nan_run, caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve("latest", False, nan_run) == nan_run / "checkpoint-5"
        assert resolve(None, True, nan_run) == nan_run / "checkpoint-5"
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping checkpoint-10")]
    assert len(skips) == 2 and all("weights hold NaN or Inf" in line for line in skips)


def test_resuming_a_nan_checkpoint_by_name_is_refused(nan_run):
    from chef_genius.errors import UserError

    with pytest.raises(UserError, match="not usable .*weights hold NaN or Inf") as err:
        resolve(str(nan_run / "checkpoint-10"), False, nan_run)
    assert err.value.exit_code == 2


def test_plain_verify_reports_a_nan_checkpoint_as_not_resumable(nan_run):
    report = verify(nan_run / "checkpoint-10")
    assert not report.resumable and "weights_nonfinite" in report.codes()
    assert report.hint == str(nan_run / "checkpoint-5")
    assert verify(nan_run / "checkpoint-5").valid


def test_fix_all_names_the_newest_finite_checkpoint(nan_run, capsys):
    assert fix_all_main([str(nan_run), "--dry-run", "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["newest_resumable"] == str(nan_run / "checkpoint-5")


def test_a_checkpoint_of_today_records_its_health(stopped_run):
    state = ckstate.load_training_state(stopped_run / "checkpoint-10")
    record = ckstate.recorded_health(state)
    assert record["weights_finite"] and record["moments_finite"]
    assert len(record["recent_losses"]) == 10 and record["skipped_steps"] == 0
