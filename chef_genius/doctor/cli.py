"""``cli/verify_and_fix_checkpoint.py`` and ``cli/fix_all_checkpoints.py``.

Exit codes: 0 every checkpoint complete and resumable (verify: with full state); 1 problems remain;
2 usage error (path missing, not a directory, no checkpoint), or a repair asked for in a run folder
that a live training run holds (its ``run.lock``, see ``checkpoint/runlock.py``): retention may delete
or set aside the very checkpoint being repaired. Checking without writing is allowed, with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import logging
import sys
from pathlib import Path

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import runlock
from chef_genius.cli_support import Parser
from chef_genius.train.config import SCHEDULES
from chef_genius.errors import EXIT_FAILURE, EXIT_OK, UserError, printable, run_cli
from chef_genius.doctor import mirror
from chef_genius.doctor.repair import fix
from chef_genius.doctor.state_builder import Overrides
from chef_genius.doctor.problems import FATAL, SOFT, Problem
from chef_genius.doctor.repairs import Repair
from chef_genius.doctor.verify import Report, verify

GUIDE = "see CHECKPOINT_FIX_GUIDE.md"

VERIFY_EXAMPLES = """examples:
  python cli/verify_and_fix_checkpoint.py models/chef-genius/checkpoint-12000           # report, one line per check
  python cli/verify_and_fix_checkpoint.py models/chef-genius/checkpoint-12000 --deep    # also sha256, NaN/Inf
  python cli/verify_and_fix_checkpoint.py models/chef-genius/checkpoint-12000 --fix     # repair, originals kept
  python cli/verify_and_fix_checkpoint.py models/chef-genius/checkpoint-12000 --json
  python cli/verify_and_fix_checkpoint.py old-run/checkpoint-3000 --fix --steps-per-epoch 4000 --samples-per-step 32
  python cli/verify_and_fix_checkpoint.py accelerate-run/step_500 --fix --pretrained-model models/flan-large --steps-per-epoch 4000 --samples-per-step 32

  python cli/verify_and_fix_checkpoint.py s3://bucket/runs/flan-large/checkpoint-12000 --deep   # on a mirror, read-only

exit codes: 0 complete and resumable with full state, 1 problems remain, 2 path missing or not a folder.
"""  # noqa: E501 (printed verbatim by --help)

FIX_ALL_EXAMPLES = """examples:
  python cli/fix_all_checkpoints.py models/chef-genius --dry-run    # what would be repaired, nothing written
  python cli/fix_all_checkpoints.py models/chef-genius              # repair all, name the newest resumable
  python cli/fix_all_checkpoints.py models/chef-genius --json
  python cli/fix_all_checkpoints.py models/old-run --steps-per-epoch 4000 --samples-per-step 32 --learning-rate 1e-4
  python cli/fix_all_checkpoints.py s3://bucket/runs/flan-large --dry-run   # a mirror's checkpoints and their health

