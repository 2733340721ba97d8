"""Run by test_distributed.py under torchrun: FSDP2 on CPU/gloo through chef_genius.train.sharded.

Shards the tiny T5 per T5Block (as configs/accelerate_fsdp.yaml does), takes a step, gathers the full
model and name-keyed optimizer state, reloads the optimizer from it the way a resume does (every
rank reads the full state) and takes another step. Writes ``ok`` files into argv[2] on success.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForSeq2SeqLM
from transformers.models.t5.modeling_t5 import T5Block

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from chef_genius.checkpoint import training_state as ckstate  # noqa: E402
from chef_genius.train import sharded  # noqa: E402


class _FsdpAccelerator:  # what sharded.py asks of accelerate's Accelerator
    distributed_type = "FSDP"

    def get_state_dict(self, model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def main(model_dir: str, out: str) -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    for module in model.modules():
        if isinstance(module, T5Block):
            fully_shard(module)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(3, 100, (2, 8))
    model(input_ids=x, labels=x).loss.backward()
    optimizer.step()
    accelerator = _FsdpAccelerator()
    weights = sharded.gather_model_state(accelerator, model)
    saved, layout = sharded.gather_optimizer_state(accelerator, model, optimizer)
    box = [saved]
    dist.broadcast_object_list(box, src=0)  # on resume every rank reads training_state.pt
    sharded.load_optimizer_by_name(model, optimizer, box[0])
    model(input_ids=x, labels=x).loss.backward()
    optimizer.step()
    if dist.get_rank() == 0:
        full = AutoModelForSeq2SeqLM.from_pretrained(model_dir).state_dict()
        assert layout == ckstate.OPTIMIZER_LAYOUT_NAMES
        assert all(name in weights and weights[name].shape == t.shape for name, t in full.items() if name in weights), (
            "gathered weights have the shapes of the bare model"
        )
        assert "shared.weight" in box[0]["state"]
    Path(out, f"ok-{dist.get_rank()}").write_text("ok")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
