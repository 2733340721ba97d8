"""Checkpoint costs: one full save vs raw safetensors + torch.save, the stall of an async save vs a
sync one, and the time to the first step when resuming at a very large step vs at step 0."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import training_state as ckstate
from chef_genius.checkpoint import files as ckfiles
from chef_genius.checkpoint import commit as ckcommit
from chef_genius.train import rng
from chef_genius.data.tokenized import LABEL_PAD, Collator, RecipeDataset, load_tokenized
from chef_genius.model.loading import load_model, load_tokenizer, make_optimizer
from chef_genius.train.state import RunState

from .common import Profile, train_flags

REPEATS = 3
SAVE_REPEATS = 7
SAVE_SHAPE = "flan-t5-small"  # save_vs_raw on CPU: 726 MB of weights and Adam moments


def _repeats(profile: Profile) -> int:
    return profile.checkpoint_repeats or REPEATS


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def save_vs_raw_at(shape: str, profile: Profile, work: Path, repeats: int | None = None) -> dict:
    """``save_vs_raw`` on a randomly initialised model of ``shape`` (``tiny``, ``flan-t5-small``, ...)."""
    import os

    from .common import build_model_folder

    folder = build_model_folder(work, shape, name=f"save-{shape}")
    try:
        record = save_vs_raw(profile, folder, work, repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return dict(record, shape=shape, load_average=[round(x, 2) for x in os.getloadavg()])


def _model_and_state(model_dir: Path, device: torch.device = torch.device("cpu")):
    model = load_model(model_dir).to(device)
    optimizer = make_optimizer(model, 1e-4, 0.01, device)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()  # creates the Adam moments, so the state has its full size
    optimizer.zero_grad(set_to_none=True)
    state = ckstate.make_training_state(
        RunState(global_step=1), {}, optimizer.state_dict(), {"last_epoch": 1}, [rng.capture()], {}
    )
    return model, optimizer, state


def _unique_tensors(state_dict: dict) -> dict:
    seen, tensors = set(), {}
    for name, tensor in state_dict.items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            tensors[name] = tensor.contiguous()
    return tensors


def _spread(values: list[float]) -> list[float]:
    return [round(min(values), 4), round(max(values), 4)]


def save_vs_raw(profile: Profile, model_dir: Path, work: Path, profile_repeats: int | None = None) -> dict:
    """One checkpoint as the trainer writes it vs the least a durable save must do: safetensors.save_file
    of the weights and torch.save of the training state, both fsynced. Alternated, repeated."""
    from safetensors.torch import save_file

    from chef_genius.model.saving import PretrainedFiles

    tokenizer = load_tokenizer(str(model_dir))
    model, _, state = _model_and_state(model_dir)
    tensors = _unique_tensors(model.state_dict())
    files = PretrainedFiles(model, tokenizer)  # what ModelFiles.save writes

    def ours(out):
        ckcommit.write_checkpoint(out, 1, lambda folder: files.write(folder, model.state_dict()), state)

    def raw(folder):
        folder.mkdir(parents=True)
        save_file(tensors, folder / "w.safetensors", metadata={"format": "pt"})
        torch.save(state, folder / "s.pt")
        for path in sorted(folder.iterdir()):
            ckfiles.fsync_file(path)

    first = _timed(lambda: ours(work / "save-first"))  # makes the config and tokenizer files, once per run
    shutil.rmtree(work / "save-first", ignore_errors=True)
    times = {"ours": [], "raw": []}
    repeats = (
        profile.checkpoint_repeats
        or profile_repeats
        or (3 if profile.model_config == "flan-t5-large" else SAVE_REPEATS)
    )
    for i in range(repeats):
        order = (("ours", ours), ("raw", raw)) if i % 2 == 0 else (("raw", raw), ("ours", ours))
        for label, save in order:
            out = work / f"save-{label}-{i}"
            times[label].append(_timed(lambda: save(out)))  # noqa: B023 (timed at once, in this iteration)
            if label == "raw":
                size = sum(p.stat().st_size for p in out.iterdir())
                hashing = _timed(lambda: [ckfiles.sha256_file(p) for p in out.iterdir()])  # noqa: B023
            shutil.rmtree(out, ignore_errors=True)
    return dict(
        name="save_vs_raw",
        ours=statistics.median(times["ours"]),
        baseline=statistics.median(times["raw"]),
        unit="s",
        target="<= 1.25",
        bytes=size,
        repeats=repeats,
        ours_min_max=_spread(times["ours"]),
        baseline_min_max=_spread(times["raw"]),
        first_save_s=first,
        sha256_of_raw_files_s=hashing,
        note="ours = write_checkpoint (staging, one-pass sha256, batched fsync, manifest, rename) of the "
        "model files as ModelFiles.save writes them + torch.save(training state), after a first save; "
        "baseline = safetensors.save_file + torch.save, both fsynced, no hashing; alternated",
    )


def _train_batches(profile: Profile, model_dir: Path, data: Path, cache: Path, count: int):
    tokenizer = load_tokenizer(str(model_dir))
    dataset = RecipeDataset(load_tokenized(data, tokenizer, profile.max_source, profile.max_target, cache).dataset)
    collate = Collator(tokenizer.pad_token_id)
    size = profile.batch_size
    return [collate([dataset[(i * size + j) % len(dataset)] for j in range(size)]) for i in range(count)], tokenizer


def _step(model, optimizer, batch):
    device = next(model.parameters()).device
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
        ).logits
    loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=LABEL_PAD)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()  # the bench times steps; the trainer never syncs here


class _Slice:
    """A component of the bench's checkpoint manager: its state comes from ``state_of()``."""

    def __init__(self, state_of):
        self.state_dict = state_of

    def load_state_dict(self, state):
        raise NotImplementedError("the bench never resumes")


