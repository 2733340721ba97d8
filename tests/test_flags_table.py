"""The flags table (docs/reference/flags.md) is generated from the parser and must stay in step with it."""

from __future__ import annotations

from pathlib import Path

from chef_genius.train.config import build_parser
from chef_genius.devtools.flags_table import markdown, replace_table, table_in

PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "flags.md"


def test_reference_table_lists_every_flag_as_the_parser_does():
    table = table_in(PAGE.read_text(encoding="utf-8"))
    assert table is not None, "docs/reference/flags.md lost its flags-table markers"
    assert table == markdown(), "the flags table is out of date: python -m chef_genius.devtools.references --write"


def test_every_option_appears_in_the_table():
    table = markdown()
    for action in build_parser()._actions:
        for name in action.option_strings:
            if name not in ("-h", "--help"):
                assert f"`{name}`" in table


def test_write_replaces_only_the_table():
    from chef_genius.devtools.flags_table import BEGIN, END

    document = f"# Title\n\nbefore\n{BEGIN}\nold\n{END}\nafter\n"
    updated = replace_table(document, "| new |")
    assert updated == f"# Title\n\nbefore\n{BEGIN}\n| new |\n{END}\nafter\n"
