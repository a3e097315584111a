"""`nox` runs everything: the tests (asyncio and trio), ruff, mypy and the docs build.

The sessions run in the environment that `pip install -e '.[dev]'` (the README's first
command) installed into, instead of building a virtualenv each: CI installs once, and
a fresh machine needs only the README's two commands.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "types", "docs"]


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The test suite; every async test runs under asyncio and under trio."""
    session.run("pytest", *session.posargs)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", "src", "tests", "bench", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "bench", "examples", "noxfile.py")


@nox.session(venv_backend="none")
def types(session: nox.Session) -> None:
    session.run("mypy")


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    """Build the documentation site; any warning (a broken link, a missing page) fails."""
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """In-process overhead per request (not part of the default run)."""
    session.run("python", "bench/overhead.py", *session.posargs)