class _BenchModelFiles:
    def __init__(self, model, tokenizer):
        from chef_genius.model.saving import PretrainedFiles

        self.model, self.files = model, PretrainedFiles(model, tokenizer)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def save(self, folder, weights):
        return self.files.write(folder, weights)


def async_save_stall(profile: Profile, model_dir: Path, data: Path, work: Path, cache: Path) -> dict:
    """Seconds one save blocks training, async vs sync, both through the trainer's CheckpointManager;
    also (save + K steps) minus (K steps). K steps last about twice as long as a sync save, so the
    background write can finish behind them."""
    from chef_genius.checkpoint.manager import CheckpointManager

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, optimizer, _ = _model_and_state(model_dir, device)
    batches, tokenizer = _train_batches(profile, model_dir, data, cache, 4)
    model_files = _BenchModelFiles(model, tokenizer)
    components = {
        ckstate.RUN_STATE: RunState(global_step=1),
        ckstate.OPTIMIZER: _Slice(lambda: {"state": optimizer.state_dict(), "layout": None, "kind": "adamw"}),
        ckstate.RNG: _Slice(lambda: [rng.capture()]),
    }
    managers = {}

    def manager(kind: str, n: int) -> CheckpointManager:
        managers[kind] = managers.get(kind) or CheckpointManager(
            work / f"stall-{kind}", model_files, components, async_save=kind == "async", save_steps=10**9
        )
        managers[kind].output = work / f"stall-{kind}-{n}"
        managers[kind].output.mkdir(parents=True, exist_ok=True)
        return managers[kind]  # one per kind, as in a run: the async one reuses its buffers

    for batch in batches:
        _step(model, optimizer, batch)  # warm-up
    step_s = min(_timed(lambda: _step(model, optimizer, batches[0])) for _ in range(3))
    for kind in ("sync", "async"):  # a first save of each: the config and tokenizer bytes, the CPU buffers
        manager(kind, "warm").save(1)
        managers[kind].wait()
    sync_s = _timed(lambda: manager("sync", "warm2").save(1))
    steps = max(4, min(400, int(2 * sync_s / step_s) + 2))

    def run(kind: str, n: int) -> tuple[float, float]:
        saver = manager(kind, n) if kind != "none" else None
        started = time.perf_counter()
        calls[kind].append(_timed(lambda: saver and saver.save(1)))
        for i in range(steps):
            _step(model, optimizer, batches[i % len(batches)])
        elapsed = time.perf_counter() - started
        tail = _timed(lambda: saver and saver.wait())
        return elapsed, tail

    calls = {"none": [], "sync": [], "async": []}
    lost = {"sync": [], "async": []}
    tails = []
    for n in range(_repeats(profile)):
        base, _ = run("none", n)
        for kind in ("sync", "async") if n % 2 == 0 else ("async", "sync"):
            elapsed, tail = run(kind, n)
            lost[kind].append(max(elapsed - base, 0.0))
            if kind == "async":
                tails.append(tail)
    blocked = {k: statistics.median(v) for k, v in calls.items() if k != "none"}
    return dict(
        name="async_save_stall",
        ours=blocked["async"],
        baseline=blocked["sync"],
        unit="s blocked",
        target="<= 0.2",
        steps_after_save=steps,
        step_s=step_s,
        ours_min_max=_spread(calls["async"]),
        baseline_min_max=_spread(calls["sync"]),
        async_write_left_after_steps_s=statistics.median(tails),
        end_to_end_lost_s={k: statistics.median(v) for k, v in lost.items()},
        note="ours/baseline: seconds CheckpointManager.save blocks the training thread (async: gather the "
        "state, copy it into the reused CPU buffers, hand it to the writer; sync: the whole write). "
        "end_to_end_lost_s: (save + K steps) - (K steps), which also counts the background write "
        "competing for CPU cores; noisy on a shared CPU",
    )


