"""Where metrics go: ``MODEL_OUTPUT/metrics.jsonl`` always, TensorBoard and Weights & Biases on request.

The trainer writes plain records (see ``chef_genius/monitoring/metrics.py``); ``Reporters.write`` appends each
one to metrics.jsonl and hands it to the optional sinks. Each session of a run starts with a record
that says where it started, so plots can mark it and drop what a resume from an older step replaced:

    {"type": "start", "step": 0}                                      a fresh run
    {"type": "resume", "step": 1200, "from_checkpoint": ".../checkpoint-1200"}

followed, when ``--data`` names several sources, by ``{"type": "data", "step": N, "sources": [...]}``,
each source's counts (``data/training_set.py``: ``source_counts``).

- TensorBoard (``--report-to tensorboard``; needs the ``tensorboard`` package): event files in
  ``MODEL_OUTPUT/tensorboard``; a resume purges the events after its step, so the curves stay single.
- Weights & Biases (``--report-to wandb``; needs ``wandb`` installed and logged in): off by default;
  the project comes from ``--wandb-project`` or ``$WANDB_PROJECT``, the key from wandb's own login.
  The run id is saved in every checkpoint (``Reporters`` is one of the checkpoint manager's stateful
  components: ``state_dict`` / ``load_state_dict``), so a resume continues the same run, rewound to the
  checkpoint's step (W&B's ``resume_from="ID?_step=N+1"``): the steps logged after the checkpoint by the
  session that was cut short are replaced, as TensorBoard's purge does. A server that refuses to rewind
  gets the plain resume of the same run (one warning). Offline (``WANDB_MODE=offline``) it works the
  same, and ``wandb sync`` uploads it later.

Only the main process reports; the others get a ``Reporters`` that writes nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from chef_genius.errors import UserError
from chef_genius.monitoring.metrics import MetricsLog

log = logging.getLogger("chef_genius")

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class Reporters:
    """metrics.jsonl plus the sinks asked for; ``write`` has ``MetricsLog``'s interface.

    Made with metrics.jsonl alone; ``open`` adds the sinks once the run knows whether it resumes
    (``load_state_dict`` gives it what the checkpoint kept for them)."""

    def __init__(self, metrics: MetricsLog, sinks: list | None = None):
        self.metrics = metrics
        self.sinks = sinks or []
        self.previous: dict = {}  # what the checkpoint resumed from kept for the sinks

    @property
    def path(self) -> Path:
        return self.metrics.path

    @property
    def enabled(self) -> bool:
        return self.metrics.enabled

    def write(self, record: dict) -> None:
        self.metrics.write(record)
        for sink in self.sinks:
            sink.write(record)

    def state_dict(self) -> dict:
        """What a checkpoint keeps so a resume reports into the same runs."""
        values = {}
        for sink in self.sinks:
            values.update(sink.checkpoint_values())
        return values

    def load_state_dict(self, values: dict) -> None:
        self.previous = dict(values or {})

    def open(self, config, output: Path, step: int, resumed_from: Path | None) -> None:
        """Start the sinks of this session and write its ``start`` / ``resume`` record (main process)."""
        if not self.enabled:
            return
        if "tensorboard" in config.report_to:
            # Events after the resume step belong to a branch the resume replaces (purge_step is inclusive).
            self.sinks.append(TensorBoardSink(Path(output) / TENSORBOARD_DIR, step + 1 if resumed_from else None))
        if "wandb" in config.report_to:
            self.sinks.append(
                WandbSink(config, Path(output), self.previous.get("wandb_run_id"), step if resumed_from else None)
            )
        log.info("metrics: %s%s", self.path, "".join(f", {name}" for name in config.report_to))
        if resumed_from is not None:
            self.write({"type": "resume", "step": step, "from_checkpoint": str(resumed_from)})
        else:
            self.write({"type": "start", "step": step})

    def losses(self) -> list[str]:
        """What could not be written, for the run's summary."""
        return self.metrics.losses()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def make_reporters(config, output: Path, is_main: bool) -> Reporters:
    """The reporters of a run: metrics.jsonl (on the main process), sinks added by ``open``."""
    return Reporters(MetricsLog(Path(output) / METRICS_FILE, enabled=is_main, on_error=config.on_save_error))


# ---------------------------------------------------------------------------------------------
# sinks: write(record), checkpoint_values(), close()


def _scalars(record: dict) -> dict[str, float]:
    kind = record.get("type")
    if kind == "train":
        values = {
            "train/learning_rate": record["lr"],
            "train/tokens_per_s": record["tokens_per_s"],
            "train/epoch": record["epoch"],
        }
        if record["loss"] is not None:  # None: every step of the interval was skipped (not finite)
            values["train/loss"] = record["loss"]
        return values
    if kind == "eval":
        values = {"eval/loss": record["eval_loss"]}
        if record.get("best_loss") is not None:
            values["eval/best_loss"] = record["best_loss"]
        return values
    if kind == "generation":  # recipe metrics of --eval-generate (chef_genius/evaluation/metrics.py)
        from chef_genius.evaluation.metrics import METRICS

        return {f"generation/{name}": record[name] for name in METRICS if record.get(name) is not None}
    return {}


def samples_text(record: dict) -> str:
    """Markdown of a ``samples`` record (for TensorBoard's and W&B's text panels)."""
    parts = []
    for sample in record.get("samples", []):
        parts.append(f"**{sample['ingredients']}**\n\n    {sample['text']}")
    return "\n\n".join(parts)


class TensorBoardSink:
    def __init__(self, log_dir: Path, purge_step: int | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--report-to tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=30)

    def write(self, record: dict) -> None:
        step = record.get("step", 0)
        for tag, value in _scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        if record.get("type") == "samples":
            self.writer.add_text("samples", samples_text(record), step)
        if record.get("type") == "eval":
            self.writer.flush()

    def checkpoint_values(self) -> dict:
        return {}

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, config, output: Path, run_id: str | None, resumed_step: int | None = None):
        try:
            import wandb
        except ImportError:
            raise UserError("--report-to wandb needs the wandb package: pip install wandb, then wandb login") from None
        self.wandb = wandb
        project = config.wandb_project or os.environ.get("WANDB_PROJECT")
        common = dict(project=project, name=output.name, dir=str(output), config=config.to_dict())
        run = None
        if run_id and resumed_step is not None:  # the same run, rewound: what came after the checkpoint goes
            try:
                run = wandb.init(resume_from=f"{run_id}?_step={resumed_step + 1}", **common)
            except Exception as err:  # a server without rewinding: the plain resume below
                log.warning(
                    "Weights & Biases did not rewind run %s to step %d (%s); continuing it as it is",
                    run_id,
                    resumed_step,
                    " ".join(str(err).split())[:200],
                )
        if run is None:
            run = wandb.init(id=run_id, resume="allow" if run_id else None, **common)
        self.run = run
        self.run_id = self.run.id
        log.info("Weights & Biases run %s%s", self.run_id, f" (continued after step {resumed_step})" if run_id else "")

    def write(self, record: dict) -> None:
        values: dict[str, object] = dict(_scalars(record))
        if record.get("type") == "samples":
            values["samples"] = self.wandb.Html(f"<pre>{_escape(samples_text(record))}</pre>")
        if values:
            self.run.log(values, step=record.get("step", 0))

    def checkpoint_values(self) -> dict:
        return {"wandb_run_id": self.run_id}

    def close(self) -> None:
        self.run.finish()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
