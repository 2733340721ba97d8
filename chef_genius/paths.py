"""Where the repository keeps its bundled files: the sample data and the models folder."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO_ROOT / "data" / "sample_recipes.csv"
MODELS_ROOT = REPO_ROOT / "models"
