"""Checkpoint costs: one full save vs raw safetensors + torch.save, the stall of an async save vs a
sync one, and the time to the first step when resuming at a very large step vs at step 0."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from chef_genius.checkpoint import format as ckpt
from chef_genius.checkpoint import files as ckfiles
from chef_genius.checkpoint import commit as ckcommit
from chef_genius.train import rng
from chef_genius.checkpoint.async_writer import AsyncCheckpointer
from chef_genius.data.tokenized import LABEL_PAD, Collator, RecipeDataset, load_tokenized
from chef_genius.model.loading import load_model, load_tokenizer, make_optimizer
from chef_genius.train.state import RunState

from .common import Profile, train_flags

REPEATS = 3


def _repeats(profile: Profile) -> int:
    return 1 if profile.mode == "smoke" else REPEATS


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _model_and_state(model_dir: Path, device: torch.device = torch.device("cpu")):
    model = load_model(model_dir).to(device)
    optimizer = make_optimizer(model, 1e-4, 0.01, device)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()  # creates the Adam moments, so the state has its full size
    optimizer.zero_grad(set_to_none=True)
    state = ckpt.make_training_state(RunState(global_step=1), {}, optimizer.state_dict(), {"last_epoch": 1},
                                     rng.capture(), {})
    return model, optimizer, state


def _unique_tensors(state_dict: dict) -> dict:
    seen, tensors = set(), {}
    for name, tensor in state_dict.items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            tensors[name] = tensor.contiguous()
    return tensors


def save_vs_raw(profile: Profile, model_dir: Path, work: Path) -> dict:
    from safetensors.torch import save_file

    tokenizer = load_tokenizer(str(model_dir))
    model, _, state = _model_and_state(model_dir)
    tensors = _unique_tensors(model.state_dict())

    def save_model(folder):
        model.save_pretrained(folder, max_shard_size="1000GB")
        tokenizer.save_pretrained(folder)

    ours, raw, raw_fsync, hashing = [], [], [], []
    repeats = _repeats(profile)
    for i in range(repeats):
        out = work / f"save-{i}"
        ours.append(_timed(lambda: ckcommit.write_checkpoint(out, 1, save_model, state)))
        raw_dir = work / f"raw-{i}"
        raw_dir.mkdir(parents=True)
        raw.append(_timed(lambda: (save_file(tensors, raw_dir / "w.safetensors", metadata={"format": "pt"}),
                                   torch.save(state, raw_dir / "s.pt"))))
        raw_fsync.append(raw[-1] + _timed(lambda: [ckfiles.fsync_file(p) for p in raw_dir.iterdir()]))
        hashing.append(_timed(lambda: [ckfiles.sha256_file(p) for p in raw_dir.iterdir()]))
        size = sum(p.stat().st_size for p in raw_dir.iterdir())
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(raw_dir, ignore_errors=True)
    return dict(name="save_vs_raw", ours=statistics.median(ours), baseline=statistics.median(raw), unit="s",
                target="<= 1.25", bytes=size, repeats=repeats,
                raw_plus_fsync_s=statistics.median(raw_fsync), sha256_of_raw_files_s=statistics.median(hashing),
                note="ours = write_checkpoint (staging, fsync, sha256 manifest, rename) of save_pretrained + "
                     "tokenizer + torch.save(training state); baseline = safetensors.save_file + torch.save, "
                     "no fsync, no hashing")


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
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=batch["decoder_input_ids"]).logits
    loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=LABEL_PAD)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()  # the bench times steps; the trainer never syncs here


def async_save_stall(profile: Profile, model_dir: Path, data: Path, work: Path, cache: Path) -> dict:
    """Seconds one save blocks training, async vs sync; also (save + K steps) minus (K steps). K steps
    last about twice as long as a sync save, so the background write can finish behind them."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, optimizer, _ = _model_and_state(model_dir, device)
    batches, tokenizer = _train_batches(profile, model_dir, data, cache, 4)
    state_of = lambda: ckpt.make_training_state(RunState(), {}, optimizer.state_dict(), {}, rng.capture(), {})

    def save_model(folder, weights=None):
        model.save_pretrained(folder, max_shard_size="1000GB", state_dict=weights)
        tokenizer.save_pretrained(folder)

    for batch in batches:
        _step(model, optimizer, batch)  # warm-up
    step_s = min(_timed(lambda: _step(model, optimizer, batches[0])) for _ in range(3))
    sync_s = _timed(lambda: ckcommit.write_checkpoint(work / "stall-warm", 1, save_model, state_of()))
    steps = max(4, min(400, int(2 * sync_s / step_s) + 2))

    def run(kind: str, n: int) -> tuple[float, float]:
        saver = AsyncCheckpointer()
        started = time.perf_counter()
        call = _timed(lambda: save(kind, n, saver))
        calls[kind].append(call)
        for i in range(steps):
            _step(model, optimizer, batches[i % len(batches)])
        elapsed = time.perf_counter() - started
        tail = _timed(saver.wait)
        return elapsed, tail

    def save(kind, n, saver):
        if kind == "sync":
            ckcommit.write_checkpoint(work / f"stall-{kind}-{n}", 1, save_model, state_of())
        elif kind == "async":
            weights = saver.snapshot(model.state_dict(), "model")
            state = saver.snapshot(state_of(), "state")
            saver.submit(lambda: ckcommit.write_checkpoint(work / f"stall-{kind}-{n}", 1,
                                                       lambda f: save_model(f, weights), state), "bench")

    calls = {"none": [], "sync": [], "async": []}
    lost = {"sync": [], "async": []}
    tails = []
    for n in range(_repeats(profile)):
        base, _ = run("none", n)
        for kind in ("sync", "async"):
            elapsed, tail = run(kind, n)
            lost[kind].append(max(elapsed - base, 0.0))
            if kind == "async":
                tails.append(tail)
    blocked = {k: statistics.median(v) for k, v in calls.items() if k != "none"}
    return dict(name="async_save_stall", ours=blocked["async"], baseline=blocked["sync"], unit="s blocked",
                target="<= 0.2", steps_after_save=steps, step_s=step_s,
                async_write_left_after_steps_s=statistics.median(tails),
                end_to_end_lost_s={k: statistics.median(v) for k, v in lost.items()},
                note="ours/baseline: seconds the training thread is blocked by one save (async: copy to CPU + "
                     "hand-off; sync: the whole write). end_to_end_lost_s: (save + K steps) - (K steps), which "
                     "also counts the background write competing for CPU cores; noisy on a shared CPU")


