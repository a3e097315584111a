"""docs/testing.md shows the pytest-trio recipe that tests/testing runs."""

from pathlib import Path

HERE = Path(__file__).parent


def test_the_docs_show_the_tested_pytest_trio_recipe() -> None:
    source = (HERE / "test_pytest_trio_recipe.py").read_text()
    recipe = source.split("# recipe start\n")[1].split("    # recipe end")[0].strip()
    docs = (HERE.parents[1] / "docs" / "testing.md").read_text()
    assert recipe in docs, "docs/testing.md's pytest-trio recipe differs from the tested one"
