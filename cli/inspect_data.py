"""Report what is in a recipe file as training would see it. See --help."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from chef_genius.data.inspect_cli import entry  # noqa: E402

if __name__ == "__main__":
    entry()
