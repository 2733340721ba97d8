"""The registries of problem codes (doctor/problems.py) and repair codes (doctor/repairs.py): the values
users script against, and the guide's tables generated from them. Fast: no training run."""

from __future__ import annotations

import re
from pathlib import Path

from chef_genius.devtools import problems_table
from chef_genius.devtools import references
from chef_genius.devtools.flags_table import table_in
from chef_genius.doctor.problems import FATAL, SOFT, Problem
from chef_genius.doctor.repairs import Repair

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "CHECKPOINT_FIX_GUIDE.md"

# the codes `--json` printed before the registry existed: a value never changes
PUBLISHED = {
    "untrusted_entry",
    "config_missing",
    "tokenizer_missing",
    "generation_config_missing",
    "config_unreadable",
    "generation_config_unreadable",
    "tokenizer_unreadable",
    "weights_missing",
    "weights_unreadable",
    "weights_bin",
    "weights_prefixed",
    "weights_mismatch",
    "lm_head_missing",
    "embeddings_inconsistent",
    "weights_nonfinite",
    "state_missing",
    "state_unreadable",
    "state_unsafe",
    "state_legacy",
    "hf_trainer_state",
    "accelerate_state",
    "hf_settings_missing",
    "hf_settings_partial",
    "accelerate_unknown",
    "accelerate_rng_unsafe",
    "optimizer_mismatch",
    "optimizer_empty",
    "scheduler_mismatch",
    "step_mismatch",
    "rng_missing",
    "rng_rebuilt",
    "rng_unreadable",
    "adapter_unreadable",
    "adapter_config_unreadable",
    "base_record_missing",
    "manifest_invalid",
    "weights_corrupt",
    "state_corrupt",
    "file_corrupt",
    "check_failed",
    "repair_incomplete",
}
# codes added since (each a new value; none of the above changed)
ADDED = {
    "optimizer_nonfinite",  # issue 22: a checkpoint judged by its numbers
    "mirror_incomplete",
}  # issue 25: the doctor on a --checkpoint-mirror
# the repair codes `--json` printed before their registry existed ("backup": the backup folder's line)
PUBLISHED_REPAIRS = {
    "state_rebuilt",
    "state_converted_legacy",
    "state_converted_hf",
    "state_converted_accelerate",
    "prefixes_stripped",
    "weights_accepted",
    "weights_converted",
    "file_copied",
    "file_restored",
    "manifest_rebuilt",
    "backup",
}


def test_guide_table_is_the_registry():
    table = problems_table.table_in(GUIDE.read_text(encoding="utf-8"))
    assert table is not None, "CHECKPOINT_FIX_GUIDE.md lost its problems-table markers"
    assert table == problems_table.markdown(), (
        "the guide's problem codes are out of date: "
        "python -m chef_genius.devtools.problems_table --write CHECKPOINT_FIX_GUIDE.md"
    )


def test_check_mode_fails_on_a_stale_table(tmp_path):
    stale = tmp_path / "guide.md"
    stale.write_text(problems_table.replace_table(GUIDE.read_text(encoding="utf-8"), "| `old_code` | gone |"))
    assert problems_table.main(["--check", str(stale)]) == 1
    assert problems_table.main(["--write", str(stale)]) == 0
    assert problems_table.main(["--check", str(stale)]) == 0


def test_code_values_are_the_published_ones():
    assert {p.value for p in Problem} == PUBLISHED | ADDED
    assert Problem.STATE_MISSING == "state_missing" and f"{Problem.STATE_MISSING}" == "state_missing"


def test_soft_and_fatal_are_what_verify_always_used():
    assert SOFT == {"optimizer_empty", "rng_missing", "rng_rebuilt", "generation_config_missing", "weights_bin"}
    assert FATAL == {
        "weights_unreadable",
        "weights_corrupt",
        "weights_nonfinite",
        "weights_mismatch",
        "state_unsafe",
        "state_unreadable",
        "lm_head_missing",
        "weights_missing",
        "file_corrupt",
        "untrusted_entry",
        "config_unreadable",
        "generation_config_unreadable",
        "tokenizer_unreadable",
        "rng_unreadable",
        "check_failed",
        "adapter_unreadable",
        "adapter_config_unreadable",
        "base_record_missing",
        "optimizer_nonfinite",
        "mirror_incomplete",
    }
    assert not SOFT & FATAL


def _doctor_source(registry: str) -> str:
    """Every module of the doctor but the registry ``registry`` (``problems.py``, ``repairs.py``)."""
    modules = (ROOT / "chef_genius" / "doctor").rglob("*.py")
    return "\n".join(p.read_text(encoding="utf-8") for p in modules if p.name != registry)


def test_doctor_spells_only_registered_codes_and_uses_every_one():
    source = _doctor_source("problems.py")
    spelled = set(re.findall(r"Problem\.([A-Z_]+)", source))
    assert spelled <= set(Problem.__members__), spelled - set(Problem.__members__)
    assert set(Problem.__members__) <= spelled, f"codes no check reports: {set(Problem.__members__) - spelled}"
    assert not re.search(r"fail\(\s*[\"']", source), "a problem reported by a bare string, not a Problem"


def test_repair_values_are_the_published_ones():
    assert {r.value for r in Repair} == PUBLISHED_REPAIRS
    assert Repair.STATE_REBUILT == "state_rebuilt" and f"{Repair.STATE_REBUILT}" == "state_rebuilt"
    assert all(r.when and r.does and r.lost for r in Repair)


def test_guide_repair_table_is_the_registry():
    guide = GUIDE.read_text(encoding="utf-8")
    table = table_in(guide, references.REPAIRS_BEGIN, references.REPAIRS_END)
    assert table is not None, "CHECKPOINT_FIX_GUIDE.md lost its repairs-table markers"
    assert table == references.repairs_table(), "run: python -m chef_genius.devtools.references --write"
    rows = re.findall(r"^\| `([a-z_]+)` \|", table, re.M)
    assert rows == [r.value for r in Repair]


def test_doctor_names_repairs_only_through_the_registry_and_uses_every_one():
    source = _doctor_source("repairs.py")
    spelled = set(re.findall(r"Repair\.([A-Z_]+)", source))
    assert spelled == set(Repair.__members__), spelled ^ set(Repair.__members__)
    assert not re.search(r"note\(\s*[\"']", source), "a repair reported by a bare string, not a Repair"
    assert not re.search(r"converted = [\"']", source), "an importer's repair code as a bare string"
