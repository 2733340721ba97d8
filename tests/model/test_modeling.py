import sys

import pytest
import torch

from chef_genius.model import loading as modeling
from chef_genius.errors import UserError


def test_compile_defaults(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert modeling.should_compile(None, cpu)[0] is False
    assert modeling.should_compile(True, cpu)[0] is True
    assert modeling.should_compile(False, cuda)[0] is False
    monkeypatch.setattr(modeling, "triton_available", lambda: False)
    monkeypatch.setattr(sys, "platform", "win32")
    enabled, why = modeling.should_compile(None, cuda)
    assert not enabled and "Windows" in why
    monkeypatch.setattr(modeling, "triton_available", lambda: True)
    assert modeling.should_compile(None, cuda)[0] is True


@pytest.mark.parametrize(
    "capability, triton, requested, expected",
    [
        ((9, 0), True, None, True),
        ((7, 0), True, None, True),
        ((6, 1), True, None, False),  # a GTX 10xx / P100: Triton has no code generator for it
        ((6, 1), True, False, False),
        ((8, 6), False, None, False),
    ],
)
def test_compile_is_on_only_where_triton_can_compile(monkeypatch, capability, triton, requested, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(modeling, "triton_available", lambda: triton)
    enabled, why = modeling.should_compile(requested, torch.device("cuda"))
    assert enabled is expected
    if capability < (7, 0) and requested is None:
        assert "compute capability 6.1" in why


@pytest.mark.parametrize(
    "capability, triton, problem",
    [
        ((6, 1), True, "compute capability 6.1, it needs 7.0 or newer"),
        ((8, 0), False, "Triton is not installed"),
    ],
)
def test_an_explicit_compile_that_cannot_work_is_refused_at_start(monkeypatch, capability, triton, problem):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(modeling, "triton_available", lambda: triton)
    with pytest.raises(UserError, match="--compile cannot work here") as err:
        modeling.should_compile(True, torch.device("cuda"))
    assert problem in str(err.value) and "\n" not in str(err.value) and err.value.exit_code == 2


def test_an_explicit_compile_without_triton_ends_the_trainer_before_it_touches_the_run_folder(
    monkeypatch, tiny_model, small_csv, cache_dir, tmp_path
):
    """Refused when the Trainer is built (as on a CUDA machine without Triton), not at the first forward."""
    from chef_genius.train import trainer as trainer_module
    from chef_genius.train.config import parse_args
    from conftest import train_args

    real = modeling.should_compile
    monkeypatch.setattr(
        trainer_module, "should_compile", lambda requested, device: real(requested, torch.device("cuda"))
    )
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(modeling, "triton_available", lambda: False)
    with pytest.raises(UserError, match="--compile cannot work here: Triton is not installed"):
        trainer_module.Trainer(parse_args(train_args(tiny_model, small_csv, tmp_path / "run", cache_dir, "--compile")))
    assert not (tmp_path / "run").exists()


def _emulating_gpu(capability):
    """torch.cuda.is_bf16_supported as on a GPU of ``capability``: emulated bf16 below 8.0."""
    return lambda including_emulation=True: capability >= (8, 0) or including_emulation


@pytest.mark.parametrize(
    "capability, requested, expected, level",
    [
        ((8, 0), "auto", "bf16", None),  # A100 and newer: native bf16
        ((9, 0), "bf16", "bf16", None),
        ((7, 5), "auto", "no", "INFO"),  # T4 / RTX 20xx: emulated bf16 only: fp32, and the log says why
        ((7, 0), "bf16", "no", "WARNING"),  # V100 asked for bf16: fp32, with a warning
        ((6, 1), "auto", "no", "INFO"),
    ],
)
def test_bf16_needs_native_support_not_emulation(monkeypatch, caplog, capability, requested, expected, level):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", _emulating_gpu(capability))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert torch.cuda.is_bf16_supported()  # what the old check asked: emulation counted
    with caplog.at_level("INFO", logger=modeling.log.name):
        assert modeling.resolve_precision(requested, torch.device("cuda")) == expected
    lines = [r for r in caplog.records if "training in fp32" in r.getMessage()]
    if level is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].levelname == level
        assert f"compute capability {capability[0]}.{capability[1]}) has no native bf16" in lines[0].getMessage()


@pytest.mark.parametrize(
    "requested, device, bf16_supported, expected, warned",
    [
        ("auto", "cuda", True, "bf16", False),  # the default: bf16 wherever the GPU has it
        ("bf16", "cuda", True, "bf16", False),
        ("no", "cuda", True, "no", False),  # asked for fp32: fp32, even on a bf16 GPU
        ("auto", "cuda", False, "no", False),  # an older GPU: fp32 (never fp16: T5 overflows), quietly
        ("bf16", "cuda", False, "no", True),  # asked for bf16 it cannot have: fp32, and says so
        ("auto", "cpu", True, "no", False),
        ("bf16", "cpu", True, "no", True),
    ],
)
def test_precision_is_bf16_only_where_the_gpu_has_it_and_never_fp16(
    monkeypatch, caplog, requested, device, bf16_supported, expected, warned
):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0) if bf16_supported else (7, 5))
    with caplog.at_level("WARNING"):
        assert modeling.resolve_precision(requested, torch.device(device)) == expected
    assert any("training in fp32" in r.getMessage() for r in caplog.records) is warned


def test_optimizer_skips_weight_decay_on_layer_norms(tiny_model):
    model = modeling.load_model(tiny_model)
    opt = modeling.make_optimizer(model, 1e-3, 0.1, torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("layer_norm" in names[id(p)] for p in no_decay["params"])
    assert model.dtype == torch.float32


def test_unknown_model_is_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot load the model"):
        modeling.load_model(tmp_path / "nowhere")


def test_separate_eval_file(tiny_model, small_csv, sample_csv, cache_dir, tmp_path):
    from chef_genius.train.config import parse_args
    from chef_genius.train.trainer import Trainer
    from conftest import train_args

    # the validation file holds the 96 training recipes too, so duplicate removal is off: with it, they
    # would all leave training as twins of held-out recipes (refused: tests/train/test_dedup_run.py)
    trainer = Trainer(
        parse_args(
            train_args(tiny_model, small_csv, tmp_path / "o", cache_dir, "--eval-data", sample_csv, "--dedup", "off")
        )
    )
    trainer.setup()
    assert len(trainer.train_data) == 96 and len(trainer.eval_data) == 400
