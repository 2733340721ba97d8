"""The settings' typed vocabularies: the ``Literal`` choices a setting's annotation names (the parser and
``validate`` read their values from here) and the short names of the resume policies the sections use.
No ``from __future__ import annotations`` in the sections: the parser reads their annotations as types."""

from typing import Literal

from chef_genius.settings.fields import Policy

Schedule = Literal["linear", "cosine", "constant"]
Precision = Literal["auto", "bf16", "no"]
ProgressMode = Literal["auto", "bar", "log"]
Reporter = Literal["tensorboard", "wandb", "none"]
Optimizer = Literal["adamw", "adafactor", "adamw-8bit"]
OnSaveError = Literal["stop", "continue"]
# eval_loss, then the recipe metrics of evaluation/metrics.py (a test keeps the two in step)
MetricForBest = Literal[
    "eval_loss",
    "rouge_l",
    "bleu",
    "ingredient_coverage",
    "invented_ingredients",
    "structure_valid",
    "repetition",
    "step_loops",
]
DedupMode = Literal["remove", "keep", "off"]

APPLIED, GUARDED, ADAPTER, RECORDED, SESSION = Policy  # short names for the sections' declarations
