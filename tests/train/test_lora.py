"""--lora-r: only the adapter trains; its checkpoints (adapter, base fingerprint, optimizer over the
adapter) verify, resume bitwise, refuse another base or another adapter shape, and repair; the final
model is the merged one, or the adapter with --save-adapter-only."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import records as ckrecords
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.doctor.cli import verify_main
from chef_genius.errors import UserError, run_cli
from conftest import run_training, step_losses, train_args

LORA = ("--lora-r", "4", "--lora-dropout", "0.1")
STEPS = ("--max-steps", "6", "--save-steps", "3")


@pytest.fixture(scope="module")
def lora_run(tiny_model, small_csv, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, *LORA, *STEPS)) == 0
    return out


def _resume(tiny_model, small_csv, cache_dir, out, *extra) -> int:
    return run_training(
        *train_args(tiny_model, small_csv, out, cache_dir, *STEPS, "--resume-from-checkpoint", "latest", *extra)
    )


def _copy(run, out, step=3):
    shutil.copytree(run / f"checkpoint-{step}", out / f"checkpoint-{step}")
    return out / f"checkpoint-{step}"


# ---------------------------------------------------------------------------------------------
# what a LoRA checkpoint holds


def test_checkpoint_holds_the_adapter_the_base_fingerprint_and_an_optimizer_over_the_adapter(lora_run, tiny_model):
    folder = lora_run / "checkpoint-3"
    assert not (folder / ckpt.WEIGHTS).exists() and not (folder / ckpt.MODEL_CONFIG).exists()
    adapter = load_file(str(folder / ckpt.ADAPTER_WEIGHTS))
    assert adapter and all("lora_A" in name or "lora_B" in name for name in adapter)
    config = json.loads((folder / ckpt.ADAPTER_CONFIG).read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["peft_type"] == "LORA"
    assert set(config["target_modules"]) == {"q", "k", "v", "o", "wi_0", "wi_1", "wo"}  # the gated tiny T5: no wi
    base = ckrecords.read_base(folder)
    assert base["pretrained_model"] == str(tiny_model) and len(base["sha256"]) == 64
    state = ckstate.load_training_state(folder)
    moments = state["optimizer_state_dict"]["state"]
    assert sorted(m["exp_avg"].shape for m in moments.values()) == sorted(t.shape for t in adapter.values())
    assert state["hyperparameters"]["lora_r"] == 4
    assert ckmanifest.manifest_problems(folder, verify_hashes=True) == []
    assert ckmanifest.usability_problem(folder) is None
    assert ckmanifest.find_latest(lora_run)[0] == lora_run / "checkpoint-6"


def test_a_folder_with_neither_weights_nor_adapter_is_not_usable(lora_run, tmp_path):
    folder = _copy(lora_run, tmp_path)
    (folder / ckpt.ADAPTER_WEIGHTS).unlink()
    assert ckmanifest.usability_problem(folder) is not None
    assert ckmanifest.find_latest(tmp_path)[0] is None


def test_only_the_adapter_changes_the_base_stays_frozen(lora_run, tiny_model):
    """Adapter B starts at zero and has moved; the merged final model differs from the base only in
    the adapted projections, and there by the adapter's update."""
    adapter = load_file(str(lora_run / "checkpoint-6" / ckpt.ADAPTER_WEIGHTS))
    assert all(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)
    base, merged = load_file(str(tiny_model / ckpt.WEIGHTS)), load_file(str(lora_run / ckpt.WEIGHTS))
    changed = {name for name in base if not torch.equal(base[name], merged[name])}
    assert changed and all(name.rsplit(".", 2)[-2] in {"q", "k", "v", "o", "wi_0", "wi_1", "wo"} for name in changed)


# ---------------------------------------------------------------------------------------------
# resume


def test_interrupted_lora_run_resumed_equals_the_uninterrupted_one(
    lora_run, tiny_model, small_csv, cache_dir, tmp_path
):
    out = tmp_path / "run"
    _copy(lora_run, out)
    assert _resume(tiny_model, small_csv, cache_dir, out) == 0  # --lora-r comes from the checkpoint
    expected, got = step_losses(lora_run), step_losses(out)
    assert sorted(got) == [4, 5, 6]
    assert [got[s] for s in got] == [expected[s] for s in got]  # no tolerance
    assert (
        load_file(str(out / "checkpoint-6" / ckpt.ADAPTER_WEIGHTS)).keys()
        == load_file(str(lora_run / "checkpoint-6" / ckpt.ADAPTER_WEIGHTS)).keys()
    )
    for name, tensor in load_file(str(out / "checkpoint-6" / ckpt.ADAPTER_WEIGHTS)).items():
        assert torch.equal(tensor, load_file(str(lora_run / "checkpoint-6" / ckpt.ADAPTER_WEIGHTS))[name])


def test_resume_onto_another_base_is_refused(lora_run, tiny_model, small_csv, cache_dir, tmp_path):
    other = tmp_path / "other-base"
    shutil.copytree(tiny_model, other)
    weights = load_file(str(other / ckpt.WEIGHTS))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3  # the same shapes, other weights
    save_file(weights, str(other / ckpt.WEIGHTS), metadata={"format": "pt"})
    out = tmp_path / "run"
    _copy(lora_run, out)
    with pytest.raises(UserError, match="trained on base weights .* give the base model the run started from") as err:
        _resume(tiny_model, small_csv, cache_dir, out, "--pretrained-model", other)
    assert err.value.exit_code == 2
    assert not (out / "checkpoint-6").exists()


