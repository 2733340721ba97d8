"""Every repair code ``--fix`` reports, in one registry (the twin of ``problems.py`` for repairs).

A code's string value is what ``--json`` prints in ``repairs`` (``{"code": ..., "message": ...}``) and what
``fix_all_checkpoints.py``'s table lists: users script against it, so a value never changes. Each member
also says when the repair is made, what it does and what is lost. CHECKPOINT_FIX_GUIDE.md's table of
repairs is generated from here (``python -m chef_genius.devtools.references --write``) and a test fails
when the two disagree.
"""

from __future__ import annotations

from enum import Enum

from chef_genius.doctor.codes import code_member


class Repair(str, Enum):
    """A repair code: ``Repair.X == "x"``, so the JSON values and the members mix freely."""

    when: str
    does: str
    lost: str

    def __new__(cls, value: str, when: str, does: str, lost: str):
        return code_member(cls, value, when=when, does=does, lost=lost)

    def __str__(self) -> str:  # the code itself in f-strings and messages
        return self.value

    STATE_REBUILT = (
        "state_rebuilt",
        (
            "`training_state.pt` missing (or unreadable, or its size / sha256 differs from the manifest: the "
            "original is kept in the backup, even with `--no-backup`)"
        ),
        (
            "builds it with `global_step` from the folder name; epoch and data position from the run's steps per "
            "epoch and samples per step, found in the nearest sibling checkpoint's saved settings, or given with "
            "`--steps-per-epoch` / `--samples-per-step`; the learning-rate scheduler placed exactly at that step "
            "of the run's schedule (sibling's settings, or `--learning-rate`, `--warmup-steps`, `--total-steps`, "
            "`--lr-scheduler`; any it had to assume are named in the message)"
        ),
        (
            "Adam's moments (the optimizer state is empty and marked so; on resume the learning rate re-warms "
            "over `--optimizer-rewarmup-steps`, default 100, instead of restarting the whole warmup); RNG streams"
            " (python, numpy and torch states seeded from the run's seed and the step; `rebuilt` in the state "
            "names what was rebuilt); the best validation loss"
        ),
    )
    STATE_CONVERTED_LEGACY = (
        "state_converted_legacy",
        "a legacy `training_state.pt`",
        (
            "converts it to this project's format: epoch 1-based -> 0-based, numpy RNG arrays -> tensors, the "
            "optimizer state mapped onto this project's parameter groups (from its own, Hugging Face's or a "
            "single-group layout), the scheduler's learning rate kept"
        ),
        (
            "the data position inside the epoch when the steps per epoch are unknown (starts the epoch over; pass"
            " `--steps-per-epoch` and `--samples-per-step`); the optimizer state only if it fits no known layout "
            "(then re-warm)"
        ),
    )
    STATE_CONVERTED_HF = (
        "state_converted_hf",
        "a Hugging Face Trainer checkpoint",
        (
            "builds `training_state.pt` from `trainer_state.json` (step, steps per epoch, planned end), "
            "`training_args.bin` (read without unpickling, section 3: learning rate, scheduler `linear` / "
            "`cosine` / `constant` / `constant_with_warmup`, warmup steps or ratio, per-device batch, "
            "accumulation, max steps / epochs, seed, weight decay, processes), `optimizer.pt` (moments mapped by "
            "parameter name onto this project's groups), `scheduler.pt` (peak learning rate) and `rng_state.pth` "
            "/ `rng_state_0.pth`. The data position is optimizer steps x batch x accumulation x processes into "
            "the epoch; the state carries the schedule and those settings, so a resume with no flags continues "
            "Hugging Face's learning rate (to 1e-6 relative) with the same batch shape. What the files do not "
            "tell (no or unreadable `training_args.bin`, another scheduler) must be given: `--fix` names the "
            "flags and writes nothing until they are"
        ),
        (
            "the exact sample order (the run continues at the same position of the epoch in this project's "
            "order); the RNG of processes other than the first; inside Hugging Face's warmup, its ramp "
            "(`k/warmup`) becomes this project's (`(k+1)/warmup`) for the remaining warmup steps"
        ),
    )
    STATE_CONVERTED_ACCELERATE = (
        "state_converted_accelerate",
        "an `Accelerator.save_state` folder",
        (
            "copies `config.json` and the tokenizer from `--pretrained-model DIR` or a sibling checkpoint (the "
            "repair line says which), builds `training_state.pt` with `optimizer.bin`'s moments (mapped onto this"
            " project's groups), `scheduler.bin`'s step and peak learning rate, `random_states_0.pkl`'s RNG "
            "(scanned, numpy allowlist, never run); epoch and position from `--steps-per-epoch` / `--samples-per-"
            "step` (required: accelerate does not record them)"
        ),
        (
            "listed in the repair line: the schedule's shape (warmup, decay, end: the training defaults unless "
            "given or a sibling has them), `sampler.bin`'s position, the RNG of other processes"
        ),
    )
    PREFIXES_STRIPPED = (
        "prefixes_stripped",
        (
            "weight names start with `_orig_mod.` or `module.` (any nesting), in weights the manifest sealed (or "
            "with `--accept-changed-weights`)"
        ),
        "rewrites `model.safetensors` (or every shard and the index) without the prefixes",
        "nothing",
    )
    WEIGHTS_ACCEPTED = (
        "weights_accepted",
        (
            "`--fix --accept-changed-weights`, and the weights' size or sha256 differs from the manifest "
            "(`weights_corrupt`) while they read in full, hold only finite values and fit `config.json`, with "
            "nothing else fatal"
        ),
        (
            "takes the weights as they are now (then strips a prefix, and re-seals the manifest); the files as "
            "found are kept in `backup-*/`, even with `--no-backup`"
        ),
        (
            "nothing on disk; but nothing proves those weights are the ones the run trained: use it only for a "
            "file you changed yourself (for example re-saved after `torch.compile`)"
        ),
    )
    WEIGHTS_CONVERTED = (
        "weights_converted",
        "weights only in `pytorch_model.bin`",
        ("writes the same tensors to `model.safetensors`; the `.bin` moves to `backup-*/` even with `--no-backup`"),
        "nothing",
    )
    FILE_COPIED = (
        "file_copied",
        "`config.json`, `generation_config.json` or tokenizer files missing",
        (
            "copies them from the nearest sibling checkpoint, else the run folder, when that source has the same "
            "`config.json` (for a missing `config.json`: when its model has exactly the shapes of the weights)"
        ),
        "nothing",
    )
    FILE_RESTORED = (
        "file_restored",
        (
            "a file the manifest lists (config, generation config, tokenizer files; never the weights or the "
            "state) is damaged or lost, and a sibling checkpoint or the run folder holds a copy with exactly the "
            "manifest's size and sha256"
        ),
        (
            "replaces it with that copy (the original bytes, proven by the hash); the damaged file is kept in "
            "`backup-*/` even with `--no-backup`"
        ),
        "nothing",
    )
    MANIFEST_REBUILT = (
        "manifest_rebuilt",
        "after any repair, or a missing / stale manifest on healthy files",
        ("writes `manifest.json` (sizes and sha256) last, so `--resume-from-checkpoint latest` accepts the folder"),
        "nothing",
    )
    BACKUP = (
        "backup",
        "before the first file a repair replaces (not with `--no-backup`, except where a row above says "
        '"even with `--no-backup`")',
        "creates `backup-<date>-<time>/` inside the checkpoint and copies each file there before it changes "
        "(the manifest ignores the folder; `fix_all_checkpoints.py`'s table leaves this code out)",
        "nothing: the tools never delete a backup",
    )
