"""The checks of a checkpoint's model files, for ``verify``: the config, generation config and tokenizer
load as the trainer loads them; the weights' headers (every shard), names and shapes fit the config, and
with ``--deep`` every tensor is finite; a LoRA checkpoint's adapter, its config and its base record."""

from __future__ import annotations

from pathlib import Path

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import records as ckrecords
from chef_genius.checkpoint import trust
from chef_genius.checkpoint import weight_files
from chef_genius.doctor import loadable
from chef_genius.doctor import weights as wt
from chef_genius.doctor.problems import Problem
from chef_genius.doctor.report import Report
from chef_genius.errors import printable
from chef_genius.model import wrappers

PREFIX_FIX = "; --fix removes it"  # the end of the prefix line; verify's manifest check may replace it


def _check_files(report: Report, folder: Path) -> None:
    """Present, and each loads the way the trainer loads it (a damaged file is a problem, not an omission)."""
    before = len(report.problems)
    if not (folder / ckpt.MODEL_CONFIG).is_file():
        report.fail(Problem.CONFIG_MISSING, f"{ckpt.MODEL_CONFIG} is missing")
    else:
        _loads(report, Problem.CONFIG_UNREADABLE, loadable.config_problem(folder))
    if not (folder / ckpt.GENERATION_CONFIG).is_file():
        report.fail(Problem.GENERATION_CONFIG_MISSING, f"{ckpt.GENERATION_CONFIG} is missing", "warn")
    else:
        _loads(report, Problem.GENERATION_CONFIG_UNREADABLE, loadable.generation_config_problem(folder))
    if not any((folder / name).is_file() for name in ckpt.TOKENIZER_VOCAB_FILES):
        report.fail(Problem.TOKENIZER_MISSING, "tokenizer files are missing (tokenizer.json / spiece.model)")
    else:
        _loads(report, Problem.TOKENIZER_UNREADABLE, loadable.tokenizer_problem(folder))
    if len(report.problems) == before:
        report.ok("config, generation config and tokenizer load")


def _check_adapter(report: Report, folder: Path, deep: bool) -> None:
    """A LoRA checkpoint: the adapter's header and config agree, the base it belongs to is recorded, the
    tokenizer loads (there is no model config: the base's comes from --pretrained-model)."""
    try:
        header = trust.read_safetensors_header(folder / ckpt.ADAPTER_WEIGHTS)
    except (trust.Untrusted, ValueError, OSError) as err:
        report.fail(Problem.ADAPTER_UNREADABLE, f"{ckpt.ADAPTER_WEIGHTS}: {err}")
        header = None
    config = None
    try:
        config = trust.read_json(folder / ckpt.ADAPTER_CONFIG)
    except (trust.Untrusted, OSError) as err:
        report.fail(Problem.ADAPTER_CONFIG_UNREADABLE, f"{ckpt.ADAPTER_CONFIG}: {err}")
    if config is not None and not (isinstance(config, dict) and isinstance(config.get("r"), int)):
        report.fail(Problem.ADAPTER_CONFIG_UNREADABLE, f"{ckpt.ADAPTER_CONFIG} holds no LoRA config (no integer r)")
        config = None
    if header is not None:
        names = [n for n in header if n != "__metadata__"]
        ranks = {header[n]["shape"][0] for n in names if "lora_A" in n and header[n].get("shape")}
        if not names or not all("lora_A" in n or "lora_B" in n for n in names):
            report.fail(
                Problem.ADAPTER_UNREADABLE, f"{ckpt.ADAPTER_WEIGHTS} holds tensors that are not LoRA A / B matrices"
            )
        elif config is not None and ranks != {config["r"]}:
            report.fail(
                Problem.ADAPTER_UNREADABLE,
                f"{ckpt.ADAPTER_WEIGHTS} has rank {sorted(ranks)}, {ckpt.ADAPTER_CONFIG} says r={config['r']}",
            )
        else:
            report.ok(f"adapter readable ({len(names)} tensors, r={config['r'] if config else '?'})")
            report.facts.adapter_header = header
            if deep:
                bad = wt.nonfinite_tensors([folder / ckpt.ADAPTER_WEIGHTS])
                report.facts.weights_read = True
                if bad:
                    report.fail(
                        Problem.WEIGHTS_NONFINITE, f"{len(bad)} adapter tensors hold NaN or Inf (e.g. {bad[0]})"
                    )
                else:
                    report.ok("every adapter tensor read, all values finite")
    base = ckrecords.read_base(folder)
    if base is None:
        report.fail(
            Problem.BASE_RECORD_MISSING,
            f"{ckpt.BASE_RECORD} is missing or malformed: the base model the "
            "adapter belongs to, and its fingerprint, are unknown",
        )
    else:
        report.ok(
            f"base model recorded: {printable(base['pretrained_model'], 120)} (weights' sha256 {base['sha256'][:12]})"
        )
    if not any((folder / name).is_file() for name in ckpt.TOKENIZER_VOCAB_FILES):
        report.fail(Problem.TOKENIZER_MISSING, "tokenizer files are missing (tokenizer.json / spiece.model)")
    else:
        problem = loadable.tokenizer_problem(folder)
        _loads(report, Problem.TOKENIZER_UNREADABLE, problem)
        if not problem:
            report.ok("tokenizer loads")


