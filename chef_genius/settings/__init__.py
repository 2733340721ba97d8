"""The training settings, declared once (``schema.py``) with the tools that read them (``fields.py``)."""
