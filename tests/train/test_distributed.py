"""Data-parallel training on 2 CPU processes (gloo), launched as users launch it.

Each launch costs ~15 s of process start-up, so the runs are few and chained: a 2-process run that
stops mid-epoch-2 (coverage of epoch 1, its checkpoint verifies), a 2-process run resuming its step-8
checkpoint (same world size: bitwise), then two steps on 1 process (2 -> 1) and the rest of epoch 2 on
2 processes through ``accelerate launch`` (1 -> 2), every sample of epoch 2 exactly once; and, without
dropout, 2 processes give the losses of 1 process with the same global batch, cached or ``--streaming``.
"""

from __future__ import annotations

import collections
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_training, step_losses, train_args

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.train.distributed import SAMPLE_LOG_ENV, planned_total_steps
from chef_genius.data.sampler import ResumableBatchSampler

CLI = str(REPO / "cli" / "complete_optimized_training.py")
# 43 training recipes with 3 per device on 2 processes: the last global micro-batch holds 1 sample,
# so rank 1 runs a padding row there; 8 optimizer steps per epoch. The row split (--dedup off) keeps
# that count exact: the content split holds out the ratio only up to sampling noise.
EXTRA = ("--batch-size", "3", "--eval-split-ratio", "0.05", "--save-steps", "4", "--eval-steps", "4", "--dedup", "off")
NUM_TRAIN = 43


@pytest.fixture(scope="module")
def data45(tmp_path_factory, sample_csv) -> Path:
    import csv

    with open(sample_csv, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))[:46]
    path = tmp_path_factory.mktemp("data45") / "recipes45.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


@pytest.fixture(scope="module")
def no_dropout_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with dropout off, so runs that see the same samples give the same losses."""
    import json

    model = tmp_path_factory.mktemp("tiny-no-dropout") / "model"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "dropout_rate": 0.0}))
    return model


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(launcher: str, args: list[str], sample_log: Path) -> None:
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    else:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_free_port()),
        ]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        **{SAMPLE_LOG_ENV: str(sample_log)},
    )
    done = subprocess.run(cmd + [CLI, *args], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]


def _seen(sample_log: Path) -> dict[int, collections.Counter]:
    """epoch -> Counter of sample indices, over every rank's file."""
    seen = collections.defaultdict(collections.Counter)
    for path in sample_log.glob("rank-*.txt"):
        for line in path.read_text().splitlines():
            epoch, index = map(int, line.split())
            seen[epoch][index] += 1
    return seen


def _exactly_once(counter: collections.Counter, num_samples: int = NUM_TRAIN) -> bool:
    return sorted(counter) == list(range(num_samples)) and set(counter.values()) == {1}


# ---------------------------------------------------------------------------------------------
# pure parts (fast)


def test_every_rank_gets_a_batch_and_padding_only_when_samples_run_out():
    for world in (1, 2, 3):
        shares = [list(ResumableBatchSampler(7, 2, seed=1, num_replicas=world, rank=r)) for r in range(world)]
        assert len({len(s) for s in shares}) == 1  # same number of micro-batches on every rank: no hang
        real = sorted(i for s in shares for batch in s for i in batch if i >= 0)
        assert real == list(range(7))
        for batches in zip(*shares):
            assert all(batch for batch in batches)
            if sum(i >= 0 for batch in batches for i in batch) >= world:
                assert all(i >= 0 for batch in batches for i in batch)


def test_plan_after_world_size_change_finishes_the_epochs():
    # 1 process, 43 samples, 3 per step: 15 steps/epoch; 4 steps (12 samples) done, resumed on 2 processes.
    assert planned_total_steps(4, 0, 12, 43, 6, 1, 2) == 4 + 6 + 8
    # unchanged world size (2 processes, 8 steps/epoch, step 11 = 3 steps into epoch 2): the plain count
    assert planned_total_steps(11, 1, 18, 43, 6, 1, 2) == 8 * 2


# ---------------------------------------------------------------------------------------------
# launched runs


