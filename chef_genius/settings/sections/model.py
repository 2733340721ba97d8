"""The model and output settings (the pretrained model, a config file, the run folder, resuming, the demo)
and LoRA's.
"""

from dataclasses import dataclass

from chef_genius.model.names import LORA_TARGETS
from chef_genius.paths import MODELS_ROOT
from chef_genius.settings import checks
from chef_genius.settings.choices import (
    ADAPTER,
    APPLIED,
    RECORDED,
    SESSION,
)
from chef_genius.settings.fields import setting

DEFAULT_MODEL = "google/flan-t5-large"


@dataclass
class ModelSettings:
    title = "model and output"
    pretrained_model: str = setting(
        DEFAULT_MODEL,
        policy=RECORDED,
        note=("the LoRA run's base model is rebuilt from it (its weights must match the checkpoint's fingerprint)"),
        help="model name or folder to start from (default {default})",
    )
    config: str | None = setting(
        None,
        policy=SESSION,
        metavar="FILE.yaml",
        help=(
            "read settings from a YAML file (name: value, one a line; see configs/); flags given on the command line "
            "override it, and a resume treats the file's settings as flags given"
        ),
    )
    model_output: str = setting(
        str(MODELS_ROOT / "chef-genius"),
        policy=SESSION,
        cli_default=None,
        help="run folder: checkpoints and the final model (default models/chef-genius)",
    )
    resume_from_checkpoint: str | None = setting(
        None,
        policy=SESSION,
        flags=("--resume-from-checkpoint", "--resume"),
        metavar="PATH|latest",
        help="resume from a checkpoint folder, or the newest complete one",
    )
    auto_resume: bool = setting(
        False, policy=SESSION, help=("resume from the newest complete checkpoint if there is one, else start fresh")
    )
    allow_config_change: bool = setting(
        False,
        policy=SESSION,
        help=(
            "resume even with flags that change which recipes the rest of the run sees (data, batch size, "
            "accumulation, seed, grouping, max lengths, eval split, columns, source template)"
        ),
    )
    demo: bool = setting(
        False,
        policy=SESSION,
        help=(
            "train the offline tiny model on the bundled sample (CPU, about 2 minutes of CPU time) and show what it "
            "learned: a held-out recipe before and after, and its recipe metrics"
        ),
    )


@dataclass
class LoRASettings:
    title = "LoRA"
    lora_r: int = setting(
        0,
        policy=ADAPTER,
        check=checks.lora_rank,
        metavar="R",
        help=(
            "train rank-R LoRA adapters (peft) on a frozen --pretrained-model instead of every weight; the optimizer "
            "holds the adapter only (default {default}: full fine-tuning)"
        ),
    )
    lora_alpha: float | None = setting(
        None,
        policy=ADAPTER,
        check=checks.positive,
        metavar="A",
        help=("LoRA scaling numerator: the adapter's update is scaled by A / R (default 2 x --lora-r)"),
    )
    lora_dropout: float = setting(
        0.05,
        policy=APPLIED,
        check=checks.fraction,
        metavar="P",
        help="dropout on the adapter's input (default {default})",
    )
    lora_target_modules: list[str] = setting(
        factory=lambda: list(LORA_TARGETS),
        policy=ADAPTER,
        check=checks.unique,
        metavar="NAME",
        help=(
            "linear layers that get an adapter, by the last part of their name, those the model has (default T5's "
            "attention and feed-forward projections: {default})"
        ),
    )
    save_adapter_only: bool = setting(
        False,
        policy=APPLIED,
        help=(
            "with --lora-r: the final model folder keeps the adapter (and the base's name) instead of the merged model"
        ),
    )
