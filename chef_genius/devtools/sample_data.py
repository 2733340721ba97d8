"""Deterministic generator of small, original sample recipes in the RecipeNLG CSV layout.

The recipes are assembled from hand-written templates (dish types, main ingredients,
pantry items and direction steps, in ``sample_vocabulary.py``) with ``random.Random(seed)``, so the same seed always
gives a byte-identical CSV. Usage::

    python -m chef_genius.devtools.sample_data --out data/sample_recipes.csv --count 400 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
from pathlib import Path

from chef_genius.devtools.sample_vocabulary import (
    ADJECTIVES,
    DISHES,
    MAINS,
    PANTRY,
    SWEET_ADJECTIVES,
    SWEET_KINDS,
    TIPS,
)


def _line(qty: str, name: str) -> str:
    return qty.replace("%", name) if "%" in qty else f"{qty} {name}"


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower().encode("ascii", "ignore").decode()).strip("-")


def generate_recipes(n: int, seed: int = 0) -> list[dict]:
    """Return ``n`` deterministic recipes as dicts (title, ingredients, directions, ner, link, source)."""
    rng = random.Random(seed)
    recipes = []
    for i in range(n):
        dish = rng.choice(DISHES)
        kinds = dish["kinds"].split()
        name, word, kind, qtys = rng.choice([m for m in MAINS if m[2] in kinds])
        base = dish["base"]
        pool = [e for e in dish["extras"].split(", ") if e != name]
        size = rng.random()  # one knob for both lists, so lengths vary from tiny to long
        n_ingredients = min(9, max(len(base) + 1, 3 + round(size * 6 + rng.uniform(-1, 1))))
        extras = rng.sample(pool, min(len(pool), n_ingredients - len(base) - 1))
        ner = [name] + base + extras
        ingredients = [_line(rng.choice(qtys), name)]
        ingredients += [_line(rng.choice(PANTRY[p].split("|")), p) for p in base + extras]

        minutes = rng.randint(*dish["m"])
        minutes = 5 * round(minutes / 5) if minutes >= 20 else minutes
        values = {
            "main": name,
            "extras": _join(extras) if extras else "",
            "m": minutes,
            "temp": rng.choice(dish.get("temps", (350,))),
        }
        steps = [s for s in dish["steps"] if not (s.startswith("+") and not extras)]
        required = [j for j, s in enumerate(steps) if s[0] in "*+"]
        optional = [j for j, s in enumerate(steps) if s[0] not in "*+"]
        n_steps = 2 + round(size * 6 + rng.uniform(-1, 1))
        keep = sorted(required + rng.sample(optional, min(len(optional), max(0, n_steps - len(required)))))
        directions = [steps[j].lstrip("*+").format(**values) for j in keep]
        if size > 0.6:  # long recipes get a few serving notes
            tips = [t for t in TIPS if extras or "{extras}" not in t]
            n_tips = min(rng.randint(1, 3), 8 - len(directions))
            directions += [t.format(**values) for t in rng.sample(tips, n_tips)]

        adjectives = SWEET_ADJECTIVES if kind in SWEET_KINDS else ADJECTIVES
        title = dish["title"].format(main=word)
        if rng.random() < 0.7:
            title = f"{rng.choice(adjectives)} {title}"
        source = "Gathered" if rng.random() < 0.8 else "Recipes1M"
        link = f"www.example.com/recipe/{1000 + i}-{_slug(title)}"
        recipes.append(
            dict(title=title, ingredients=ingredients, directions=directions, ner=ner, link=link, source=source)
        )
    return recipes


def write_recipenlg_csv(path: str | Path, recipes: list[dict]) -> None:
    """Write recipes as a RecipeNLG-style CSV (unnamed index column, JSON list columns, UTF-8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["", "title", "ingredients", "directions", "link", "source", "NER"])
        for i, r in enumerate(recipes):
            writer.writerow(
                [
                    i,
                    r["title"],
                    json.dumps(r["ingredients"], ensure_ascii=False),
                    json.dumps(r["directions"], ensure_ascii=False),
                    r["link"],
                    r["source"],
                    json.dumps(r["ner"], ensure_ascii=False),
                ]
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write deterministic sample recipes in RecipeNLG CSV layout.")
    parser.add_argument("--out", default="data/sample_recipes.csv", help="output CSV path")
    parser.add_argument("--count", type=int, default=400, help="number of recipes")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    write_recipenlg_csv(args.out, generate_recipes(args.count, args.seed))
    print(f"wrote {args.count} recipes to {args.out}")


if __name__ == "__main__":
    main()