def test_two_processes_cover_each_sample_once_and_resume_across_world_sizes(
    tiny_model, data45, cache_dir, tmp_path, monkeypatch
):
    run_a, log_a = tmp_path / "a", tmp_path / "log-a"
    _launch("torchrun", train_args(tiny_model, data45, run_a, cache_dir, *EXTRA, "--stop-after-steps", "11"), log_a)
    seen = _seen(log_a)
    assert _exactly_once(seen[0]), "epoch 1 on 2 processes must see every sample exactly once"
    assert sum(seen[1].values()) == 18 and max(seen[1].values()) == 1

    # the checkpoint written by rank 0 verifies and loads like any other
    checkpoint = run_a / "checkpoint-11"
    assert ckmanifest.manifest_problems(checkpoint, verify_hashes=True) == []
    state = ckstate.load_training_state(checkpoint)
    per_rank = ckstate.rng_per_rank(state)
    assert len(per_rank) == 2
    assert not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])
    assert state["data_position"]["samples_in_epoch"] == 18
    from safetensors.torch import load_file

    assert not any(k.startswith("module.") for k in load_file(checkpoint / ckpt.WEIGHTS))
    from transformers import AutoModelForSeq2SeqLM

    AutoModelForSeq2SeqLM.from_pretrained(checkpoint)

    # same world size: resuming step 8 on 2 processes repeats steps 9..11 bit for bit
    run_e, log_e = tmp_path / "e", tmp_path / "log-e"
    run_e.mkdir()
    shutil.copytree(run_a / "checkpoint-8", run_e / "checkpoint-8")
    _launch(
        "torchrun",
        train_args(tiny_model, data45, run_e, cache_dir, *EXTRA, "--stop-after-steps", "3", "--auto-resume"),
        log_e,
    )
    a_losses, e_losses = step_losses(run_a), step_losses(run_e)
    assert [e_losses[k] for k in (9, 10, 11)] == [a_losses[k] for k in (9, 10, 11)]

    # 2 -> 1 -> 2: two steps of epoch 2 on one process, the rest on two through accelerate launch;
    # every sample of epoch 2 exactly once over the three runs
    monkeypatch.setenv(SAMPLE_LOG_ENV, str(log_a))
    args = train_args(tiny_model, data45, run_a, cache_dir, *EXTRA, "--auto-resume")
    assert run_training(*args, "--stop-after-steps", "2") == 0
    assert sum(_seen(log_a)[1].values()) == 18 + 6
    _launch("accelerate", args, log_a)
    assert _exactly_once(_seen(log_a)[1])
    final = ckmanifest.find_latest(run_a)[0]
    assert ckmanifest.manifest_problems(final) == []
    assert ckstate.saved_epoch(ckstate.load_training_state(final)) == 2


