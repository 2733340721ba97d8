"""Every problem code the doctor reports, in one registry.

A code's string value is what ``--json`` prints (``{"code": ..., "message": ...}``): users script
against it, so a value never changes. Each member also says what it means, whether a checkpoint
with it still resumes (``soft``), whether no repair of this folder can undo it (``fatal``), what
``--fix`` does about it and what the user does. CHECKPOINT_FIX_GUIDE.md's table of problem codes is
generated from here (``python -m chef_genius.devtools.problems_table --write CHECKPOINT_FIX_GUIDE.md``)
and a test fails when the two disagree.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from chef_genius.doctor.codes import code_member

# what ``--fix`` does about a problem
FixKind = Literal["yes", "no", "copy", "flags"]
FIX_WORDS = {
    "yes": "repairs it",
    "no": "no",
    "copy": "restores a sibling's identical copy (by sha256)",
    "flags": "repairs it once given the flags it names",
}

_SIBLING = "resume from the healthy sibling the report names (`--resume-from-checkpoint latest` picks it)"
_EARLIER = (
    "resume from an earlier checkpoint that verifies (`fix_all_checkpoints.py MODEL_DIR` names the newest "
    "resumable one)"
)
_FIX = "run `--fix` (originals kept in `backup-*/`)"


def _entry(value: str, meaning: str, fix: FixKind, action: str, *, soft: bool = False, fatal: bool = False) -> tuple:
    return value, meaning, fix, action, soft, fatal


class Problem(str, Enum):
    """A problem code: ``Problem.X == "x"``, so sets of codes and JSON values mix freely."""

    soft: bool
    fatal: bool
    fix: FixKind
    meaning: str
    action: str

    def __new__(cls, value: str, meaning: str, fix: FixKind, action: str, soft: bool = False, fatal: bool = False):
        return code_member(cls, value, meaning=meaning, fix=fix, action=action, soft=soft, fatal=fatal)

    def __str__(self) -> str:  # the code itself in f-strings and messages
        return self.value

    UNTRUSTED_ENTRY = _entry(
        "untrusted_entry",
        "a symbolic link, FIFO or device in the checkpoint, or a folder where a file belongs "
        "(nothing else in the checkpoint is read)",
        "no",
        "replace the entry with the real file, or " + _SIBLING,
        fatal=True,
    )
    CONFIG_MISSING = _entry(
        "config_missing",
        "`config.json` is missing",
        "yes",
        _FIX + "; it copies the file from a sibling with the same model, else pass `--pretrained-model DIR`",
    )
    TOKENIZER_MISSING = _entry(
        "tokenizer_missing",
        "tokenizer files (`tokenizer.json` or `spiece.model`) are missing",
        "yes",
        _FIX + "; it copies them from a sibling with the same model, else pass `--pretrained-model DIR`",
    )
    GENERATION_CONFIG_MISSING = _entry(
        "generation_config_missing", "`generation_config.json` is missing (warn)", "yes", _FIX, soft=True
    )
    CONFIG_UNREADABLE = _entry(
        "config_unreadable",
        "`config.json` does not load the way the trainer loads it (`AutoConfig`, no remote "
        "code, after a size and JSON check)",
        "copy",
        "`--fix` if a sibling holds the manifest's bytes; else " + _SIBLING,
        fatal=True,
    )
    GENERATION_CONFIG_UNREADABLE = _entry(
        "generation_config_unreadable",
        "`generation_config.json` does not load (`GenerationConfig`)",
        "copy",
        "`--fix` if a sibling holds the manifest's bytes; else " + _SIBLING,
        fatal=True,
    )
    TOKENIZER_UNREADABLE = _entry(
        "tokenizer_unreadable",
        "the tokenizer does not load (`AutoTokenizer`, no remote code)",
        "copy",
        "`--fix` if a sibling holds the manifest's bytes; else " + _SIBLING,
        fatal=True,
    )
    WEIGHTS_MISSING = _entry(
        "weights_missing",
        "no `model.safetensors`, no sharded weights with their index, no `pytorch_model.bin`; "
        "or a shard the index names is missing",
        "no",
        _SIBLING,
        fatal=True,
    )
    WEIGHTS_UNREADABLE = _entry(
        "weights_unreadable",
        "a weights file or header is unreadable, truncated or hostile (header over 16 MiB "
        "or 100,000 tensors, unknown dtype, offsets that do not span the file, an index naming files outside the "
        "folder, a `.bin` that does not load with `weights_only=True`)",
        "no",
        _SIBLING,
        fatal=True,
    )
    WEIGHTS_BIN = _entry(
        "weights_bin",
        "the weights are only in `pytorch_model.bin` (read with `weights_only=True`; warn)",
        "yes",
        _FIX + "; the `.bin` is kept in `backup-*/`",
        soft=True,
    )
    WEIGHTS_PREFIXED = _entry(
        "weights_prefixed",
        "weight names carry `_orig_mod.` / `module.` prefixes (from `torch.compile` / DDP), in some shard",
        "yes",
        _FIX,
    )
    WEIGHTS_MISMATCH = _entry(
        "weights_mismatch",
        "the weights do not fit `config.json`: a tensor missing, unknown or of the wrong shape, "
        "or a config claiming more layers than the weights hold (refused before any model is built)",
        "no",
        _SIBLING,
        fatal=True,
    )
    LM_HEAD_MISSING = _entry(
        "lm_head_missing", "FLAN-T5's own `lm_head` is missing (every other tensor fits)", "no", _SIBLING, fatal=True
    )
    EMBEDDINGS_INCONSISTENT = _entry(
        "embeddings_inconsistent",
        "`--deep`: T5's shared embedding and the encoder/decoder `embed_tokens` differ",
        "no",
        _EARLIER,
    )
    WEIGHTS_NONFINITE = _entry(
        "weights_nonfinite",
        "a weight tensor (of any shard, or of a LoRA adapter) holds NaN or Inf: recorded so "
        "when the checkpoint was saved, or found by reading the tensors (`--deep`, or a checkpoint without a "
        "health record)",
        "no",
        _SIBLING,
        fatal=True,
    )
    OPTIMIZER_NONFINITE = _entry(
        "optimizer_nonfinite",
        "an optimizer moment holds NaN or Inf (recorded when the checkpoint was saved, or "
        "read from a checkpoint without a health record): a resume would train on it",
        "no",
        _SIBLING,
        fatal=True,
    )
    STATE_MISSING = _entry(
        "state_missing",
        "`training_state.pt` is missing",
        "yes",
        _FIX + "; the steps per epoch come from a sibling or `--steps-per-epoch`",
    )
    STATE_UNREADABLE = _entry(
        "state_unreadable",
        "`training_state.pt` does not load with `torch.load(weights_only=True)`, or holds values of the wrong kind",
        "yes",
        _FIX + "; it is rebuilt and the original kept, even with `--no-backup`",
        fatal=True,
    )
    STATE_UNSAFE = _entry(
        "state_unsafe", "`training_state.pt` references code (never unpickled)", "no", _SIBLING, fatal=True
    )
    STATE_LEGACY = _entry(
        "state_legacy",
        "`training_state.pt` is in the replaced system's format (1-based epoch, numpy RNG)",
        "yes",
        _FIX + "; add `--steps-per-epoch` and `--samples-per-step` for the exact data position",
    )
    HF_TRAINER_STATE = _entry(
        "hf_trainer_state",
        "a Hugging Face Trainer checkpoint: no `training_state.pt` yet",
        "yes",
        _FIX + " (section 3 says what is read)",
    )
    ACCELERATE_STATE = _entry(
        "accelerate_state",
        "an `Accelerator.save_state` folder: no `training_state.pt` yet",
        "yes",
        "`--fix --steps-per-epoch N --samples-per-step N`, with `--pretrained-model DIR` unless a sibling "
        "checkpoint holds the config and tokenizer",
    )
    HF_SETTINGS_MISSING = _entry(
        "hf_settings_missing",
        "Hugging Face run: settings `training_args.bin` / `trainer_state.json` do not tell",
        "flags",
        "pass the flags the message names with `--fix`",
    )
    HF_SETTINGS_PARTIAL = _entry(
        "hf_settings_partial",
        "Hugging Face run: something in `training_args.bin` has no equal here (warn)",
        "yes",
        "check the message; pass the flag for it with `--fix` if the default is wrong",
    )
    ACCELERATE_UNKNOWN = _entry(
        "accelerate_unknown",
        "accelerate folder: what accelerate does not record (steps per epoch, samples per "
        "step, the schedule's shape; warn)",
        "flags",
        "pass the flags the message names with `--fix`",
    )
    ACCELERATE_RNG_UNSAFE = _entry(
        "accelerate_rng_unsafe",
        "accelerate folder: `random_states_0.pkl` is refused by the numpy allowlist (its "
        "RNG will not be restored; warn)",
        "no",
        "nothing: `--fix` converts the rest",
    )
    OPTIMIZER_MISMATCH = _entry(
        "optimizer_mismatch",
        "the optimizer's moments do not cover every trainable parameter (or adapter tensor) with its shape",
        "no",
        _EARLIER,
    )
    OPTIMIZER_EMPTY = _entry(
        "optimizer_empty",
        "the optimizer state is empty: Adam restarts, the LR re-warms over `--optimizer-rewarmup-steps` (warn)",
        "no",
        "nothing: a resume works",
        soft=True,
    )
    SCHEDULER_MISMATCH = _entry("scheduler_mismatch", "the scheduler is not at `global_step`", "no", _EARLIER)
    STEP_MISMATCH = _entry("step_mismatch", "`global_step` is not the `N` of `checkpoint-N`", "no", _EARLIER)
    RNG_MISSING = _entry(
        "rng_missing",
        "no RNG state: dropout and shuffling draw fresh seeds on resume (warn)",
        "no",
        "nothing: a resume works",
        soft=True,
    )
    RNG_REBUILT = _entry(
        "rng_rebuilt",
        "the RNG state was rebuilt by `--fix` from the run's seed and the step (warn)",
        "no",
        "nothing: a resume works",
        soft=True,
    )
    RNG_UNREADABLE = _entry(
        "rng_unreadable",
        'a Hugging Face `rng_state*.pth` does not load (numpy allowlist); never taken for "no RNG state"',
        "no",
        "restore the file from a copy of the Hugging Face run, then `--fix`",
        fatal=True,
    )
    ADAPTER_UNREADABLE = _entry(
        "adapter_unreadable",
        "LoRA: `adapter_model.safetensors` is unreadable, holds other than LoRA A / B "
        "matrices, or its rank is not the `r` of `adapter_config.json`",
        "no",
        _SIBLING,
        fatal=True,
    )
    ADAPTER_CONFIG_UNREADABLE = _entry(
        "adapter_config_unreadable",
        "LoRA: `adapter_config.json` is unreadable or holds no integer `r`",
        "no",
        _SIBLING,
        fatal=True,
    )
    BASE_RECORD_MISSING = _entry(
        "base_record_missing",
        "LoRA: `chef_genius_base.json` (the base model and its weights' sha256) is missing or malformed",
        "no",
        _SIBLING,
        fatal=True,
    )
    MANIFEST_INVALID = _entry(
        "manifest_invalid",
        "`manifest.json` is missing, incomplete, lists a file that is not there, or names a "
        "path outside the checkpoint",
        "yes",
        _FIX + "; it rebuilds the manifest once every file loads",
    )
    WEIGHTS_CORRUPT = _entry(
        "weights_corrupt",
        "a weights file's size (`--deep`: sha256) differs from the manifest: damage, never a stale manifest",
        "no",
        _SIBLING,
        fatal=True,
    )
    STATE_CORRUPT = _entry(
        "state_corrupt",
        "`training_state.pt`'s size (`--deep`: sha256) differs from the manifest",
        "yes",
        _FIX + "; it is rebuilt and the original kept, even with `--no-backup`",
    )
    FILE_CORRUPT = _entry(
        "file_corrupt",
        "another file's size (`--deep`: sha256) differs from the manifest",
        "copy",
        "`--fix` if a sibling holds the manifest's bytes; else " + _SIBLING,
        fatal=True,
    )
    CHECK_FAILED = _entry(
        "check_failed",
        "`fix_all_checkpoints.py`: the check of this checkpoint stopped (the folder is left alone)",
        "no",
        "run `verify_and_fix_checkpoint.py` on it for the details",
        fatal=True,
    )
    MIRROR_INCOMPLETE = _entry(
        "mirror_incomplete",
        "a checkpoint on a `--checkpoint-mirror` whose upload did not finish (no manifest) or "
        "whose objects do not match its remote manifest (size or sha256)",
        "no",
        "resume with `--auto-resume --checkpoint-mirror URL`, which skips it and fetches the newest healthy one; "
        "the next save uploads a new checkpoint",
        fatal=True,
    )
    REPAIR_INCOMPLETE = _entry(
        "repair_incomplete",
        "`--fix` could not make a repair it needed (the message says why)",
        "no",
        "act on the message (free space, a writable copy, the flags it names) and rerun `--fix`",
    )


SOFT = frozenset(p for p in Problem if p.soft)  # the checkpoint still resumes, with less state
FATAL = frozenset(p for p in Problem if p.fatal)  # no repair of this folder undoes it (but see ``fix``)
