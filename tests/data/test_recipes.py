import pytest

from chef_genius.data.recipes import (
    Recipe,
    RowError,
    clean,
    format_source,
    format_target,
    parse_list,
    parse_target,
    recipe_from_fields,
    render,
    source_from_ingredients,
)


def test_target_round_trips_to_the_same_recipe():
    recipe = Recipe(
        "Garlic Rice",
        ["2 c. rice", "3 cloves garlic; minced"],
        ["Rinse the rice 2 times.", "Cook at 350° for 20 minutes.", "Serve."],
    )
    text = format_target(recipe)
    assert "\n" not in text
    back = parse_target(text)
    assert back.title == "Garlic Rice"
    assert back.ingredients == ["2 c. rice", "3 cloves garlic, minced"]
    assert back.directions == recipe.directions


def test_source_uses_ingredient_names_when_known():
    recipe = recipe_from_fields("Soup", '["1 lb. beans", "2 c. water"]', '["Boil."]', '["beans", "water"]')
    assert format_source(recipe).endswith("beans, water")
    assert source_from_ingredients(" beans ,water, ") == format_source(recipe)


def test_list_strings_are_parsed_without_eval(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(RowError):
        parse_list(f"[__import__('os').system('touch {marker}')]")
    assert not marker.exists()
    assert parse_list("['a', 'b']") == ["a", "b"]  # Python-style literal
    assert parse_list('["a", "b"]') == ["a", "b"]  # JSON
    assert parse_list("line one\nline two") == ["line one", "line two"]


@pytest.mark.parametrize(
    "fields, reason",
    [
        ((None, "[]", "[]"), "missing_field"),
        (("T", "[1, 2]", '["x"]'), "unparsable_list"),
        (("T", '["a"', '["x"]'), "unparsable_list"),
        (("  ", '["a"]', '["x"]'), "empty_text"),
        (("T", "[]", '["x"]'), "empty_text"),
    ],
)
def test_bad_fields_raise_their_skip_reason(fields, reason):
    with pytest.raises(RowError, match=reason):
        recipe_from_fields(*fields)


def test_render_is_readable():
    text = render(parse_target("Title: Toast Ingredients: 1 slice bread Directions: 1. Toast it. 2. Eat."))
    assert text.splitlines()[0] == "Toast"
    assert "  1. Toast it." in text and "  2. Eat." in text and "  - 1 slice bread" in text


def test_clean_collapses_exactly_the_whitespace_a_regex_would():
    import re
    import sys

    spaces = re.compile(r"\s+")
    for code in range(sys.maxunicode + 1):
        text = f" a{chr(code)}{chr(code)}b\t"
        assert clean(text) == spaces.sub(" ", text).strip(), hex(code)