exit codes: 0 every checkpoint resumable, 1 problems remain, 2 no such folder or no checkpoint-N inside.
"""


def _quiet() -> None:
    import warnings

    warnings.filterwarnings("ignore", message="Detected pickle protocol")  # torch, on a non-torch pickle
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    from chef_genius.model.loading import quiet_transformers

    quiet_transformers()


def _add_settings(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run settings for a rebuilt training state (default: a sibling checkpoint's)")
    g.add_argument("--steps-per-epoch", type=int, metavar="N", help="optimizer steps per epoch of the run")
    g.add_argument(
        "--samples-per-step",
        type=int,
        metavar="N",
        help="samples per optimizer step (batch size x accumulation x processes)",
    )
    g.add_argument("--learning-rate", type=float, metavar="LR", help="peak learning rate of the run")
    g.add_argument("--warmup-steps", type=int, metavar="N", help="warmup steps of the run")
    g.add_argument("--total-steps", type=int, metavar="N", help="optimizer steps of the whole run")
    g.add_argument("--lr-scheduler", choices=SCHEDULES, help="decay of the run")
    g.add_argument(
        "--pretrained-model",
        metavar="DIR",
        help="a model folder to take a missing config.json and "
        "tokenizer from (an accelerate save_state folder has neither); default: a sibling checkpoint",
    )


def _overrides(args) -> Overrides:
    for name in ("steps_per_epoch", "samples_per_step", "total_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    return Overrides(
        args.steps_per_epoch,
        args.samples_per_step,
        args.learning_rate,
        args.warmup_steps,
        args.total_steps,
        args.lr_scheduler,
    )


def _pretrained(args) -> Path | None:
    return _folder(args.pretrained_model, "--pretrained-model") if args.pretrained_model else None


def _folder(path: str, what: str) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise UserError(f"{what} {path}: no such folder")
    if not folder.is_dir():
        raise UserError(f"{what} {path}: not a directory")
    return folder


def _check_live_run(run_dir: Path, writes: bool) -> None:
    """Refuse to repair inside a run folder that a live training run holds; note it when only checking."""
    holder = runlock.live_holder(run_dir)
    if holder is None:
        return
    if writes:
        raise UserError(
            f"{run_dir} is in use by a training run ({holder.describe()}); stop it, or wait for it "
            "to end, before repairing its checkpoints (checking without --fix / with --dry-run is fine)"
        )
    print(
        f"note: {run_dir} is in use by a training run ({holder.describe()}); its checkpoints may change "
        "while this runs",
        file=sys.stderr,
    )


# ---------------------------------------------------------------------------------------------


def verify_main(argv=None) -> int:
    p = Parser(
        prog="verify_and_fix_checkpoint.py",
        description="Check a checkpoint folder and optionally repair it without losing anything (" + GUIDE + ").",
        epilog=VERIFY_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="a checkpoint-N folder, or URL/checkpoint-N on a --checkpoint-mirror (verified read-only)",
    )
    p.add_argument("--fix", action="store_true", help="repair what can be repaired (originals kept in backup-*/)")
    p.add_argument("--deep", action="store_true", help="read every tensor: NaN/Inf, sha256 against the manifest")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--no-backup", action="store_true", help="with --fix: do not keep copies of replaced files")
    p.add_argument(
        "--accept-changed-weights",
        action="store_true",
        help="with --fix: take weights that changed after the manifest sealed them as they are (read "
        "in full, finite, the config's shapes), strip a _orig_mod./module. prefix and re-seal; "
        "the file as found is kept in backup-*/ (CHECKPOINT_FIX_GUIDE.md)",
    )
    _add_settings(p)
    args = p.parse_args(argv)
    if args.accept_changed_weights and not args.fix:
        raise UserError("--accept-changed-weights works with --fix only")
    if mirror.is_url(args.checkpoint):  # a checkpoint on a --checkpoint-mirror: verified read-only
        if args.fix:
            raise UserError(
                f"--fix {args.checkpoint}: a mirror's checkpoint is only verified; repair a local copy "
                "(training with --auto-resume --checkpoint-mirror URL fetches the newest healthy one)"
            )
        _quiet()
        report = mirror.verify_remote(args.checkpoint, args.deep)
        print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
        return EXIT_OK if report.valid else EXIT_FAILURE
    folder = _folder(args.checkpoint, "checkpoint")
    overrides = _overrides(args)
    _check_live_run(Path(os.path.abspath(folder)).parent, writes=args.fix)  # no link followed
    _quiet()
    report = (
        fix(
            folder,
            backup=not args.no_backup,
            overrides=overrides,
            pretrained=_pretrained(args),
            accept_changed_weights=args.accept_changed_weights,
        )
        if args.fix
        else verify(folder, args.deep)
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
    if not args.json and not args.fix and not report.valid and not report.codes() & FATAL:
        print(f"  repair with: python cli/verify_and_fix_checkpoint.py {folder} --fix", file=sys.stderr)
    return EXIT_OK if report.valid else EXIT_FAILURE


def fix_all_main(argv=None) -> int:
    p = Parser(
        prog="fix_all_checkpoints.py",
        description="Verify and repair every checkpoint-N folder of a run, oldest first (" + GUIDE + ").",
        epilog=FIX_ALL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model_dir",
        metavar="MODEL_DIR",
        help="the run folder (--model-output of training), or a --checkpoint-mirror URL (listed with --dry-run)",
    )
    p.add_argument("--dry-run", action="store_true", help="write nothing; say what would be repaired")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-backup", action="store_true", help="do not keep copies of replaced files")
    _add_settings(p)
    args = p.parse_args(argv)
    if mirror.is_url(args.model_dir):  # a --checkpoint-mirror: listed, read-only
        if not args.dry_run:
            raise UserError(f"MODEL_DIR {args.model_dir}: a mirror is only listed; add --dry-run")
        _quiet()
        table, code = mirror.list_remote(args.model_dir)
        print(table)
        return code
    root = _folder(args.model_dir, "MODEL_DIR")
    folders = sorted(ckpt.list_checkpoints(root) + ckpt.linked_checkpoints(root), key=ckpt.checkpoint_step)
    if not folders:
        raise UserError(f"MODEL_DIR {root}: holds no {ckpt.PREFIX}N folder")
    overrides = _overrides(args)
    _check_live_run(root, writes=not args.dry_run)
    _quiet()
    rows = []
    for folder in folders:  # each checkpoint reported, whatever the one before it held
        # each lambda is called at once, inside this iteration (B023 does not apply)
        before = _guarded(folder, lambda: verify(folder))  # noqa: B023
        after = _guarded(
            folder,
            lambda: fix(
                folder,  # noqa: B023
                backup=not args.no_backup,
                dry_run=args.dry_run,
                overrides=overrides,
                pretrained=_pretrained(args),
            ),
        )
        rows.append((before, after))
    # after a dry run, each report is what verify found now (nothing was written), with what would be done
    newest = next((str(a.path) for _, a in reversed(rows) if a.resumable), None)
    remedies = [remedy(a, args.dry_run) for _, a in rows]
    if args.json:
        print(
            json.dumps(
                {
                    "model_dir": str(root),
                    "dry_run": args.dry_run,
                    "newest_resumable": newest,
                    "checkpoints": [
                        dict(a.to_json(), before=_state_word(b), **(why or {})) for (b, a), why in zip(rows, remedies)
                    ],
                },
                indent=2,
            )
        )
    else:
        print(_table(rows, args.dry_run))
        for (_, after), why in zip(rows, remedies):
            if why:
                print(f"  {Path(after.path).name}: {why['reason']}; repair: {why['repair']}")
        print(
            ("dry run: nothing was written; " if args.dry_run else "")
            + f"newest resumable checkpoint: {newest or 'none'}"
        )
    return EXIT_OK if all(a.resumable for _, a in rows) else EXIT_FAILURE


def _guarded(folder: Path, check) -> Report:
    """``check()``'s report, or one that names the failure: one hostile checkpoint never stops the loop."""
    try:
        return check()
    except UserError as err:
        report = Report(folder, global_step=ckpt.step_of(folder))
        report.fail(Problem.CHECK_FAILED, str(err))
    except Exception as err:  # a bug or a file no check foresaw: reported with its type, the loop goes on
        logging.getLogger(__name__).debug("checking %s failed", folder, exc_info=True)
        report = Report(folder, global_step=ckpt.step_of(folder))
        report.fail(
            Problem.CHECK_FAILED,
            f"the check stopped with {type(err).__name__}: {printable(str(err), 160)} (left alone)",
        )
    return report


