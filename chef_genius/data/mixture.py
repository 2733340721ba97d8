"""Several training sources: how ``--data`` names them, their canonical order, what each adds to an epoch.

``--data a.csv b.jsonl.gz:0.5 c.json:2``: each value is a data file (any format, container and layout
one ``--data`` file may be) with an optional weight after a last ``:`` (a positive number). A value
that names an existing file as given is that file, weight 1, even if it ends in ``:2``; so is any
value whose tail after the last ``:`` is not a number (``C:\\data\\recipes.csv``).

What a weight means (``per_epoch``): a source with ``n`` training recipes (after duplicates and the
validation split) adds ``k = floor(w * n + 0.5)`` samples to each epoch, at least one:

- ``w = 1``: every recipe of the source exactly once per epoch;
- ``w`` above 1: every recipe ``floor(k / n)`` times, plus ``k mod n`` recipes once more, drawn anew
  each epoch (``w = 2``: every recipe exactly twice);
- ``w`` below 1: ``k`` different recipes, drawn without replacement anew each epoch (``w = 0.5``: a
  random half, another half the next epoch).

The draws are seeded by (``--seed``, epoch, the source's place in the canonical order), so an epoch's
sample list is a pure function of the seed, the epoch, the weights and the per-source counts
(``Mixture.rows``); the sampler shuffles and length-groups that list as it does one file's recipes,
so exact resume and every world size keep working. With every weight 1 the list is each training
recipe once: the order is the one a single file of those recipes gets.

The canonical order: sources sorted by the sha256 of their content (then weight), never by their
place on the command line, so ``--data a b`` and ``--data b a`` train on the same sample order, and
"the earlier source" of a cross-source duplicate (``corpus.across_sources``) is the same either way.
The same content given twice is refused: give it once, with a weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chef_genius.data.fingerprint import content_identity, content_sha256
from chef_genius.errors import UserError

_SALT = 0x5A3C  # the weighted draws' own stream: never the order's nor the split's


@dataclass(frozen=True)
class Source:
    """One ``--data`` value: a data file and its weight."""

    path: str
    weight: float = 1.0

    @property
    def name(self) -> str:
        return Path(self.path).name

    def spelled(self) -> str:
        """As ``--data`` takes it back."""
        return self.path if self.weight == 1 else f"{self.path}:{self.weight:g}"


def parse_source(text: str) -> Source:
    """A ``--data`` value: ``PATH`` or ``PATH:WEIGHT`` (see the module docstring). Raises ``UserError``
    for a weight that is not a positive finite number."""
    text = str(text)
    if Path(text).is_file() or ":" not in text:
        return Source(text)
    path, _, tail = text.rpartition(":")
    try:
        weight = float(tail)
    except ValueError:
        return Source(text)  # e.g. C:\recipes.csv: the colon is the path's
    if not math.isfinite(weight) or weight <= 0:
        raise UserError(f"--data {text}: a source's weight must be a positive number, got {tail}")
    return Source(path, weight)


def parse_sources(values) -> list[Source]:
    """The ``--data`` values (a list, or one string as older checkpoints saved it) as sources."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [parse_source(v) for v in values]


def check_sources(values, flag: str = "--data") -> list[str]:
    """Every source is a file with a valid weight, and no content is given twice; returns the values as
    given. Only files of equal size can have equal content, so only those are read (hardly ever: the
    check costs a ``stat`` a file), before the model is loaded rather than after."""
    sources = parse_sources(values)
    for s in sources:
        if not Path(s.path).is_file():
            raise UserError(f"{flag} file not found: {s.path}")
    by_size: dict[int, list[Source]] = {}
    for s in sources:
        by_size.setdefault(Path(s.path).stat().st_size, []).append(s)
    for same in by_size.values():
        if len(same) > 1:
            canonical(same)  # refuses the same content twice
    return list(values)


def canonical(sources: list[Source]) -> list[Source]:
    """The sources in their canonical order (by content sha256, then weight); the same content twice
    is refused (``UserError``)."""
    hashed = sorted((((content_sha256(s.path), s.weight, s.path), s) for s in sources), key=lambda pair: pair[0])
    for (a, _), (b, _) in zip(hashed, hashed[1:]):
        if a[0] == b[0]:
            raise UserError(
                f"--data {a[2]} and {b[2]} have the same content: give it once (a weight, e.g. {a[2]}:2, "
                "trains on it more often)"
            )
    return [s for _, s in hashed]


