"""Deterministic generator of small, original sample recipes in the RecipeNLG CSV layout.

The recipes are assembled from hand-written templates (dish types, main ingredients,
pantry items and direction steps) with ``random.Random(seed)``, so the same seed always
gives a byte-identical CSV. Usage::

    python -m chef_genius.devtools.sample_data --out data/sample_recipes.csv --count 400 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
from typing import Any
from pathlib import Path

# Main ingredients by kind: (name, title word, "|"-separated quantity choices).
MAINS_BY_KIND = {
    "meat": [
        ("chicken breasts", "Chicken", "1 1/2 lb.|2 lb.|4"),
        ("chicken thighs", "Chicken Thigh", "2 lb.|6|8"),
        ("pork chops", "Pork Chop", "4|6|2 lb."),
        ("pork shoulder", "Pork", "2 lb.|3 lb."),
        ("beef chuck", "Beef", "2 lb.|1 1/2 lb."),
        ("turkey breast", "Turkey", "1 1/2 lb.|2 lb."),
    ],
    "ground": [
        ("ground beef", "Beef", "1 lb.|1 1/2 lb."),
        ("ground turkey", "Turkey", "1 lb.|1 1/4 lb."),
        ("Italian sausage", "Sausage", "1 lb.|12 oz."),
    ],
    "cured": [("ham", "Ham", "2 c. diced|8 oz."), ("bacon", "Bacon", "6 slices|8 slices|1/2 lb.")],
    "fish": [
        ("shrimp", "Shrimp", "1 lb.|1 1/2 lb."),
        ("salmon fillets", "Salmon", "4|1 1/2 lb."),
        ("cod fillets", "Cod", "4|1 lb."),
    ],
    "legume": [
        ("firm tofu", "Tofu", "14 oz.|1 block"),
        ("chickpeas", "Chickpea", "1 (15 oz.) can|2 cans"),
        ("black beans", "Black Bean", "2 cans|1 (15 oz.) can|3 c. cooked"),
        ("lentils", "Lentil", "1 c. dried|2 c. cooked"),
    ],
    "veg": [
        ("potatoes", "Potato", "2 lb.|4 medium|6 small"),
        ("sweet potatoes", "Sweet Potato", "2 large|3 medium"),
        ("broccoli", "Broccoli", "1 head|4 c. % florets"),
        ("cauliflower", "Cauliflower", "1 head|4 c. % florets"),
        ("butternut squash", "Butternut Squash", "1 medium|3 c. cubed"),
        ("carrots", "Carrot", "1 lb.|6 large"),
        ("zucchini", "Zucchini", "2 medium|3 small"),
        ("eggplant", "Eggplant", "1 large|2 small"),
        ("green beans", "Green Bean", "1 lb.|3 c."),
    ],
    "tender": [
        ("mushrooms", "Mushroom", "8 oz.|1 lb."),
        ("spinach", "Spinach", "5 oz.|1 bag|4 c."),
        ("corn", "Corn", "2 c.|1 (15 oz.) can|4 ears"),
        ("tomatoes", "Tomato", "4 ripe|1 pt. cherry|3 large"),
    ],
    "berry": [("blueberries", "Blueberry", "1 c.|1 1/2 c."), ("strawberries", "Strawberry", "1 c. sliced|2 c.")],
    "fruit": [
        ("bananas", "Banana", "2 ripe|3 very ripe"),
        ("apples", "Apple", "2|3 tart"),
        ("peaches", "Peach", "2|1 1/2 c. sliced"),
        ("mango", "Mango", "1|1 1/2 c. diced"),
    ],
    "baking": [("pumpkin purée", "Pumpkin", "1 c.|1 (15 oz.) can"), ("lemon zest", "Lemon", "1 tbsp.|2 tsp.")],
    "nut": [
        ("chocolate chips", "Chocolate Chip", "1 c.|1 (12 oz.) pkg."),
        ("pecans", "Pecan", "1/2 c. chopped|1 c."),
        ("rolled oats", "Oatmeal", "1 c.|1 1/2 c."),
        ("peanut butter", "Peanut Butter", "1/2 c.|3/4 c."),
    ],
    "dried": [("dried cranberries", "Cranberry", "3/4 c.|1 c."), ("raisins", "Raisin", "1/2 c.|1 c.")],
}
MAINS = [(name, word, kind, qty.split("|")) for kind, items in MAINS_BY_KIND.items() for name, word, qty in items]

# Pantry items: "|"-separated quantity choices; "%" marks where the name goes when it is not last.
PANTRY = {
    "onion": "1|1 large|1/2",
    "garlic": "2 cloves|3 cloves|4 cloves",
    "chicken broth": "4 c.|1 qt.|2 cans",
    "beef broth": "3 c.|1 qt.",
    "olive oil": "2 tbsp.|3 tbsp.",
    "vegetable oil": "1 tbsp.|2 tbsp.|1/3 c.",
    "butter": "2 tbsp.|1/2 c.|1 stick",
    "flour": "2 c.|1 1/2 c.|1 3/4 c.",
    "sugar": "1/2 c.|3/4 c.|2 tbsp.",
    "brown sugar": "1/2 c.|3/4 c.|1 c. packed",
    "eggs": "2|3|4",
    "milk": "1 c.|1 1/4 c.|1/2 c.",
    "buttermilk": "1 c.|1/2 c.",
    "baking powder": "2 tsp.|1 tbsp.",
    "baking soda": "1 tsp.|1/2 tsp.",
    "salt": "1 tsp.|1/2 tsp.|% to taste",
    "pepper": "1/2 tsp.|% to taste",
    "vanilla": "1 tsp.|2 tsp.",
    "cinnamon": "1 tsp.|1/2 tsp.",
    "nutmeg": "1/4 tsp.",
    "carrots": "2|2 sliced",
    "celery": "2 stalks|3 ribs",
    "cumin": "1 tsp.|2 tsp.",
    "thyme": "1 tsp. dried|4 sprigs",
    "rosemary": "2 sprigs|1 tbsp. chopped",
    "bay leaf": "1|1 dried",
    "heavy cream": "1/2 c.|1 c.",
    "jalapeño": "1 minced|2",
    "soy sauce": "3 tbsp.|1/4 c.",
    "ginger": "1 tbsp. grated|1 tsp. ground",
    "green onions": "3 sliced|4",
    "sesame oil": "1 tsp.|2 tsp.",
    "honey": "1 tbsp.|2 tbsp.",
    "red pepper flakes": "1/4 tsp.|1/2 tsp.",
    "cornstarch": "1 tbsp.|2 tsp.",
    "rice vinegar": "1 tbsp.|2 tbsp.",
    "red wine vinegar": "2 tbsp.|3 tbsp.",
    "feta cheese": "1/2 c. crumbled|4 oz.",
    "red onion": "1/2 thinly sliced|1 small",
    "cucumber": "1|1/2 English",
    "parsley": "1/4 c. chopped|1 handful",
    "walnuts": "1/2 c.|1/3 c. toasted",
    "Dijon mustard": "1 tsp.|1 tbsp.",
    "cheddar cheese": "1 c. shredded|2 c. shredded",
    "Gruyère cheese": "1/2 c. grated",
    "cream of mushroom soup": "1 can|1 (10 3/4 oz.) can",
    "egg noodles": "8 oz.|12 oz.",
    "cooked rice": "2 c.|3 c.",
    "frozen peas": "1 c.|1 (10 oz.) pkg.",
    "sour cream": "1/2 c.|1 c.",
    "breadcrumbs": "1/2 c.|1 c.",
    "paprika": "1 tsp.|2 tsp.",
    "coconut milk": "1 (14 oz.) can|2 cans",
    "curry powder": "1 tbsp.|2 tbsp.",
    "diced tomatoes": "1 (14 oz.) can|1 can",
    "cilantro": "1/4 c. chopped|1 bunch",
    "garam masala": "1 tsp.|2 tsp.",
    "lime juice": "2 tbsp.|3 tbsp.",
    "lemon juice": "1 tbsp.|2 tbsp.",
    "penne": "1 lb.|12 oz.",
    "parmesan cheese": "1/2 c. grated|3/4 c. grated",
    "basil": "1/4 c. torn|6 leaves",
    "crème fraîche": "1/2 c.|1/3 c.",
    "corn tortillas": "8|12",
    "chili powder": "1 tbsp.|2 tsp.",
    "salsa": "1 c.|1/2 c.",
    "avocado": "1|2 ripe",
    "shredded lettuce": "2 c.|1 c.",
    "chives": "1 tbsp. chopped",
    "plain yogurt": "1 c.|1/2 c.",
    "ice cubes": "1 c.|4",
    "almond milk": "1 c.|3/4 c.",
    "orange juice": "1/2 c.|1 c.",
    "chia seeds": "1 tbsp.|2 tsp.",
    "tomato paste": "2 tbsp.|3 tbsp.",
    "red wine": "1/2 c.|1 c.",
    "potatoes": "3 medium|1 lb.",
}

# Dish types: title pattern, main kinds, base pantry items, optional extras, timing and steps.
# Steps: "*" required, "+" shown only when extras were chosen, no prefix optional.
DISHES: list[dict[str, Any]] = [  # a table of literals: each key's own type (str, list, tuple)
    dict(
        title="{main} Soup",
        kinds="meat ground cured legume veg tender fish",
        base=["onion", "chicken broth"],
        extras="garlic, carrots, celery, cumin, thyme, salt, pepper, heavy cream, jalapeño, bay leaf",
        m=(20, 45),
        steps=[
            "*Heat a little oil in a large pot over medium heat and cook the onion until soft, about 5 minutes.",
            "+Stir in the {extras} and cook 1 minute more.",
            "*Add the {main} and the chicken broth to the pot and bring to a boil.",
            "*Reduce the heat and simmer, covered, for {m} minutes, until tender.",
            "Purée about half of the soup with an immersion blender, then stir it back together.",
            "Taste and adjust the seasoning.",
            "Ladle into warm bowls and serve.",
        ],
    ),
    dict(
        title="{main} Stir-Fry",
        kinds="meat fish legume veg tender",
        base=["soy sauce", "vegetable oil"],
        extras="garlic, ginger, green onions, sesame oil, honey, red pepper flakes, cornstarch, rice vinegar",
        m=(4, 8),
        steps=[
            "Cut the {main} into bite-size pieces and pat dry.",
            "*Heat the vegetable oil in a wok over high heat and stir-fry the {main} for {m} minutes.",
            "+Add the {extras} and toss for 1 minute.",
            "*Pour in the soy sauce and cook until it glazes everything, about 2 minutes.",
            "Serve hot over steamed rice.",
        ],
    ),
    dict(
        title="{main} Salad",
        kinds="legume tender fruit berry",
        base=["olive oil", "red wine vinegar"],
        extras="feta cheese, red onion, cucumber, parsley, walnuts, Dijon mustard, honey, salt, pepper",
        m=(15, 60),
        steps=[
            "Rinse and drain the {main}, then pat dry with a clean towel.",
            "*Whisk the olive oil and red wine vinegar together in a small bowl.",
            "*Place the {main} in a large bowl, drizzle with the dressing and toss gently.",
            "+Add the {extras} and toss again.",
            "Cover and chill for {m} minutes before serving.",
        ],
    ),
    dict(
        title="{main} Casserole",
        kinds="meat ground cured veg",
        base=["cheddar cheese", "cream of mushroom soup"],
        extras="onion, egg noodles, cooked rice, frozen peas, sour cream, breadcrumbs, paprika, salt, pepper",
        m=(25, 45),
        temps=(350, 375),
        steps=[
            "Preheat oven to {temp}° and grease a 9 x 13-inch baking dish.",
            "*Cook the {main} in a skillet over medium heat until lightly browned.",
            "*In a large bowl, combine the {main} with the cream of mushroom soup.",
            "+Stir in the {extras}.",
            "Spread the mixture evenly in the baking dish.",
            "*Top with the cheddar cheese and bake at {temp}° for {m} minutes, until bubbly.",
            "Let stand 10 minutes before serving.",
        ],
    ),
    dict(
        title="{main} Muffins",
        kinds="berry fruit nut dried baking",
        base=["flour", "sugar", "eggs"],
        extras="baking powder, salt, milk, butter, vanilla, cinnamon, brown sugar, vegetable oil",
        m=(18, 25),
        temps=(375, 400),
        steps=[
            "Preheat oven to {temp}° and line a muffin tin with paper cups.",
            "*Mix the flour and sugar in a large bowl, then beat in the eggs.",
            "+Stir in the {extras} just until moistened.",
            "*Gently fold in the {main}.",
            "Fill the cups two-thirds full.",
            "*Bake at {temp}° for {m} minutes, until a toothpick comes out clean.",
            "Cool in the pan for 5 minutes, then turn out onto a rack.",
        ],
    ),
    dict(
        title="{main} Pancakes",
        kinds="berry fruit nut baking",
        base=["flour", "milk", "eggs"],
        extras="baking powder, sugar, salt, butter, vanilla, cinnamon",
        m=(2, 3),
        steps=[
            "*Whisk the flour, milk and eggs together until smooth.",
            "+Add the {extras} and stir until just combined; a few lumps are fine.",
            "*Fold in the {main}.",
            "Let the batter rest for 5 minutes.",
            "Heat a lightly greased griddle over medium heat.",
            "*Pour 1/4 cup of batter per pancake and cook {m} minutes per side, until golden.",
            "Serve warm with butter and syrup.",
        ],
    ),
    dict(
        title="{main} Curry",
        kinds="meat fish legume veg tender",
        base=["coconut milk", "curry powder"],
        extras="onion, garlic, ginger, diced tomatoes, jalapeño, garam masala, salt, lime juice, cilantro",
        m=(15, 30),
        steps=[
            "*Toast the curry powder in a large, deep skillet for 1 minute, until fragrant.",
            "*Add the {main} and stir to coat with the spices.",
            "+Add the {extras} and cook for 2 minutes.",
            "*Pour in the coconut milk and simmer for {m} minutes, until cooked through.",
            "Taste and add more salt if needed.",
            "Serve over basmati rice.",
        ],
    ),
    dict(
        title="{main} Pasta",
        kinds="meat ground cured fish veg tender",
        base=["penne", "parmesan cheese"],
        extras="garlic, olive oil, butter, red pepper flakes, basil, heavy cream, salt, lemon juice, crème fraîche",
        m=(9, 12),
        steps=[
            "*Boil the penne in salted water for {m} minutes, until al dente; drain, saving 1/2 cup of water.",
            "*Meanwhile, cook the {main} in a large skillet over medium-high heat until done.",
            "+Add the {extras} and cook 1 minute.",
            "Toss the penne into the skillet with a splash of the reserved water.",
            "*Sprinkle with the parmesan cheese and serve right away.",
        ],
    ),
    dict(
        title="{main} Tacos",
        kinds="meat ground fish legume veg",
        base=["corn tortillas", "chili powder"],
        extras="onion, garlic, cumin, lime juice, cilantro, salsa, sour cream, shredded lettuce, jalapeño, avocado",
        m=(6, 12),
        steps=[
            "*Season the {main} with the chili powder and cook in a hot skillet for {m} minutes, stirring often.",
            "Warm the corn tortillas in a dry pan for 30 seconds per side.",
            "*Spoon the {main} into the tortillas.",
            "+Top with the {extras}.",
            "Serve with lime wedges.",
        ],
    ),
    dict(
        title="{main} Omelet",
        kinds="ground cured tender veg",
        base=["eggs", "butter"],
        extras="milk, Gruyère cheese, chives, green onions, salt, pepper",
        m=(2, 4),
        steps=[
            "*Beat the eggs in a bowl with a fork until frothy.",
            "*Cook the {main} in a small skillet until tender, then set aside.",
            "*Melt the butter in a nonstick skillet over medium-low heat, pour in the eggs and cook {m} minutes.",
            "*Scatter the {main} over half of the omelet.",
            "+Add the {extras}, then fold the omelet in half.",
            "Slide onto a plate and serve.",
        ],
    ),
    dict(
        title="{main} Smoothie",
        kinds="berry fruit",
        base=["plain yogurt", "ice cubes"],
        extras="honey, almond milk, orange juice, vanilla, chia seeds, cinnamon",
        m=(30, 60),
        steps=[
            "*Place the {main}, plain yogurt and ice cubes in a blender.",
            "+Add the {extras}.",
            "*Blend on high for {m} seconds, until smooth.",
            "Pour into chilled glasses and serve immediately.",
        ],
    ),
    dict(
        title="{main} Bread",
        kinds="berry fruit nut dried baking",
        base=["flour", "baking soda", "eggs"],
        extras="sugar, brown sugar, salt, butter, vegetable oil, buttermilk, vanilla, cinnamon, nutmeg",
        m=(50, 65),
        temps=(325, 350),
        steps=[
            "Preheat oven to {temp}° and grease a 9 x 5-inch loaf pan.",
            "*Whisk the flour and baking soda in a bowl, then beat in the eggs.",
            "+Add the {extras} and mix until blended.",
            "*Fold in the {main}.",
            "*Pour into the pan and bake at {temp}° for {m} minutes, until a tester comes out clean.",
            "Cool 10 minutes in the pan before slicing.",
        ],
    ),
    dict(
        title="{main} Cookies",
        kinds="nut dried",
        base=["flour", "butter", "brown sugar"],
        extras="sugar, eggs, vanilla, baking soda, salt, cinnamon",
        m=(8, 12),
        temps=(350, 375),
        steps=[
            "Preheat oven to {temp}°.",
            "*Cream the butter and brown sugar until fluffy.",
            "+Beat in the {extras}.",
            "*Stir in the flour, then the {main}.",
            "Chill the dough for 30 minutes if it is soft.",
            "*Drop by rounded tablespoons onto a baking sheet and bake at {temp}° for {m} minutes.",
            "Cool on a wire rack.",
        ],
    ),
    dict(
        title="Roasted {main}",
        kinds="meat veg",
        base=["olive oil", "salt"],
        extras="garlic, rosemary, thyme, pepper, onion, carrots, paprika, lemon juice, Dijon mustard",
        m=(25, 60),
        temps=(400, 425),
        steps=[
            "Preheat oven to {temp}°.",
            "Pat the {main} dry with paper towels.",
            "*Rub the {main} with the olive oil and salt and place in a roasting pan.",
            "+Add the {extras} to the pan, tossing to coat.",
            "*Roast at {temp}° for {m} minutes, turning once halfway through.",
            "Let rest for 5 minutes before serving.",
        ],
    ),
    dict(
        title="{main} Stew",
        kinds="meat ground veg",
        base=["beef broth", "tomato paste"],
        extras="onion, carrots, celery, garlic, thyme, bay leaf, potatoes, paprika, red wine, salt, pepper",
        m=(60, 120),
        steps=[
            "*Brown the {main} in a heavy Dutch oven over medium-high heat.",
            "*Stir in the tomato paste and cook 1 minute.",
            "+Add the {extras}.",
            "*Pour in the beef broth, cover and simmer on low for {m} minutes, until tender.",
            "Uncover for the last 15 minutes to thicken the sauce.",
            "Serve in bowls with crusty bread.",
        ],
    ),
]

ADJECTIVES = [
    "Smoky",
    "Easy",
    "Hearty",
    "Spicy",
    "Creamy",
    "Garlicky",
    "Weeknight",
    "Rustic",
    "Quick",
    "Grandma's",
    "Zesty",
    "Herbed",
    "Golden",
    "Simple",
    "Country-Style",
    "Café-Style",
    "Sunday",
]
SWEET_ADJECTIVES = [
    "Easy",
    "Grandma's",
    "Golden",
    "Best",
    "Simple",
    "Spiced",
    "Old-Fashioned",
    "Mom's",
    "Brown Butter",
    "Café-Style",
    "Sunday Morning",
]
SWEET_KINDS = {"berry", "fruit", "nut", "dried", "baking"}
TIPS = [
    "Leftovers keep, covered, in the refrigerator for up to 3 days.",
    "The recipe doubles easily; just use a bigger pan and allow a few extra minutes.",
    "Good-quality {main} makes a real difference here, so buy the best you can.",
    "Measure out the {extras} before you start so everything goes smoothly.",
    "Taste before serving and adjust the seasoning to suit your family.",
]


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
