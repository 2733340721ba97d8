"""The checkpoint, evaluation and logging settings, and the divergence guard's."""

from dataclasses import dataclass

from chef_genius.settings import checks
from chef_genius.settings.choices import (
    APPLIED,
    SESSION,
    OnSaveError,
)
from chef_genius.settings.fields import Flag, setting


@dataclass
class CheckpointSettings:
    title = "checkpoints, evaluation and logging"
    save_steps: int = setting(
        1000, policy=APPLIED, check=checks.positive_int, help="checkpoint every N optimizer steps (default {default})"
    )
    async_save: bool | None = setting(
        None,
        policy=APPLIED,
        flags=[  # None: on with CUDA, off on CPU
            Flag(("--async-save",), action="store_true"),
            Flag(
                ("--no-async-save",),
                action="store_false",
                help="write checkpoints in the training thread (a resume inherits --async-save otherwise)",
            ),
        ],
        help=(
            "copy the state to CPU memory and write the checkpoint in a background thread: same files, same crash "
            "safety, at most one save in flight (default: on with CUDA, off on CPU)"
        ),
    )
    save_total_limit: int = setting(
        0,
        policy=APPLIED,
        check=checks.at_least_zero,
        help=(
            "keep the newest N checkpoints plus the best one, the one resumed from and the newest healthy one (finite "
            "numbers); older ones are deleted after "
            "each new checkpoint is committed (default {default}: keep all)"
        ),
    )
    save_every_minutes: float = setting(
        0.0,
        policy=APPLIED,
        check=checks.at_least_zero,
        help=(
            "also checkpoint when this many minutes of wall-clock time passed since the last checkpoint (default 0: "
            "only every --save-steps)"
        ),
    )
    on_save_error: OnSaveError = setting(
        "stop",
        policy=APPLIED,
        help=(
            "when a checkpoint cannot be written (full disk, permissions): stop with exit code 4 (default), or "
            "warn and train on"
        ),
    )
    checkpoint_mirror: str | None = setting(
        None,
        policy=APPLIED,
        metavar="URL",
        help=(
            "copy every committed checkpoint, in the background, to this fsspec URL (s3://bucket/prefix or a second "
            "folder; pip install -r requirements-mirror.txt), each file read back and verified, the manifest last; "
            "--auto-resume on an empty run folder fetches the newest healthy one from there (a resume keeps the "
            "run's mirror)"
        ),
    )
    requeue_on_preemption: bool = setting(
        False,
        policy=SESSION,
        help=(
            "Slurm: after the checkpoint of a stop signal (SIGTERM, SIGUSR1) is committed, requeue the job with "
            "scontrol requeue $SLURM_JOB_ID (it resumes with --auto-resume)"
        ),
    )
    verify_hashes: bool = setting(
        False,
        policy=SESSION,
        help=(
            "resuming checks every checkpoint file's sha256 against its manifest, not only its size (reads the whole "
            "checkpoint once); the data files and the tokenized cache are hashed in full, not taken from the digests "
            "remembered by file state (docs/training-and-data.md: Data by content)"
        ),
    )
    eval_steps: int = setting(
        1000,
        policy=APPLIED,
        check=checks.positive_int,
        help="validation loss every N optimizer steps (default {default})",
    )
    eval_max_samples: int = setting(
        2000,
        policy=APPLIED,
        check=checks.at_least_zero,
        metavar="N",
        help=(
            "validate on a fixed, seeded choice of at most N held-out recipes, the same ones at every evaluation "
            "(default {default}; 0: all of them)"
        ),
    )
    logging_steps: int = setting(
        50, policy=APPLIED, check=checks.positive_int, help="log every N optimizer steps (default {default})"
    )


@dataclass
class DivergenceSettings:
    title = "divergence guard (docs/checkpoints.md: Divergence)"
    spike_factor: float = setting(
        3.0,
        policy=APPLIED,
        check=checks.at_least_zero,
        metavar="F",
        help=(
            "a loss above F times the median of the last 32 finite losses is a spike: the run rolls back to the "
            "newest healthy checkpoint before it and skips the recipes that led into it (default {default}; 0: off)"
        ),
    )
    max_nonfinite_steps: int = setting(
        3,
        policy=APPLIED,
        check=checks.at_least_zero,
        metavar="K",
        help=(
            "K steps in a row whose loss or gradient norm is NaN/Inf (each skipped: no weight changes) roll the run "
            "back the same way (default {default}; 0: never, the steps are only skipped)"
        ),
    )
    max_rollbacks: int = setting(
        3,
        policy=APPLIED,
        check=checks.at_least_zero,
        metavar="R",
        help=(
            "rollbacks in one session before the run stops with exit code 6, naming the newest healthy checkpoint "
            "(default {default}; 0: stop at the first divergence)"
        ),
    )
