"""What ``verify`` says about one checkpoint: a ``Report`` (one line per check, problems with stable codes,
the repairs ``--fix`` made) and the ``Facts`` the checks found, which repair acts on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chef_genius.doctor import foreign
from chef_genius.doctor.problems import SOFT, Problem

StateStatus = foreign.StateStatus


@dataclass
class Facts:
    """What the checks found and repair acts on (never printed: ``Report.to_json`` leaves it out)."""

    state_status: StateStatus | None = None  # None: the checkpoint was not read (an untrusted entry)
    state: dict | None = None  # training_state.pt's values (ours or legacy)
    model: Any = None  # the meta-device model of config.json, when it fits the weights
    header: dict | None = None  # weight name -> safetensors header entry (every shard)
    weights_layout: str | None = None  # single | sharded | bin
    weight_files: list[Path] = field(default_factory=list)
    adapter_header: dict | None = None  # a LoRA checkpoint's adapter header
    unfixed: list[str] = field(default_factory=list)  # repairs --fix needed but could not make, and why
    weights_read: bool = False  # every weight tensor was read (--deep): no second read for NaN


@dataclass
class Report:
    path: Path | str  # a str: a mirror's checkpoint, named by its URL
    kind: str = foreign.UNKNOWN
    global_step: int | None = None
    epoch: int | None = None
    problems: list[dict] = field(default_factory=list)
    repairs: list[dict] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)
    hint: str | None = None
    facts: Facts = field(default_factory=Facts)

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def resumable(self) -> bool:
        return self.kind == foreign.CHEF and all(p["code"] in SOFT for p in self.problems)

    def ok(self, text: str) -> None:
        self.lines.append(("ok", text))

    def fail(self, code: Problem, text: str, status: str = "FAIL") -> None:
        # Problem(x) looks a member up by value; mypy reads it as a call of the members' constructor
        self.problems.append({"code": Problem(code).value, "message": text})  # type: ignore[call-arg]
        self.lines.append((status, text))

    def codes(self) -> set[Problem]:
        return {Problem(p["code"]) for p in self.problems}  # type: ignore[call-arg]  # lookup by value

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "valid": self.valid,
            "resumable": self.resumable,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "problems": self.problems,
            "repairs": self.repairs,
            **({"resume_instead": self.hint} if self.hint else {}),
        }

    def text(self) -> str:
        out = [f"{self.path} ({self.kind})"]
        out += [f"  [{status}] {text}" for status, text in self.lines]
        out += [f"  [fixed] {r['message']}" for r in self.repairs]
        verdict = (
            "complete and resumable with full state"
            if self.valid
            else "resumable, with less state (see above)"
            if self.resumable
            else "NOT resumable"
        )
        out.append(
            f"  => {verdict}" + (f"; resume from {self.hint} instead" if self.hint and not self.resumable else "")
        )
        return "\n".join(out)
