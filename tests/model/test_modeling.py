import sys

import pytest
import torch

from chef_genius.model import loading as modeling
from chef_genius.errors import UserError


def test_compile_defaults(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert modeling.should_compile(None, cpu)[0] is False
    assert modeling.should_compile(True, cpu)[0] is True
    assert modeling.should_compile(False, cuda)[0] is False
    monkeypatch.setattr(modeling, "triton_available", lambda: False)
    monkeypatch.setattr(sys, "platform", "win32")
    enabled, why = modeling.should_compile(None, cuda)
    assert not enabled and "Windows" in why
    monkeypatch.setattr(modeling, "triton_available", lambda: True)
    assert modeling.should_compile(None, cuda)[0] is True


@pytest.mark.parametrize("requested, device, bf16_supported, expected, warned", [
    ("auto", "cuda", True, "bf16", False),   # the default: bf16 wherever the GPU has it
    ("bf16", "cuda", True, "bf16", False),
    ("no", "cuda", True, "no", False),       # asked for fp32: fp32, even on a bf16 GPU
    ("auto", "cuda", False, "no", False),    # an older GPU: fp32 (never fp16: T5 overflows), quietly
    ("bf16", "cuda", False, "no", True),     # asked for bf16 it cannot have: fp32, and says so
    ("auto", "cpu", True, "no", False),
    ("bf16", "cpu", True, "no", True),
])
def test_precision_is_bf16_only_where_the_gpu_has_it_and_never_fp16(monkeypatch, caplog, requested, device,
                                                                    bf16_supported, expected, warned):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
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
    trainer = Trainer(parse_args(train_args(tiny_model, small_csv, tmp_path / "o", cache_dir,
                                            "--eval-data", sample_csv)))
    trainer.setup()
    assert len(trainer.train_data) == 96 and len(trainer.eval_data) == 400
