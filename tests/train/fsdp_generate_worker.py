"""Run by test_fsdp_generation.py under torchrun: the evaluation's generation on the tiny T5 sharded
with FSDP2 over 2 CPU processes (gloo), per T5Block as configs/accelerate_fsdp.yaml does.

Every rank calls the real ``Evaluation`` methods as the trainer does under FSDP (``evaluation_texts``,
which the test also runs on the unsharded model in one process), then a direct synced generation
whose length differs by rank: rank 0 stops after 4 new tokens while rank 1 goes on to 20, so rank 0
must keep joining rank 1's all-gathers. Each rank checks that its RNG streams are untouched and that
only rank 0 wrote to its reporter, and writes what it got to ``argv[2]/rank-<r>.json``.
"""

import contextlib
import faulthandler
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from chef_genius.data.readers import ReadStats, read_examples  # noqa: E402
from chef_genius.data.recipes import DEFAULT_SOURCE_TEMPLATE  # noqa: E402
from chef_genius.model.generation import GenerationSettings, generate_texts  # noqa: E402
from chef_genius.paths import SAMPLE_DATA  # noqa: E402
from chef_genius.train import rng, sharded  # noqa: E402
from chef_genius.train.evaluation import Evaluation  # noqa: E402

SHORT, LONG = 4, 20  # new tokens of rank 0's and rank 1's direct generation
DIRECT_INPUT = "chicken, rice, garlic"
WATCHDOG_SECONDS = 60  # the whole run takes ~15 s on 2 busy cores


class Accelerator:  # what Evaluation asks of accelerate's Accelerator
    device = torch.device("cpu")
    autocast = contextlib.nullcontext

    def __init__(self, distributed_type: str, rank: int = 0, world: int = 1):
        self.distributed_type, self.process_index, self.num_processes = distributed_type, rank, world
        self.is_main_process = rank == 0


class Recorder:  # the run's reporters
    def __init__(self):
        self.records = []

    def write(self, record: dict) -> None:
        self.records.append(record)


def eval_data(tokenizer, count: int = 3) -> list[tuple[list[int], list[int]]]:
    """The first ``count`` sample recipes as (input_ids, labels) rows, as a RecipeDataset gives them."""
    rows = []
    for example in read_examples(SAMPLE_DATA, ReadStats()):
        rows.append(
            (
                tokenizer(example["source"], truncation=True, max_length=64)["input_ids"],
                tokenizer(example["target"], truncation=True, max_length=64)["input_ids"],
            )
        )
        if len(rows) == count:
            return rows
    return rows


def evaluation_texts(model, tokenizer, accelerator) -> dict:
    """The generation of one evaluation with recipe metrics and samples, the demo's preview and the final
    generation at a later step, through ``Evaluation``; the reporter's records, and whether every RNG
    stream is as it was."""
    config = SimpleNamespace(
        eval_generate=3,
        eval_samples=2,
        max_target_length=12,
        max_source_length=64,
        source_template=DEFAULT_SOURCE_TEMPLATE,
        progress="log",
    )
    reporters = Recorder()
    evaluation = Evaluation(
        config, accelerator, tokenizer, eval_data(tokenizer), None, reporters, SimpleNamespace(global_step=5)
    )
    before = rng.capture()
    preview = evaluation.preview(model)
    metrics = evaluation.log_generation(model)
    evaluation.log_samples(model)
    evaluation.state.global_step = 6  # the final model is newer than the last evaluation: it generates again
    final = evaluation.final_generation(model)
    after = rng.capture()
    same_rng = (
        before["python"] == after["python"]
        and torch.equal(before["torch"], after["torch"])
        and torch.equal(before["numpy"]["keys"], after["numpy"]["keys"])
    )
    return {
        "preview": preview and list(preview),
        "metrics_agree": metrics is not None,
        "final": final and [final[0], [d["text"] for d in final[2]]],
        "records": [{k: v for k, v in r.items() if k != "generation_seconds"} for r in reporters.records],
        "same_rng": same_rng,
    }


def direct_text(model, tokenizer, max_new_tokens: int, synced: bool) -> str:
    model.eval()  # generate_texts leaves the mode to its caller
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    return generate_texts(model, tokenizer, [DIRECT_INPUT], settings, torch.device("cpu"), synced=synced)[0][0]


def main(model_dir: str, out: str) -> None:
    # a deadlock ends this worker with its stack (torchrun then ends the other), not gloo's 30-minute timeout
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from accelerate import PartialState
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    from transformers.models.t5.modeling_t5 import T5Block

    state = PartialState(cpu=True)  # the gloo process group, and what accelerate's broadcast asks of it
    rank = dist.get_rank()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    for module in model.modules():
        if isinstance(module, T5Block):
            fully_shard(module)
    fully_shard(model)
    sharded.prepare_generation(model)  # as the trainer does after accelerate's prepare
    model.train()  # as the trainer's model is between steps
    result = evaluation_texts(model, tokenizer, Accelerator("FSDP", rank, state.num_processes))
    result["training_mode"] = model.training
    result["direct"] = direct_text(model, tokenizer, SHORT if rank == 0 else LONG, synced=True)
    Path(out, f"rank-{rank}.json").write_text(json.dumps(result))
    # both ranks leave together: a rank tearing gloo down while the other still talks to it aborted once
    # in CI ("terminate called without an active exception", SIGABRT after both results were right)
    dist.barrier()
    dist.destroy_process_group()
    faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