def test_fsdp_state_dicts_gather_and_reload_on_cpu(tiny_model, tmp_path):
    """FSDP2 itself on 2 CPU processes; accelerate's FSDP plugin needs GPUs, so the trainer refuses it here."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "tests" / "train" / "fsdp_worker.py"),
        str(tiny_model),
        str(tmp_path),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("ok-*")) == ["ok-0", "ok-1"]


def test_launches_that_would_train_something_else_are_refused(monkeypatch):
    from types import SimpleNamespace

    from chef_genius.train.distributed import check_launch
    from chef_genius.errors import UserError

    cpu = SimpleNamespace(num_processes=1, device=torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "2")  # two processes that each set up a world of one
    with pytest.raises(UserError, match="each train alone"):
        check_launch(cpu, fsdp_requested=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(UserError, match="FSDP config needs CUDA"):
        check_launch(cpu, fsdp_requested=True)
    check_launch(cpu, fsdp_requested=False)


def test_name_keyed_optimizer_state_of_an_fsdp_checkpoint_loads_without_fsdp(tiny_model):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    from transformers import AutoModelForSeq2SeqLM

    from chef_genius.train import sharded
    from chef_genius.model.loading import make_optimizer

    def model_and_optimizer():
        model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model)
        return model, make_optimizer(model, 1e-3, 0.01, torch.device("cpu"))

    model, optimizer = model_and_optimizer()
    x = torch.randint(3, 100, (2, 8))
    model(input_ids=x, labels=x).loss.backward()
    optimizer.step()
    saved = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    assert "shared.weight" in saved["state"]
    fresh_model, fresh = model_and_optimizer()
    sharded.load_optimizer_by_name(fresh_model, fresh, saved)
    for before, after in zip(optimizer.state_dict()["state"].values(), fresh.state_dict()["state"].values()):
        assert torch.equal(before["exp_avg"], after["exp_avg"])


def test_two_processes_train_like_one_with_the_global_batch(no_dropout_model, data45, cache_dir, tmp_path):
    """Without dropout, 2 x 3 per device equals 1 x 6: the loss is normalised by the global target tokens,
    and the padding row of the last step (43 = 7 x 6 + 1) adds nothing."""
    _one_process_x6_equals_two_x3(no_dropout_model, data45, cache_dir, tmp_path, "--save-steps", "100")


def _one_process_x6_equals_two_x3(model, data45, cache_dir, tmp_path, *flags) -> None:
    """One epoch on 1 process x 6 and on 2 processes x 3 (torchrun): the same step losses."""
    common = ("--eval-split-ratio", "0.05", "--epochs", "1", "--eval-steps", "100", *flags)
    assert run_training(*train_args(model, data45, tmp_path / "one", cache_dir, *common, "--batch-size", "6")) == 0
    _launch(
        "torchrun",
        train_args(model, data45, tmp_path / "two", cache_dir, *common, "--batch-size", "3"),
        tmp_path / "log",
    )
    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 9))
    assert [two[k] for k in one] == pytest.approx([one[k] for k in one], rel=1e-5, abs=1e-6)


def test_streaming_on_two_processes_pads_the_short_last_batch(no_dropout_model, data45, cache_dir, tmp_path):
    """--streaming on 2 processes, 2 per device: 45 recipes end the epoch on a global micro-batch of 1,
    so rank 1 steps on a padding row; every recipe is trained on once and the losses are those of
    1 process x 4 (the padding row adds nothing)."""
    common = ("--streaming", "--eval-split-ratio", "0", "--epochs", "1", "--save-steps", "100")
    _launch(
        "torchrun",
        train_args(no_dropout_model, data45, tmp_path / "two", cache_dir, *common, "--batch-size", "2"),
        tmp_path / "log",
    )
    assert _exactly_once(_seen(tmp_path / "log")[0], num_samples=45)
    assert (
        run_training(*train_args(no_dropout_model, data45, tmp_path / "one", cache_dir, *common, "--batch-size", "4"))
        == 0
    )
    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 13))  # ceil(45 / 4) steps
    assert [two[k] for k in one] == pytest.approx([one[k] for k in one], rel=1e-5, abs=1e-6)


def test_a_run_folder_held_by_a_live_run_ends_every_rank_with_one_line(tiny_model, data45, cache_dir, tmp_path):
    from chef_genius.checkpoint.runlock import RunLock

    out = tmp_path / "run"
    out.mkdir()
    RunLock(out).acquire()  # this test process is the live run
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        CLI,
        *train_args(tiny_model, data45, out, cache_dir, *EXTRA),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)  # rank 1 must not wait
    assert done.returncode != 0
    assert done.stderr.count("is in use by another training run") == 1, done.stderr[-3000:]
    # torchrun prints its own ChildFailedError; no rank may end in a traceback (a collective left waiting)
    assert not any(line.startswith("[rank") and "Traceback" in line for line in done.stderr.splitlines()), done.stderr[
        -3000:
    ]


def test_lora_on_two_processes_trains_like_one_and_saves_the_adapter(no_dropout_model, data45, cache_dir, tmp_path):
    """LoRA under DDP (adapter dropout off, like the model's): only the adapter is trained and synchronised,
    so 2 x 3 per device still equals 1 x 6, and rank 0 saves the adapter (not the DDP wrapper's names) in
    a checkpoint that verifies."""
    _one_process_x6_equals_two_x3(
        no_dropout_model, data45, cache_dir, tmp_path, "--save-steps", "4", "--lora-r", "4", "--lora-dropout", "0"
    )
    checkpoint = tmp_path / "two" / "checkpoint-8"
    assert ckmanifest.manifest_problems(checkpoint, verify_hashes=True) == []
    names = {p.name for p in checkpoint.iterdir()}
    assert ckpt.WEIGHTS not in names and any("adapter" in name for name in names)


class _RecordingModel(torch.nn.Linear):
    """Records each ``.to`` (a CUDA device cannot be reached here) and where it was at ``prepare``."""

    def __init__(self, events: list):
        super().__init__(2, 2)
        self.events = events

    def to(self, *args, **kwargs):
        self.events.append(("to", str(args[0] if args else kwargs.get("device"))))
        return self


@pytest.mark.parametrize(
    "distributed_type, expected",
    [
        ("FSDP", [("prepare", "cpu")]),  # sharded by prepare, each shard on its GPU; never whole on one
        ("MULTI_GPU", [("to", "cuda:1"), ("prepare", "cpu")]),
        ("NO", [("to", "cuda:1"), ("prepare", "cpu")]),
    ],
)
def test_fsdp_prepares_the_model_where_it_was_loaded(distributed_type, expected):
    """fsdp_cpu_ram_efficient_loading (configs/accelerate_fsdp.yaml) only helps if the model reaches
    accelerate's prepare on the CPU (or meta): moving it to the GPU first puts all of it on every GPU."""
    from types import SimpleNamespace

    from chef_genius.train import sharded

    events = []
    model, optimizer = _RecordingModel(events), object()

    def prepare(*objects):
        events.append(("prepare", str(next(objects[0].parameters()).device)))
        return objects

    accelerator = SimpleNamespace(distributed_type=distributed_type, prepare=prepare)
    assert sharded.prepare(accelerator, model, optimizer, torch.device("cuda:1")) == (model, optimizer)
    assert events == expected
