"""What the doctor's two code registries (``problems.Problem``, ``repairs.Repair``) share: a member equal to
its string value (the code ``--json`` prints), carrying what the docs say of it."""

from __future__ import annotations

from typing import Any


def code_member(cls: type, value: str, **described: Any) -> Any:
    """The member ``value`` of the ``str`` enum ``cls`` (for its ``__new__``), with ``described`` as attributes."""
    member: Any = str.__new__(cls, value)
    member._value_ = value
    vars(member).update(described)
    return member
