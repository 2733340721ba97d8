"""--optimizer: Adafactor's and AdamW's state under the checkpoint contract, exact resume, the doctor,
an optimizer change on resume, and adamw-8bit's refusal without CUDA / bitsandbytes."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.doctor.cli import verify_main
from chef_genius.errors import UserError, run_cli
from conftest import run_training, step_losses, train_args

STEPS = ("--max-steps", "6", "--save-steps", "3")


@pytest.fixture(scope="module")
def adafactor_run(tiny_model, small_csv, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("adafactor") / "run"
    assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, "--optimizer", "adafactor", *STEPS)) == 0
    return out


def test_adafactor_state_is_in_the_checkpoint_and_loads_weights_only(adafactor_run):
    state = torch.load(adafactor_run / "checkpoint-3" / ckpt.TRAINING_STATE, weights_only=True)
    assert state[ckstate.OPTIMIZER_KIND] == "adafactor"
    moments = state["optimizer_state_dict"]["state"]
    assert moments and all("exp_avg" not in entry for entry in moments.values())  # no first moment
    factored = [entry for entry in moments.values() if "exp_avg_sq_row" in entry]
    assert factored and all(entry["step"] == 3 for entry in moments.values())
    assert ckmanifest.manifest_problems(adafactor_run / "checkpoint-3", verify_hashes=True) == []


def test_adafactor_checkpoint_verifies(adafactor_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(verify_main, [str(adafactor_run / "checkpoint-3"), "--deep"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    assert "[ok] optimizer state covers all" in out and "[FAIL]" not in out


def test_adafactor_resume_is_bitwise_exact(adafactor_run, tiny_model, small_csv, cache_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(adafactor_run / "checkpoint-3", out / "checkpoint-3")
    # the resume inherits --optimizer adafactor from the checkpoint
    assert (
        run_training(*train_args(tiny_model, small_csv, out, cache_dir, *STEPS, "--resume-from-checkpoint", "latest"))
        == 0
    )
    assert ckstate.load_training_state(out / "checkpoint-6")[ckstate.OPTIMIZER_KIND] == "adafactor"
    expected, got = step_losses(adafactor_run), step_losses(out)
    assert sorted(got) == [4, 5, 6]
    assert [got[s] for s in got] == [expected[s] for s in got]  # no tolerance


def test_adafactor_learns_differently_from_adamw(adafactor_run, tiny_model, small_csv, cache_dir, tmp_path):
    """The flag reaches the optimizer: same data and seed, another update rule, other losses after step 1."""
    out = tmp_path / "adamw"
    args = train_args(tiny_model, small_csv, out, cache_dir, "--max-steps", "3", "--save-steps", "3")
    assert run_training(*args) == 0
    adamw, adafactor = step_losses(out), step_losses(adafactor_run)
    assert adamw[1] == adafactor[1] and adamw[3] != adafactor[3]


def test_an_optimizer_change_on_resume_starts_its_state_fresh(
    adafactor_run, tiny_model, small_csv, cache_dir, tmp_path, caplog
):
    out = tmp_path / "run"
    shutil.copytree(adafactor_run / "checkpoint-3", out / "checkpoint-3")
    caplog.set_level(logging.INFO)
    assert (
        run_training(
            *train_args(
                tiny_model,
                small_csv,
                out,
                cache_dir,
                "--optimizer",
                "adamw",
                *STEPS,
                "--resume-from-checkpoint",
                "latest",
                "--optimizer-rewarmup-steps",
                "2",
            )
        )
        == 0
    )
    assert "optimizer state is adafactor's, this run uses --optimizer adamw" in caplog.text
    state = ckstate.load_training_state(out / "checkpoint-6")
    assert state[ckstate.OPTIMIZER_KIND] == "adamw"
    assert all("exp_avg" in entry for entry in state["optimizer_state_dict"]["state"].values())
    # step 4 trains at half the schedule's 1e-3: the first step of a 2-step re-warm ramp
    assert "restored no adamw state (adafactor's not loaded; re-warming), scheduler (lr 5.000e-04)" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_adamw_8bit_is_refused_without_cuda(tiny_model, small_csv, cache_dir, tmp_path):
    with pytest.raises(UserError, match="adamw-8bit needs a CUDA GPU") as err:
        run_training(*train_args(tiny_model, small_csv, tmp_path / "run", cache_dir, "--optimizer", "adamw-8bit"))
    assert err.value.exit_code == 2
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("by_name", [False, True], ids=["torch-layout", "fsdp-by-name-layout"])
def test_a_resume_on_another_device_keeps_this_devices_fused_adamw(by_name, caplog, monkeypatch):
    """A CPU-made checkpoint holds AdamW's ``fused: None``; loaded as is on a GPU, AdamW would then run
    unfused. The resumed optimizer keeps what make_optimizer chose for this device (fused on CUDA; here
    fused CPU AdamW stands in for it), and the moments are the saved ones."""
    from types import SimpleNamespace
    from chef_genius.train import sharded
    from chef_genius.train.components import OptimizerSlice
    from chef_genius.train.schedule import Schedule
    from chef_genius.train.state import RunState

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    saving = torch.optim.AdamW(model.parameters(), lr=1e-3)  # as on the CPU that saved: fused None
    model(torch.ones(3, 4)).sum().backward()
    saving.step()
    state, layout = saving.state_dict(), ckstate.OPTIMIZER_LAYOUT_NAMES if by_name else None
    if by_name:  # torch's by-name loader needs a process group; what matters here is the path around it
        monkeypatch.setattr(
            sharded, "load_optimizer_by_name", lambda model, optimizer, state: optimizer.load_state_dict(state)
        )
    assert all(group["fused"] is None for group in saving.state_dict()["param_groups"])

    resuming = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)  # this device's choice
    plain = SimpleNamespace(distributed_type="NO")
    part = OptimizerSlice(plain, model, resuming, Schedule(0, 10, "linear"), RunState(), rewarm_steps=2)
    caplog.set_level(logging.INFO)
    assert part.load_state_dict({"state": state, "layout": layout, "kind": "adamw"}) == "optimizer"
    assert [group["fused"] for group in resuming.param_groups] == [True]
    assert resuming.param_groups[0]["foreach"] is None and resuming.param_groups[0]["capturable"] is False
    assert "fused=None -> True" in caplog.text
    for param in model.parameters():
        assert torch.equal(resuming.state[param]["exp_avg"], saving.state[param]["exp_avg"])
