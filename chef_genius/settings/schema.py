"""Every training setting, declared once: its type, default, help, flag(s), check and resume policy.

``TrainConfig`` is one flat dataclass made of the sections below (``cfg.learning_rate``); each section
is one group of ``--help``. Every field but ``explicit`` is saved in each checkpoint as
``hyperparameters`` (flat, one key per field), and a resume reads them back through this schema
(``chef_genius/train/settings.py``).

Each section is a dataclass in ``chef_genius/settings/sections/`` (one module per theme), its choices
``Literal`` types in ``chef_genius/settings/choices.py``; this module joins the sections.

To add a setting, add one field to the section it belongs to, e.g. in ``OptimisationSettings``
(``sections/optimisation.py``)::

    label_smoothing: float = setting(0.0, policy=Policy.APPLIED, check=checks.fraction,
                                     help="label smoothing of the loss (default {default})")

That is the whole edit: the flag ``--label-smoothing`` (its type from the annotation, its default and
help from the field), its check in ``validate``, its resume policy, its key in ``--config`` files and
in a run's ``settings.yaml`` (``settings/config_file.py``) and the reference pages follow
(regenerate them: ``python -m chef_genius.devtools.references --write``; docs/reference/flags.md and
docs/reference/resume-policy.md).

- Choices are a ``Literal[...]`` annotation (``list[Literal[...]]`` for several values).
- A bool is a switch: ``--name`` turns on one that is off by default, ``--no-name`` turns off one
  that is on; ``flags=[Flag(...), ...]`` spells the flags otherwise (both ways, a ``store_const``).
- ``flags=("--name", "--alias")`` adds aliases; ``metavar`` names the value in ``--help``.
- ``cli_default``: the parser's default where it must differ from the field's.
- ``position_key``: the key under which the data position also saves a setting the sample order
  depends on; ``note``: what a resume that changes the setting announces.
- A check that involves several settings goes into ``validate`` (``train/config.py``).
- Checkpoints from before the setting existed do not record it: their resume keeps the command's value
  and says so (``train/settings.py``), nothing else to do; unless the new default would change what
  such a run did: then ``legacy`` declares the value those runs had (``dedup``: they trained on every
  row), and a resume of them keeps it like a recorded value.
- Keep the sections' annotations real types (no ``from __future__ import annotations`` there): the
  parser reads them.
"""

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Protocol, cast

from chef_genius.settings.choices import (  # noqa: F401 (the names other modules import from the schema)
    DedupMode,
    MetricForBest,
    OnSaveError,
    Optimizer,
    Precision,
    ProgressMode,
    Reporter,
    Schedule,
)
from chef_genius.settings.sections.checkpoints import CheckpointSettings, DivergenceSettings
from chef_genius.settings.sections.data import DataSettings
from chef_genius.settings.sections.model import DEFAULT_MODEL, LoRASettings, ModelSettings
from chef_genius.settings.sections.monitoring import MonitoringSettings, RecipeMetricsSettings
from chef_genius.settings.sections.optimisation import OptimisationSettings
from chef_genius.settings.sections.precision import PrecisionSettings

__all__ = [
    "DEFAULT_MODEL",
    "SECTIONS",
    "CheckpointSettings",
    "DataSettings",
    "DivergenceSettings",
    "LoRASettings",
    "ModelSettings",
    "MonitoringSettings",
    "OptimisationSettings",
    "PrecisionSettings",
    "RecipeMetricsSettings",
    "Section",
    "TrainConfig",
]


@dataclass
class TrainConfig(
    DataSettings,
    ModelSettings,
    OptimisationSettings,
    LoRASettings,
    PrecisionSettings,
    CheckpointSettings,
    DivergenceSettings,
    MonitoringSettings,
    RecipeMetricsSettings,
):
    """All settings, flat. (As dataclasses do, the fields run from the last section to the first; a
    resume lists its changes in that order.)"""

    # The fields the command line set (any spelling of their flags); never saved in a checkpoint.
    explicit: frozenset = frozenset()

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        del values["explicit"]
        return values


class Section(Protocol):
    """What the parser and the reference pages read of a section besides its fields: its title."""

    title: ClassVar[str]


SECTIONS = cast("tuple[type[Section], ...]", TrainConfig.__bases__)  # in --help order
