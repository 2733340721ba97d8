"""chef-genius: fine-tune FLAN-T5 to write recipes, with checkpoints that never lose a run's state."""

__version__ = "0.1.0"
