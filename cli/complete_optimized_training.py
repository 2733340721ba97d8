"""Train FLAN-T5 on recipes. See --help, or README.md."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from chef_genius.train.cli import entry  # noqa: E402

if __name__ == "__main__":
    entry()