def is_plain(sources: list[Source]) -> bool:
    """One source of weight 1: the data as one ``--data FILE`` has always been."""
    return len(sources) == 1 and sources[0].weight == 1


# -- what a run records -------------------------------------------------------------------------------
def identity(sources: list[Source]):
    """What a checkpoint records of the sources it trained on (``data_identity``): for one source of
    weight 1 its content identity, as checkpoints always saved it; else a list of content identities
    with weights, in canonical order (so the command line's order does not matter)."""
    if not sources:
        return None
    if is_plain(sources):
        return content_identity(sources[0].path)
    return [{**content_identity(s.path), "weight": s.weight} for s in canonical(sources)]  # type: ignore[dict-item]


def _as_entries(saved) -> list[dict]:
    if saved is None:
        return []
    if isinstance(saved, dict):
        return [{**saved, "weight": 1.0}]
    return [dict(e) for e in saved]


def identity_changes(saved, now) -> list[str]:
    """How the sources of identity ``now`` differ from ``saved`` (both as ``identity`` returns them),
    independent of order: one phrase per added, removed, edited or re-weighted source."""
    old, new = _as_entries(saved), _as_entries(now)
    by_sha_old = {e.get("sha256"): e for e in old}
    by_sha_new = {e.get("sha256"): e for e in new}
    changes = []
    for sha, e in by_sha_new.items():
        if sha in by_sha_old and float(by_sha_old[sha].get("weight", 1)) != float(e.get("weight", 1)):
            changes.append(f"{e['name']} weight {by_sha_old[sha].get('weight', 1):g} -> {e.get('weight', 1):g}")
    gone = [e for sha, e in by_sha_old.items() if sha not in by_sha_new]
    added = [e for sha, e in by_sha_new.items() if sha not in by_sha_old]
    for e in list(gone):
        same_name = next((a for a in added if a.get("name") == e.get("name")), None)
        if same_name is not None:  # the same file name with another content: an edit
            changes.append(f"{e.get('name')} changed ({e.get('size')} -> {same_name.get('size')} bytes, other content)")
            gone.remove(e)
            added.remove(same_name)
    changes += [f"{e.get('name')} removed" for e in gone]
    changes += [f"{e.get('name')} added" for e in added]
    return changes


# -- an epoch's samples -------------------------------------------------------------------------------
def per_epoch(weight: float, rows: int) -> int:
    """Samples a source of ``rows`` training recipes adds to each epoch (see the module docstring)."""
    if rows == 0:
        return 0
    return max(1, math.floor(weight * rows + 0.5))


@dataclass(frozen=True)
class Mixture:
    """The training set's sources: training recipes per source (in canonical order, contiguous in the
    training set) and weights."""

    counts: tuple[int, ...]
    weights: tuple[float, ...]

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])

    @property
    def plain(self) -> bool:
        """Every weight 1: each recipe once per epoch, the order of one file of them."""
        return all(w == 1 for w in self.weights)

    @property
    def per_epoch(self) -> list[int]:
        return [per_epoch(w, n) for w, n in zip(self.weights, self.counts)]

    @property
    def size(self) -> int:
        """Samples per epoch."""
        return int(sum(self.per_epoch))

    def rows(self, seed: int, epoch: int) -> np.ndarray:
        """The training-set indices of epoch ``epoch``'s samples, source by source (pure)."""
        offsets, parts = self.offsets, []
        for i, (n, k) in enumerate(zip(self.counts, self.per_epoch)):
            whole, rest = divmod(k, n) if n else (0, 0)
            mine = [np.tile(np.arange(n, dtype=np.int64), whole)]
            if rest:
                drawn = np.random.default_rng([seed, epoch, _SALT, i]).choice(n, rest, replace=False)
                mine.append(np.sort(drawn).astype(np.int64))
            parts.append(np.concatenate(mine) + offsets[i])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def record(self) -> list[list]:
        """What the data position saves of it: [training recipes, weight] per source."""
        return [[int(n), float(w)] for n, w in zip(self.counts, self.weights)]