def test_the_same_base_at_another_path_is_accepted(lora_run, tiny_model, small_csv, cache_dir, tmp_path):
    moved = tmp_path / "moved-base"
    shutil.copytree(tiny_model, moved)
    out = tmp_path / "run"
    _copy(lora_run, out)
    assert _resume(tiny_model, small_csv, cache_dir, out, "--pretrained-model", moved, "--max-steps", "4") == 0
    assert ckrecords.read_base(out / "checkpoint-4")["pretrained_model"] == str(moved)


@pytest.mark.parametrize(
    "flags, allowed, words",
    [
        (("--lora-r", "8"), True, "its saved tensors do not fit"),
        (("--lora-target-modules", "q", "v"), True, "its saved tensors do not fit"),
        (("--lora-alpha", "16"), False, "--allow-config-change"),
    ],
)
def test_another_adapter_shape_on_resume_is_refused(
    lora_run, tiny_model, small_csv, cache_dir, tmp_path, flags, allowed, words
):
    out = tmp_path / "run"
    _copy(lora_run, out)
    extra = ("--allow-config-change",) if allowed else ()
    with pytest.raises(UserError, match=words) as err:
        _resume(tiny_model, small_csv, cache_dir, out, *flags, *extra)
    assert err.value.exit_code == 2


def test_a_new_alpha_is_applied_with_allow_config_change(lora_run, tiny_model, small_csv, cache_dir, tmp_path):
    out = tmp_path / "run"
    _copy(lora_run, out)
    assert (
        _resume(
            tiny_model, small_csv, cache_dir, out, "--lora-alpha", "16", "--allow-config-change", "--max-steps", "4"
        )
        == 0
    )
    assert json.loads((out / "checkpoint-4" / ckpt.ADAPTER_CONFIG).read_text())["lora_alpha"] == 16


# ---------------------------------------------------------------------------------------------
# the final model


def test_merged_final_model_loads_alone_and_equals_the_trained_adapter(lora_run, tiny_model):
    from peft import PeftModel
    from transformers import T5ForConditionalGeneration

    merged = T5ForConditionalGeneration.from_pretrained(lora_run).eval()
    assert not (lora_run / ckpt.ADAPTER_WEIGHTS).exists()
    # the trained adapter of the last step, through peft's own loader (the files are peft's)
    trained = PeftModel.from_pretrained(
        T5ForConditionalGeneration.from_pretrained(tiny_model), lora_run / "checkpoint-6"
    ).eval()
    inputs = {"input_ids": torch.tensor([[5, 9, 13, 7, 1]]), "decoder_input_ids": torch.tensor([[0, 4, 8, 3]])}
    with torch.no_grad():
        want, got = trained(**inputs).logits, merged(**inputs).logits
    base = T5ForConditionalGeneration.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        assert not torch.allclose(base(**inputs).logits, want, atol=1e-4)  # the adapter matters
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_merged_final_model_writes_recipes_with_generate_recipe(lora_run, capsys):
    from chef_genius.model.generate_cli import main

    assert main(["--model", str(lora_run), "--ingredients", "chicken, rice", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip()


def test_save_adapter_only_with_gradient_checkpointing(tiny_model, small_csv, cache_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    assert (
        run_training(
            *train_args(
                tiny_model,
                small_csv,
                out,
                cache_dir,
                *LORA,
                "--max-steps",
                "2",
                "--save-adapter-only",
                "--gradient-checkpointing",
            )
        )
        == 0
    )
    assert (out / ckpt.ADAPTER_WEIGHTS).is_file() and (out / ckpt.ADAPTER_CONFIG).is_file()
    assert not (out / ckpt.WEIGHTS).exists()
    assert ckrecords.read_base(out)["pretrained_model"] == str(tiny_model)
    assert "PeftModel.from_pretrained" in caplog.text
    assert all(torch.isfinite(torch.tensor(loss)) for loss in step_losses(out).values())
    # generate_recipe.py rebuilds the base the adapter records and merges the adapter in
    from chef_genius.model.generate_cli import main

    assert main(["--model", str(out), "--ingredients", "chicken, rice", "--max-new-tokens", "8"]) == 0


# ---------------------------------------------------------------------------------------------
# the doctor


def test_lora_checkpoint_verifies(lora_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(verify_main, [str(lora_run / "checkpoint-3"), "--deep"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    assert "adapter" in out and "base model" in out and "[FAIL]" not in out


def test_lora_checkpoint_without_base_record_does_not_verify(lora_run, tmp_path, capsys):
    folder = _copy(lora_run, tmp_path)
    (folder / ckpt.BASE_RECORD).unlink()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(verify_main, [str(folder)])
    assert exit_info.value.code == 1
    assert ckpt.BASE_RECORD in capsys.readouterr().out


def test_lost_training_state_of_a_lora_checkpoint_is_rebuilt_and_resumes(
    lora_run, tiny_model, small_csv, cache_dir, tmp_path, caplog, capsys
):
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    shutil.copytree(lora_run / "checkpoint-3", out / "checkpoint-3")
    shutil.copytree(lora_run / "checkpoint-6", out / "checkpoint-6")
    (out / "checkpoint-6" / ckpt.TRAINING_STATE).unlink()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(verify_main, [str(out / "checkpoint-6"), "--fix"])
    report = capsys.readouterr().out
    assert exit_info.value.code == 1, report  # 1: resumable, with less state than a full one
    assert "resumable, with less state" in report and "optimizer state empty" in report
    state = ckstate.load_training_state(out / "checkpoint-6")
    assert state["global_step"] == 6 and state["hyperparameters"]["lora_r"] == 4
    assert ckmanifest.usability_problem(out / "checkpoint-6", verify_hashes=True) is None
    # it resumes: the adapter of step 6, a fresh optimizer (said so), the step-7 learning rate
    assert _resume(tiny_model, small_csv, cache_dir, out, "--max-steps", "7") == 0
    assert "no optimizer state" in caplog.text and (out / "checkpoint-7").is_dir()
