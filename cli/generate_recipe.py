"""Write a recipe from ingredients with a trained model. See --help."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from chef_genius.model.generate_cli import entry  # noqa: E402

if __name__ == "__main__":
    entry()