def _forge(source: Path, target_root: Path, step: int, steps_per_epoch: int, samples_per_epoch: int) -> Path:
    """A copy of checkpoint ``source`` moved to optimizer step ``step`` (mid-epoch), written like any other."""
    slices = ckstate.unpack_training_state(ckstate.load_training_state(source))  # any layout version
    epoch, within = divmod(step, steps_per_epoch)
    samples = min(within * (samples_per_epoch // steps_per_epoch), samples_per_epoch - 1)
    slices[ckstate.RUN_STATE]["global_step"] = step
    slices[ckstate.DATA_POSITION].update(epoch=epoch, samples_in_epoch=samples)
    state = ckstate.pack_training_state(slices)  # each fact once, as a run writes it

    def copy_model(folder):
        for path in source.iterdir():
            if path.name not in (ckpt.TRAINING_STATE, ckpt.MANIFEST):
                shutil.copy2(path, folder / path.name)

    return ckcommit.write_checkpoint(target_root, step, copy_model, state)


def _time_to_first_step(flags: list[str]) -> tuple[float, float]:
    from chef_genius.train.config import parse_args
    from chef_genius.train.trainer import Trainer

    started = time.perf_counter()
    trainer = Trainer(parse_args(flags))
    try:
        trainer.setup()
        trainer.rng.apply()
        trainer.model.train()
        trainer.sampler.resume_iteration()
        batch = next(iter(trainer.loader))
        ready = time.perf_counter() - started
        trainer._train_step([batch])
        return ready, time.perf_counter() - started
    finally:
        trainer.close()  # the run lock: the next contender trains in the same folder


def resume_startup(profile: Profile, model_dir: Path, data: Path, work: Path, cache: Path) -> dict:
    from chef_genius.train.cli import main

    big = 1_000_000_000
    base = work / "resume-base"
    flags = train_flags(
        profile,
        model_dir,
        data,
        base,
        cache,
        "--max-steps",
        "1",
        "--save-steps",
        "1",
        "--dataloader-num-workers",
        "0",
        "--epochs",
        str(big),
    )
    assert main(flags) == 0
    source = ckpt.checkpoint_path(base, 1)
    saved = ckstate.load_training_state(source)
    spe = saved["hyperparameters"]["steps_per_epoch"]
    samples = saved["data_position"]["num_samples"]
    large_step = (big // 2) * spe + spe // 2  # mid-epoch, half a billion epochs in
    flags, runs = {}, {"zero": [], "large": []}
    for label, step in (("zero", 0), ("large", large_step)):
        root = work / f"resume-{label}"
        path = _forge(source, root, step, spe, samples)
        flags[label] = train_flags(
            profile,
            model_dir,
            data,
            root,
            cache,
            "--max-steps",
            "0",
            "--epochs",
            str(big + 1),
            "--dataloader-num-workers",
            "0",
            "--resume-from-checkpoint",
            str(path),
        )
    for _ in range(_repeats(profile) + 1):  # alternated, so a drift in the machine's load hits both
        for label in runs:
            runs[label].append(_time_to_first_step(flags[label]))
    times = {label: (min(r[0] for r in rs), min(r[1] for r in rs)) for label, rs in runs.items()}
    return dict(
        name="resume_startup",
        ours=times["large"][0],
        baseline=times["zero"][0],
        unit="s to first batch",
        target="<= 1.1",
        large_step=large_step,
        samples_per_epoch=samples,
        with_first_step_s={"large": times["large"][1], "zero": times["zero"][1]},
        note="Trainer setup (checkpoint load, restore, data position) until the first batch is ready, "
        f"resuming at step {large_step} (mid-epoch) vs at step 0; with_first_step_s adds the first step, "
        "whose batch length differs between the two positions",
    )


# ---------------------------------------------------------------------------------------------
# python -m bench.checkpoints: save_vs_raw at a real model's size (random weights, CPU)


def main(argv=None) -> int:
    import argparse
    import json
    import os
    import tempfile

    from .common import SHAPES, build_model_folder, make_profile, write_recipes_csv

    p = argparse.ArgumentParser(
        prog="python -m bench.checkpoints", description="save_vs_raw (and --stall: async_save_stall) at a FLAN-T5 size"
    )
    p.add_argument("--shape", choices=["tiny", *sorted(SHAPES), "flan-t5-large"], default=SAVE_SHAPE)
    p.add_argument("--repeats", type=int, default=SAVE_REPEATS)
    p.add_argument("--stall", action="store_true", help="also the async save's stall, training the shape on CPU")
    args = p.parse_args(argv)
    profile = make_profile("quick", "tiny", gpu=False)
    with tempfile.TemporaryDirectory(prefix="chef-bench-save-") as scratch:
        work = Path(scratch)
        print(json.dumps(save_vs_raw_at(args.shape, profile, work, args.repeats)), flush=True)
        if args.stall:
            folder = build_model_folder(work, args.shape, name=f"stall-{args.shape}")
            data = write_recipes_csv(work / "train.csv", 200)
            record = async_save_stall(profile, folder, data, work, work / "cache")
            print(json.dumps(dict(record, shape=args.shape, load_average=[round(x, 2) for x in os.getloadavg()])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
