"""Score models and checkpoints on held-out recipes. See --help."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from chef_genius.evaluation.cli import entry  # noqa: E402

if __name__ == "__main__":
    entry()
