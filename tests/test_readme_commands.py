"""CI proves the README: `.ci/run` runs the README's two commands, exactly as written."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """The first bash block of the README, one command a line, without the comments."""
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert block is not None
    return [line.split("#")[0].strip() for line in block.group(1).splitlines()]


def test_ci_runs_the_readme_commands_exactly() -> None:
    commands = readme_commands()
    assert commands and commands[-1] == "nox"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    script = [line for line in ci if line and not line.startswith(("#", "set ", "cd "))]
    assert script == commands
