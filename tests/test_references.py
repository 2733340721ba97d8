"""The pages generated from the code (docs/reference/, the guide's and the memory page's tables) are what
the code says now, and one command regenerates them. Fast: no training run."""

from __future__ import annotations

import re
import shutil

from chef_genius import errors
from chef_genius.devtools import references
from chef_genius.devtools.flags_table import table_in
from chef_genius.settings.fields import Policy, flag_name, settings_of
from chef_genius.train.config import TrainConfig

from conftest import REPO


def test_every_generated_page_is_up_to_date():
    assert references.stale(REPO) == [], "run: python -m chef_genius.devtools.references --write"


def test_check_names_a_stale_page_and_write_fixes_it(tmp_path, capsys):
    for item in references.GENERATED:
        target = tmp_path / item.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / item.path, target)
    exit_page = tmp_path / "docs" / "reference" / "exit-codes.md"
    exit_page.write_text(exit_page.read_text(encoding="utf-8").replace("`EXIT_DATA`", "`EXIT_OLD`"), encoding="utf-8")
    guide = tmp_path / "CHECKPOINT_FIX_GUIDE.md"
    guide.write_text(guide.read_text(encoding="utf-8").replace("`state_missing`", "`state_gone`"), encoding="utf-8")
    guide_repairs_stale = guide.read_text(encoding="utf-8").replace("| `file_copied` |", "| `file_copy` |")
    (tmp_path / "docs" / "reference" / "flags.md").unlink()

    assert references.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    for stale in ("docs/reference/exit-codes.md", "CHECKPOINT_FIX_GUIDE.md", "docs/reference/flags.md"):
        assert f"{stale} is out of date" in err
    assert "resume-policy.md" not in err and "docs/memory.md" not in err

    hand_written = guide.read_text(encoding="utf-8").split("<!-- problems-table:begin")[0]
    assert references.main(["--write", "--root", str(tmp_path)]) == 0
    assert references.main(["--check", "--root", str(tmp_path)]) == 0
    assert guide.read_text(encoding="utf-8").startswith(hand_written)  # only the table is replaced

    guide.write_text(guide_repairs_stale, encoding="utf-8")  # a second table of the same page: the repairs
    assert references.stale(tmp_path) == ["CHECKPOINT_FIX_GUIDE.md"]
    references.write(tmp_path)
    assert "| `file_copied` |" in guide.read_text(encoding="utf-8") and references.stale(tmp_path) == []


def test_exit_codes_are_one_registry_each_with_its_meaning():
    constants = {
        name: value for name, value in vars(errors).items() if name.startswith("EXIT_") and isinstance(value, int)
    }
    assert sorted(constants.values()) == list(errors.EXIT_CODES) == [0, 1, 2, 3, 4, 5, 6, 7, 75, 130]
    assert len(set(constants.values())) == len(constants)  # no two names for one code
    assert all(code.meaning for code in errors.EXIT_CODES.values())
    page = (REPO / "docs" / "reference" / "exit-codes.md").read_text(encoding="utf-8")
    for name, value in constants.items():
        assert re.search(rf"^\| `{value}` \| `{name}` \| {re.escape(errors.EXIT_CODES[value].meaning)}", page, re.M)


def test_the_guide_lists_the_doctors_exit_codes_from_the_registry():
    guide = (REPO / "CHECKPOINT_FIX_GUIDE.md").read_text(encoding="utf-8")
    table = table_in(guide, references.DOCTOR_EXITS_BEGIN, references.DOCTOR_EXITS_END)
    assert table is not None, "CHECKPOINT_FIX_GUIDE.md lost its exit-codes-table markers"
    doctor = [c for c in errors.EXIT_CODES.values() if c.doctor]
    assert [c.code for c in doctor] == [0, 1, 2]
    for code in doctor:
        assert f"| `{code.code}` |" in table and code.doctor in table
    outside = guide.replace(table, "")
    assert not re.search(r"^\| `?[0-9]+`? \|", outside, re.M), "an exit code listed by hand beside the generated table"


def test_resume_policy_page_puts_every_setting_under_its_policy():
    page = (REPO / "docs" / "reference" / "resume-policy.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", page, re.M | re.S))
    assert list(sections) == [p.value for p in Policy]
    for f in settings_of(TrainConfig):
        policy = f.metadata["spec"].policy.value
        homes = [name for name, text in sections.items() if f"| `{flag_name(f)}`" in text]
        assert homes == [policy], (f.name, homes)
    assert "refused even with `--allow-config-change`" in sections["adapter"]
