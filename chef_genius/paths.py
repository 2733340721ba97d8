"""Where the bundled sample and the default model folders are, in a checkout and in an installed package."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_CHECKOUT_SAMPLE = REPO_ROOT / "data" / "sample_recipes.csv"
# In a checkout: data/ and models/ beside the package. Installed (pip install .): pyproject.toml puts
# the sample under <prefix>/share/chef-genius, and models go under the current folder, as a run's
# default --model-output does.
if _CHECKOUT_SAMPLE.is_file():
    SAMPLE_DATA = _CHECKOUT_SAMPLE
    MODELS_ROOT = REPO_ROOT / "models"
else:
    SAMPLE_DATA = Path(sys.prefix) / "share" / "chef-genius" / "sample_recipes.csv"
    MODELS_ROOT = Path.cwd() / "models"
