"""The sections of the settings schema, one module per theme (data; model and LoRA; optimisation; precision
and speed; checkpoints and the divergence guard; monitoring and the recipe metrics). Each section is a
dataclass of ``setting(...)`` fields and a ``title`` (its ``--help`` group); ``chef_genius/settings/schema.py``
joins them into ``TrainConfig`` and says how to add a setting.

No ``from __future__ import annotations`` in these modules: the parser reads their annotations as types.
"""
