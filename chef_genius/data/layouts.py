"""Which column of a data file is which part of a recipe: the known layouts and ``--columns``.

Recognised without help (first match wins):
- input / output pairs (the replaced system's JSONL): ``input``, ``output``; kept as they are;
- RecipeNLG: ``title``, ``ingredients``, ``directions`` (and ``NER``, the bare ingredient names);
- Food.com (``RAW_recipes.csv``): ``name`` -> title, ``steps`` -> directions, ``ingredients``.

Any other layout is mapped with ``--columns FIELD=COLUMN,...`` (fields: title, ingredients,
directions, ner, input, output); a field not named keeps the column of its own name. Column names
match exactly, else ignoring case and surrounding spaces. An unknown layout is refused with the
columns found and the ``--columns`` line that would map them.
"""

from __future__ import annotations

from dataclasses import dataclass

from chef_genius.errors import DataError, UserError, printable

FIELDS = ("title", "ingredients", "directions", "ner", "input", "output")
RECIPE_FIELDS = ("title", "ingredients", "directions")
PAIR_FIELDS = ("input", "output")
KNOWN = (  # (name, field -> column); optional fields are used when present
    ("input/output pairs", {"input": "input", "output": "output"}),
    ("RecipeNLG", {"title": "title", "ingredients": "ingredients", "directions": "directions", "ner": "NER"}),
    ("Food.com", {"title": "name", "ingredients": "ingredients", "directions": "steps"}),
)
OPTIONAL = ("ner",)
# Column names other datasets use, for the suggestion in a refusal (never applied silently).
SYNONYMS = {
    "title": ("title", "name", "recipe_name", "recipe", "recipe_title", "dish"),
    "ingredients": (
        "ingredients",
        "ingredient_list",
        "ingredients_list",
        "ingredient",
        "ingredient_lines",
        "cleaned_ingredients",
    ),
    "directions": (
        "directions",
        "steps",
        "instructions",
        "method",
        "preparation",
        "recipe_instructions",
        "instruction",
        "procedure",
    ),
}


def parse_columns(spec: str | None) -> dict[str, str]:
    """``--columns title=name,directions=steps`` as {field: column}; ``UserError`` if malformed."""
    if not spec:
        return {}
    mapping = {}
    for part in spec.split(","):
        name, sep, column = part.partition("=")
        name, column = name.strip().lower(), column.strip()
        if not sep or not column:
            raise UserError(
                f"--columns {spec}: write FIELD=COLUMN pairs separated by commas, "
                "e.g. --columns title=name,directions=steps"
            )
        if name not in FIELDS:
            raise UserError(f"--columns {spec}: unknown field {name!r}; the fields are {', '.join(FIELDS)}")
        if name in mapping:
            raise UserError(f"--columns {spec}: {name} is mapped twice")
        mapping[name] = column
    if any(f in mapping for f in PAIR_FIELDS) and any(f in mapping for f in (*RECIPE_FIELDS, "ner")):
        raise UserError(f"--columns {spec}: map either input/output pairs or recipe fields, not both")
    return mapping


def canonical_columns(spec: str | None) -> str | None:
    """One spelling per mapping (field order fixed), so a resume compares mappings, not strings."""
    mapping = parse_columns(spec)
    return ",".join(f"{name}={mapping[name]}" for name in FIELDS if name in mapping) or None


@dataclass(frozen=True)
class Layout:
    name: str
    columns: dict  # field -> the file's column name

    @property
    def pairs(self) -> bool:
        return "input" in self.columns

    def fields(self, row: dict) -> dict:
        return {name: row.get(column) for name, column in self.columns.items()}


def _find(column: str, found: list[str]) -> str | None:
    if column in found:
        return column
    folded = {c.strip().lower(): c for c in reversed(found)}
    return folded.get(column.strip().lower())


def resolve_layout(where, found, spec: str | None = None) -> Layout:
    """The layout of a file whose columns are ``found``, with the ``--columns`` mapping ``spec``."""
    found = [str(c) for c in found or ()]
    mapping = parse_columns(spec)
    if mapping and spec is not None:  # a mapping comes only from a spec
        return _mapped(where, found, mapping, spec)
    for name, columns in KNOWN:
        located = {f: _find(c, found) for f, c in columns.items()}
        if all(located[f] for f in columns if f not in OPTIONAL):
            return Layout(name, {f: c for f, c in located.items() if c})
    shown = printable(", ".join(map(str, found)), 120)
    if _looks_binary(found):  # a binary file read as CSV: a short excerpt, never its raw bytes
        raise DataError(
            f"{where}: expected columns title, ingredients, directions (RecipeNLG), name, steps, "
            f"ingredients (Food.com) or input, output; found {shown or 'none'}; "
            "it looks like a binary file, not text"
        )
    raise DataError(
        f"{where}: expected columns title, ingredients, directions (RecipeNLG), name, steps, "
        f"ingredients (Food.com) or input, output; found {shown or 'none'}; "
        f"map yours with {printable(suggestion(found), 200)}"
    )


def _looks_binary(found) -> bool:
    text = "".join(map(str, found))[:4096]
    odd = sum(1 for c in text if not c.isprintable() and c != "\t")
    return bool(text) and odd > len(text) // 10


def _mapped(where, found: list[str], mapping: dict, spec: str) -> Layout:
    wanted = PAIR_FIELDS if any(f in mapping for f in PAIR_FIELDS) else RECIPE_FIELDS
    columns = {}
    for name in (*wanted, *(() if wanted == PAIR_FIELDS else OPTIONAL)):
        column = _find(mapping.get(name, "NER" if name == "ner" else name), found)
        if column is None and name in mapping:
            raise DataError(
                f"{where}: --columns {spec} maps {name} to {mapping[name]}, which the file does not "
                f"have (found {', '.join(found) or 'none'})"
            )
        if column is None and name not in OPTIONAL:
            raise DataError(
                f"{where}: no column for {name} (found {', '.join(found) or 'none'}); add "
                f"{name}=COLUMN to --columns {spec}"
            )
        if column is not None:
            columns[name] = column
    return Layout("--columns " + spec, columns)


def suggestion(found: list[str]) -> str:
    """The ``--columns`` line for ``found``: likely columns filled in, COLUMN where none fits."""
    lowered = {c.strip().lower(): c for c in reversed(found)}
    parts = []
    for name in RECIPE_FIELDS:
        column = next((lowered[s] for s in SYNONYMS[name] if s in lowered), "COLUMN")
        parts.append(f"{name}={column}")
    return "--columns " + ",".join(parts)


def needed_columns(layout: Layout) -> list[str]:
    return list(dict.fromkeys(layout.columns.values()))
