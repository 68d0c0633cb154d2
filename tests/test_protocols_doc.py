"""docs/PROTOCOLS.md names every recipe that `longtail recipes` lists, and no recipe that does not exist."""

import re
from pathlib import Path

from longtail.recipes import RECIPES

DOC = Path(__file__).resolve().parents[1] / "docs" / "PROTOCOLS.md"


def test_every_recipe_is_named_in_backticks():
    named = set(re.findall(r"`([^`\s]+)`", DOC.read_text()))
    missing = sorted(set(RECIPES) - named)
    assert not missing, f"docs/PROTOCOLS.md does not name these recipes: {missing}"


def test_the_recipe_column_names_only_recipes():
    """The first cell of a table row, where it holds names in backticks, names recipes (a renamed one fails)."""
    stale = set()
    for line in DOC.read_text().splitlines():
        if line.startswith("| `"):
            stale |= set(re.findall(r"`([^`]+)`", line.split("|")[1])) - set(RECIPES)
    assert not stale, f"docs/PROTOCOLS.md names recipes that do not exist: {sorted(stale)}"
