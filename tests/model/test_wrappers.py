"""Wrapper prefixes (``model/wrappers.py``): the one list the loader and the doctor both use."""

from __future__ import annotations

import re

from chef_genius.model import wrappers


def test_every_leading_prefix_goes_in_any_nesting_and_nothing_else():
    assert wrappers.strip("module._orig_mod.module.encoder.module.weight") == "encoder.module.weight"  # noqa: B005 (not str.strip)
    assert wrappers.strip("shared.weight") == "shared.weight"  # noqa: B005 (not str.strip)
    assert wrappers.wrapped(["shared.weight", "module.lm_head.weight", "_orig_mod.x", "xmodule.y"]) == [
        "module.lm_head.weight",
        "_orig_mod.x",
    ]


def test_the_loaders_key_mapping_strips_what_strip_strips():
    """``from_pretrained`` renames with the regex, the doctor with ``strip``: they must agree."""
    ((pattern, replacement),) = wrappers.KEY_MAPPING.items()
    for name in (
        "module._orig_mod.encoder.block.0.weight",
        "_orig_mod.shared.weight",
        "lm_head.weight",
        "encoder.module.weight",
    ):
        assert re.sub(pattern, replacement, name) == wrappers.strip(name)
