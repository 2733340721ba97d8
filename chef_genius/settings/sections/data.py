"""The data settings: the files and their columns, the prompt, the split, duplicates, token lengths, the
cache and the loaders, grouping by length.
"""

from dataclasses import dataclass

from chef_genius.data.dedup import DEFAULT_THRESHOLD
from chef_genius.data.recipes import DEFAULT_SOURCE_TEMPLATE
from chef_genius.settings import checks
from chef_genius.settings.choices import (
    GUARDED,
    SESSION,
    DedupMode,
)
from chef_genius.settings.fields import setting


@dataclass
class DataSettings:
    title = "data"
    data: list[str] | None = setting(
        None,
        policy=GUARDED,
        check=checks.data_sources,
        metavar="FILE[:WEIGHT]",
        help=(
            "training recipes: RecipeNLG / Food.com CSV, JSONL or Parquet, also .gz, .bz2 or a .zip holding one; "
            "several sources mix, each with an optional weight, its share of an epoch (1: every recipe once, 2: "
            "twice, 0.5: a different half each epoch; docs/data.md) (a resume reuses the run's)"
        ),
    )
    eval_data: str | None = setting(
        None,
        policy=GUARDED,
        check=checks.existing_file,
        help="separate validation file (default: hold out --eval-split-ratio)",
    )
    columns: str | None = setting(
        None,
        policy=GUARDED,
        check=checks.columns,
        metavar="FIELD=COLUMN,...",
        help=(
            "which columns hold the recipe, for a layout other than RecipeNLG, Food.com or input/output pairs, e.g. "
            "title=name,directions=steps (fields: title, ingredients, directions, ner, input, output; an unnamed "
            "field keeps its own name; applies to --eval-data too)"
        ),
    )
    source_template: str = setting(
        DEFAULT_SOURCE_TEMPLATE,
        policy=GUARDED,
        check=checks.source_template,
        metavar="TEXT",
        help=(
            "how the model input is built from a recipe: {ingredients} and/or {title}, stored with the run and the "
            "model and used by samples and generate_recipe.py; input/output pair files keep their own input "
            "(default {default!r})"
        ),
    )
    eval_split_ratio: float = setting(
        0.02,
        policy=GUARDED,
        check=checks.fraction,
        help="fraction of --data held out for validation (default {default})",
    )
    dedup: DedupMode = setting(
        "remove",
        policy=GUARDED,
        legacy="off",
        help=(
            "duplicate recipes of --data (exact after normalising case, spacing, punctuation and ingredient order; "
            "near: MinHash similarity >= --dedup-threshold) and twins of --eval-data recipes: remove them from "
            "training and list them in removed_duplicates.csv, keep them (found, listed, held out or trained on "
            "together), or off (not looked for; the validation split by row number, as before) (default {default})"
        ),
    )
    dedup_threshold: float = setting(
        DEFAULT_THRESHOLD,
        policy=GUARDED,
        check=checks.similarity,
        metavar="J",
        help=(
            "estimated Jaccard similarity of word 3-grams from which two recipes are near-duplicates (default "
            "{default}, set by measurement: docs/data.md)"
        ),
    )
    max_source_length: int = setting(
        256, policy=GUARDED, check=checks.positive_int, help="max input tokens (default {default})"
    )
    max_target_length: int = setting(
        512, policy=GUARDED, check=checks.positive_int, help="max recipe tokens (default {default})"
    )
    cache_dir: str | None = setting(
        None, policy=SESSION, help="tokenized-data cache (default: MODEL_OUTPUT/../.cache/tokenized)"
    )
    num_proc: int = setting(
        0,
        policy=SESSION,
        check=checks.at_least_zero,
        help=("processes that parse and tokenize a new data file (default {default}: one per available core)"),
    )
    dataloader_num_workers: int = setting(
        2, policy=SESSION, check=checks.at_least_zero, help="DataLoader worker processes (default {default})"
    )
    streaming: bool = setting(
        False,
        policy=GUARDED,
        help=(
            "read and tokenize --data on the fly, no tokenized cache (for data larger than the disk; duplicates are "
            "still found, in one read before the first step); order is shuffled only within --length-group-size "
            "groups; validation needs --eval-data"
        ),
    )
    group_by_length: bool = setting(
        True,
        policy=GUARDED,
        position_key="group_by_length",  # --no-group-by-length
        help="plain shuffled batches instead of length-grouped ones",
    )
    length_group_size: int = setting(
        1024,
        policy=GUARDED,
        check=checks.positive_int,
        position_key="length_group_size",
        help="examples sorted together by length (default {default})",
    )