def _loads(report: Report, code: Problem, problem: str | None) -> None:
    if problem:
        report.fail(code, problem)


def _check_weights(report: Report, folder: Path, deep: bool):
    try:
        layout, header, files = weight_files.read_weights(folder)
    except weight_files.MissingShard as err:
        report.fail(Problem.WEIGHTS_MISSING, str(err))
        return None
    except (ValueError, OSError) as err:  # trust.Untrusted too: a link, a FIFO, a hostile header
        report.fail(Problem.WEIGHTS_UNREADABLE, str(err))
        return None
    if layout is None:
        report.fail(
            Problem.WEIGHTS_MISSING,
            f"{ckpt.WEIGHTS} is missing (nor sharded weights with {ckpt.WEIGHTS_INDEX}, nor {ckpt.WEIGHTS_BIN})",
        )
        return None
    report.facts.header, report.facts.weights_layout, report.facts.weight_files = header, layout, files
    where = {"single": "", "sharded": f" in {len(files)} shards", "bin": f" in {ckpt.WEIGHTS_BIN}"}[layout]
    report.ok(f"model weights readable ({len(header)} tensors{where})")
    if layout == "bin":
        report.fail(
            Problem.WEIGHTS_BIN,
            f"weights are in {ckpt.WEIGHTS_BIN} (read with weights_only=True); --fix "
            f"converts them to {ckpt.WEIGHTS}, keeping the original",
            "warn",
        )
    bad = wrappers.wrapped(header)
    if bad:
        report.fail(
            Problem.WEIGHTS_PREFIXED,
            f"{len(bad)} weight names carry a _orig_mod./module. prefix (e.g. {bad[0]}){PREFIX_FIX}",
        )
    shown = files[0].name if len(files) == 1 else f"the {len(files)} weight shards"
    model = None
    if (folder / ckpt.MODEL_CONFIG).is_file() and Problem.CONFIG_UNREADABLE not in report.codes():
        too_big = loadable.layers_problem(folder, header)
        if too_big:  # never build thousands of layers a config claims without the weights to match
            report.fail(Problem.WEIGHTS_MISMATCH, f"weights do not match {ckpt.MODEL_CONFIG}: {too_big}")
            return None
        try:
            model = wt.meta_model(folder, None, header)
        except Exception as err:  # reading lm_head / shared to decide on the tie: unreadable data
            report.fail(Problem.WEIGHTS_UNREADABLE, loadable.describe(shown, err))
            return None
    if model is not None:
        _check_shapes(report, {wrappers.strip(k): dict(v, name=k) for k, v in header.items()}, model, deep)
    if deep and not report.codes() & {Problem.WEIGHTS_MISMATCH, Problem.LM_HEAD_MISSING, Problem.WEIGHTS_UNREADABLE}:
        try:  # fatal already: no full read
            nonfinite = wt.nonfinite_tensors(files)
        except Exception as err:  # safetensors' own checks go further than the header's
            report.fail(Problem.WEIGHTS_UNREADABLE, loadable.describe(shown, err))
            return model
        report.facts.weights_read = True
        if nonfinite:
            report.fail(Problem.WEIGHTS_NONFINITE, f"{len(nonfinite)} tensors hold NaN or Inf (e.g. {nonfinite[0]})")
        else:
            report.ok(
                "every tensor read"
                + (f" in each of the {len(files)} shards" if layout == "sharded" else "")
                + ", all values finite"
            )
    return model


def _check_shapes(report: Report, header: dict, model, deep: bool) -> None:
    shapes, ids = wt.expected_tensors(model)
    unknown = [n for n in header if n not in shapes]
    wrong = [n for n in header if n in shapes and tuple(header[n]["shape"]) != shapes[n]]
    present_ids = {ids.get(n) for n in header}
    missing = [n for n in shapes if n not in header and ids.get(n) not in present_ids]
    if unknown or wrong or missing:
        parts = [
            f"{len(x)} {what} (e.g. {x[0]})"
            for x, what in ((missing, "missing"), (wrong, "with the wrong shape"), (unknown, "unknown"))
            if x
        ]
        code = Problem.LM_HEAD_MISSING if missing == ["lm_head.weight"] and not wrong else Problem.WEIGHTS_MISMATCH
        report.fail(code, "weights do not match config.json: " + ", ".join(parts))
        return
    report.ok(f"weight shapes match {ckpt.MODEL_CONFIG}")
    tied = [n for n in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight") if n in header]
    if tied and "shared.weight" in header and deep:
        try:
            equal = all(wt.tensors_equal(header, "shared.weight", n) for n in tied)
        except Exception as err:
            report.fail(Problem.WEIGHTS_UNREADABLE, loadable.describe(header["shared.weight"]["file"].name, err))
            return
        if not equal:
            report.fail(
                Problem.EMBEDDINGS_INCONSISTENT, "encoder/decoder embed_tokens differ from the shared embedding"
            )
            return
    report.ok("shared embeddings consistent" + ("" if "lm_head.weight" in header else " (lm_head tied)"))
