"""The package's import directions, read from the source with ``ast`` (nothing is imported).

The folders are the architecture only while the imports agree with them:
- ``checkpoint/`` is the format and its mechanics: it knows nothing of training, data, models,
  repair or monitoring, so verify, repair and the trainer can all build on it;
- ``doctor/`` repairs checkpoints without the trainer (it may use train's config, schedule and run
  state, which are plain values and pure functions);
- ``data/`` feeds the trainer and knows neither the trainer nor the checkpoint;
- ``devtools/`` is for developers: nothing a run or a repair executes imports it;
- ``cli/*.py`` are a few lines that call one entry function of the package.

Every import counts, at module level or inside a function, ``import a.b`` and ``from a import b``
alike. Checkpoint's and doctor's rules also hold for what their imports import in turn.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "chef_genius"
CLI_MAX_LINES = 15

# (package whose modules are checked, what they must not import, why)
FORBIDDEN = [
    (
        "chef_genius.checkpoint",
        ["chef_genius.train", "chef_genius.data", "chef_genius.model", "chef_genius.doctor", "chef_genius.monitoring"],
        "the checkpoint format stands alone",
    ),
    (
        "chef_genius.doctor",
        [
            f"chef_genius.train.{part}"  # the Trainer and its parts (train/trainer.py lists them)
            for part in ("trainer", "base", "setup", "run_folder", "step", "periodic", "rollback", "ending")
        ],
        "repair must not need the trainer",
    ),
    ("chef_genius.data", ["chef_genius.train", "chef_genius.checkpoint"], "data knows neither trainer nor checkpoint"),
]
TRANSITIVE = ("chef_genius.checkpoint", "chef_genius.doctor")  # their rules also hold for what they pull in


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file: ``from a import b`` gives ``a`` and ``a.b``
    (``b`` may be a submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _modules() -> dict[str, set[str]]:
    """Module name -> the chef_genius modules it imports, for every module of the package."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        graph[module_name(path)] = {n for n in imported_names(path) if n.split(".")[0] == "chef_genius"}
    return graph


GRAPH = _modules()


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _executed(name: str) -> list[str]:
    """The modules that importing ``name`` runs: its parent packages' ``__init__`` and itself."""
    parts = name.split(".")
    return [m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in GRAPH]


def _reached(start: str) -> dict[str, str]:
    """Every module importing ``start`` may run (imports of imports, function-level ones included),
    each with the module that imports it."""
    seen, todo = {}, [start]
    while todo:
        current = todo.pop()
        for name in GRAPH.get(current, ()):
            for module in _executed(name):
                if module not in seen and module != start:
                    seen[module] = current
                    todo.append(module)
    return seen


def test_the_graph_covers_the_package():
    assert {
        "chef_genius.checkpoint.layout",
        "chef_genius.doctor.repair",
        "chef_genius.data.streaming",
        "chef_genius.train.trainer",
        "chef_genius.devtools.flags_table",
    } <= set(GRAPH)
    assert "chef_genius.train.config" in GRAPH["chef_genius.doctor.repair"]


@pytest.mark.parametrize("package, forbidden, why", FORBIDDEN, ids=[rule[0] for rule in FORBIDDEN])
def test_import_directions(package, forbidden, why):
    bad = []
    for module in (m for m in GRAPH if _within(m, package)):
        reached = _reached(module) if package in TRANSITIVE else {n: module for n in GRAPH[module]}
        for name, via in sorted(reached.items()):
            if any(_within(name, f) for f in forbidden):
                bad.append(f"{module} imports {name}" + (f" (through {via})" if via != module else ""))
    assert not bad, f"{why}:\n" + "\n".join(bad)


def test_nothing_outside_devtools_imports_devtools():
    bad = [
        f"{module} imports {name}"
        for module, names in GRAPH.items()
        if not _within(module, "chef_genius.devtools")
        for name in sorted(names)
        if _within(name, "chef_genius.devtools")
    ]
    assert not bad, "devtools are for developers, not for runs:\n" + "\n".join(bad)


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "cli").glob("*.py")))
def test_cli_scripts_only_call_an_entry_function(script):
    path = REPO / "cli" / script
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= CLI_MAX_LINES, f"{script}: the logic belongs in chef_genius/"
    tree = ast.parse(text)
    entries, called = set(), []
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.Import):
            assert all(alias.name in ("os", "sys") for alias in node.names), ast.unparse(node)
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").startswith("chef_genius."), ast.unparse(node)
            entries.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Expr) and ast.unparse(node.value).startswith("sys.path.insert(0, "):
            continue  # so the script runs from a checkout without installing the package
        elif isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'":
            assert not node.orelse and len(node.body) == 1, ast.unparse(node)
            call = node.body[0]
            assert isinstance(call, ast.Expr) and isinstance(call.value, ast.Call), ast.unparse(node)
            assert isinstance(call.value.func, ast.Name) and call.value.func.id in entries, ast.unparse(node)
            assert not call.value.args and not call.value.keywords, ast.unparse(node)
            called.append(call.value.func.id)
        else:
            raise AssertionError(f"{script}: only imports and one entry call belong here, not {ast.unparse(node)!r}")
    assert len(entries) == 1 and called == sorted(entries), (
        f"{script}: imports {sorted(entries)} and calls {called} under __main__; want one entry function, called"
    )