def _forge(source: Path, target_root: Path, step: int, steps_per_epoch: int, samples_per_epoch: int) -> Path:
    """A copy of checkpoint ``source`` moved to optimizer step ``step`` (mid-epoch), written like any other."""
    state = ckpt.load_training_state(source)
    epoch, within = divmod(step, steps_per_epoch)
    samples = min(within * (samples_per_epoch // steps_per_epoch), samples_per_epoch - 1)
    state["global_step"] = step
    state["epoch"] = epoch
    state["run_state"].update(global_step=step, epoch=epoch, samples_in_epoch=samples)
    state["data_position"].update(epoch=epoch, samples_in_epoch=samples)

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
    flags = train_flags(profile, model_dir, data, base, cache, "--max-steps", "1", "--save-steps", "1",
                        "--dataloader-num-workers", "0", "--epochs", str(big))
    assert main(flags) == 0
    source = ckpt.checkpoint_path(base, 1)
    saved = ckpt.load_training_state(source)
    spe = saved["hyperparameters"]["steps_per_epoch"]
    samples = saved["data_position"]["num_samples"]
    large_step = (big // 2) * spe + spe // 2  # mid-epoch, half a billion epochs in
    flags, runs = {}, {"zero": [], "large": []}
    for label, step in (("zero", 0), ("large", large_step)):
        root = work / f"resume-{label}"
        path = _forge(source, root, step, spe, samples)
        flags[label] = train_flags(profile, model_dir, data, root, cache, "--max-steps", "0", "--epochs",
                                   str(big + 1), "--dataloader-num-workers", "0", "--resume-from-checkpoint", str(path))
    for _ in range(_repeats(profile) + 1):  # alternated, so a drift in the machine's load hits both
        for label in runs:
            runs[label].append(_time_to_first_step(flags[label]))
    times = {label: (min(r[0] for r in rs), min(r[1] for r in rs)) for label, rs in runs.items()}
    return dict(name="resume_startup", ours=times["large"][0], baseline=times["zero"][0],
                unit="s to first batch", target="<= 1.1", large_step=large_step, samples_per_epoch=samples,
                with_first_step_s={"large": times["large"][1], "zero": times["zero"][1]},
                note="Trainer setup (checkpoint load, restore, data position) until the first batch is ready, "
                     "resuming at step %d (mid-epoch) vs at step 0; with_first_step_s adds the first step, whose "
                     "batch length differs between the two positions" % large_step)