def remedy(report, dry_run: bool = False) -> dict | None:
    """Why ``report``'s checkpoint is not resumable and the flag or step that would repair it (None
    when it is resumable)."""
    if report.resumable:
        return None
    problem = next(
        (p for p in report.problems if p["code"] not in SOFT),
        report.problems[0] if report.problems else {"code": "unknown", "message": "not a checkpoint this tool knows"},
    )
    unfixed = report.facts.unfixed
    codes = report.codes()
    if codes & FATAL:
        repair = (
            f"none for this folder (the damage cannot be undone): resume from {report.hint}"
            if report.hint
            else "none for this folder (the damage cannot be undone) and no healthy sibling: restore the "
            "file from a copy"
        )
    elif unfixed:
        repair = unfixed[0].split(": ", 1)[-1]
    elif codes & {Problem.CONFIG_MISSING, Problem.TOKENIZER_MISSING}:
        repair = (
            "--fix --pretrained-model DIR (the model the run started from: config.json and tokenizer "
            "files; no sibling checkpoint has them)"
        )
    elif dry_run:
        repair = f"run without --dry-run (python cli/verify_and_fix_checkpoint.py {report.path} --fix)"
    else:
        repair = f"see the report of python cli/verify_and_fix_checkpoint.py {report.path} ({GUIDE})"
    return {"reason": f"{problem['code']}: {problem['message']}", "repair": repair}


def _state_word(report) -> str:
    return "complete" if report.valid else "resumable" if report.resumable else "broken"


def _table(rows, dry_run: bool) -> str:
    header = ("step", "kind", "before", "repairs" if not dry_run else "would repair", "after")
    lines = []
    for before, after in rows:
        repairs = ", ".join(r["code"] for r in after.repairs if r["code"] != Repair.BACKUP) or "-"
        step = "?" if after.global_step is None else str(after.global_step)
        problem = "" if after.resumable or not after.problems else f" ({after.problems[0]['code']})"
        kind = before.kind if before.kind == after.kind else f"{before.kind}->{after.kind}"
        lines.append((step, kind, _state_word(before), repairs, "-" if dry_run else _state_word(after) + problem))
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *lines])


def verify_entry() -> None:
    run_cli(verify_main)


def fix_all_entry() -> None:
    run_cli(fix_all_main)
