"""The README's recipe-versus-paper table is generated from the recipe files and stays in sync; every value that
differs from the paper, or that the paper does not state, carries its reason."""

from pathlib import Path

from omegaconf import OmegaConf

from usjepa.recipe_table import END, ROWS, START, UNSTATED, _recipe, recipe_markdown, recipe_value, same

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_matches_the_recipe_files():
    text = (ROOT / "README.md").read_text()
    section = text.split(START, 1)[1].split(END, 1)[0]
    assert section == recipe_markdown(), "run: python -m usjepa.recipe_table to refresh README.md"


def test_every_difference_from_the_papers_has_a_reason():
    for r in ROWS:
        if not r.key.startswith("preset."):
            assert OmegaConf.select(_recipe(r.recipe), r.key, default="<missing>") != "<missing>", r
        ours = recipe_value(r.recipe, r.key)
        if r.published is UNSTATED or not same(ours, r.published):
            assert r.reason, f"{r.recipe} {r.key}: ours {ours!r} vs published {r.published!r} needs a reason"


def test_a_drifting_recipe_is_caught():
    row = next(r for r in ROWS if r.key == "optim.lr" and r.recipe == "salt_vitb16.yaml")
    assert same(recipe_value(row.recipe, row.key), row.published)
    assert not same(6.0e-4, row.published) and not same([0.3, 0.9], [0.3, 1.0])
