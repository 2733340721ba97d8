"""Which checkpoint a run resumes from (what the run may change on a resume is decided in
``chef_genius/train/settings.py``; the data file's identity in ``chef_genius/data/fingerprint.py``)."""

from __future__ import annotations

import logging
from pathlib import Path

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import manifest as ckmanifest
from chef_genius.checkpoint import trust
from chef_genius.errors import UserError

log = logging.getLogger(__name__)


def resolve(resume: str | None, auto_resume: bool, output_dir: str | Path, verify_hashes: bool = False) -> Path | None:
    """The checkpoint folder to resume from, or None to start fresh."""
    output_dir = Path(output_dir)
    if resume is None and not auto_resume:
        existing = ckpt.list_checkpoints(output_dir)
        if existing:
            raise UserError(
                f"{output_dir} already holds checkpoints (newest {existing[-1].name}); resume with "
                "--resume-from-checkpoint latest or --auto-resume, or pick another --model-output"
            )
        return None
    if resume is None or resume == "latest":
        found, skipped = ckmanifest.find_latest(output_dir, verify_hashes)
        for path, reason in skipped:
            log.warning("skipping %s: %s", path.name, reason)
        if found is None:
            if auto_resume:
                log.info("no usable checkpoint in %s: starting fresh", output_dir)
                return None
            raise UserError(
                f"no complete checkpoint under {output_dir} to resume from"
                + (f" ({len(skipped)} unusable skipped)" if skipped else "")
            )
        if skipped:
            log.warning(
                "resuming from %s, the newest usable checkpoint (%d newer skipped: check them with "
                "python cli/fix_all_checkpoints.py %s --dry-run)",
                found.name,
                len(skipped),
                output_dir,
            )
        return found
    path = Path(resume)
    if trust.is_link(path):
        raise UserError(f"--resume-from-checkpoint {resume}: a symbolic link, never followed; give the real folder")
    if not path.is_dir():
        raise UserError(f"--resume-from-checkpoint {resume}: no such folder")
    if not (path / ckpt.TRAINING_STATE).is_file():
        raise UserError(
            f"--resume-from-checkpoint {resume}: not a checkpoint (no {ckpt.TRAINING_STATE}); "
            f"check it with: python cli/verify_and_fix_checkpoint.py {resume}"
        )
    problems = ckmanifest.manifest_problems(path, verify_hashes)
    if problems:
        raise UserError(
            f"--resume-from-checkpoint {resume}: incomplete checkpoint ({problems[0]}); "
            f"repair it with: python cli/verify_and_fix_checkpoint.py {resume} --fix"
        )
    problem = ckmanifest.usability_problem(path, verify_hashes)
    if problem:
        raise ckpt.CheckpointError(
            f"--resume-from-checkpoint {resume}: not usable ({problem}); check it with: "
            f"python cli/verify_and_fix_checkpoint.py {resume}"
        )
    return path
