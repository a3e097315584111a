"""`nox` runs everything: the tests (asyncio and trio), ruff, mypy and the docs build.

The sessions run in the environment that the README's first command installed into,
instead of building a virtualenv each: CI installs once, and a fresh machine needs
only the README's two commands. The tests session also brings up the system tools
the tests use (`redis-server`, Chromium), through apt-get when run as root.

`nox -s newest` (not in the default run) installs the newest release of every
dependency, ignoring constraints.txt, in a virtualenv of its own and runs the tests:
it tells early what the next upstream release will break.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Callable, Sequence

import nox

nox.options.sessions = ["tests", "lint", "types", "docs"]

# The Debian package each system tool of the tests comes in, and the commands any of
# which it provides: the Redis tests start `redis-server`; the dashboard tests drive
# Chromium with Playwright (tests/gateway/test_dashboard.py looks for these names).
SYSTEM_PACKAGES: dict[str, tuple[str, ...]] = {
    "redis-server": ("redis-server",),
    "chromium": ("chromium", "chromium-browser"),
}


def missing_packages(which: Callable[[str], str | None] = shutil.which) -> list[str]:
    """The Debian packages of SYSTEM_PACKAGES whose commands are not on PATH."""
    return [
        package
        for package, commands in SYSTEM_PACKAGES.items()
        if not any(which(command) for command in commands)
    ]


def install_plan(missing: Sequence[str], *, root: bool, apt: bool) -> list[list[str]]:
    """The commands that install ``missing``; a RuntimeError naming the command to run
    when this process may not run them itself (not root, or no apt-get)."""
    if not missing:
        return []
    if root and apt:
        apt_get = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-qq"]  # waits for another apt
        return [[*apt_get, "update"], [*apt_get, "install", "-y", *missing]]
    command = f"sudo apt-get install -y {' '.join(missing)}"
    where = "" if apt else " (on Debian; elsewhere, the same packages from your package manager)"
    raise RuntimeError(f"the tests need {', '.join(missing)}: run `{command}`{where}, then nox")


def install_system_packages(session: nox.Session) -> None:
    missing = missing_packages()
    try:
        plan = install_plan(missing, root=os.geteuid() == 0, apt=bool(shutil.which("apt-get")))
    except RuntimeError as exc:
        session.error(str(exc))
    for command in plan:
        session.run(*command, external=True, env={"DEBIAN_FRONTEND": "noninteractive"})


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The test suite; every async test runs under asyncio and under trio."""
    install_system_packages(session)
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


@nox.session
def newest(session: nox.Session) -> None:
    """The tests against the newest release of every dependency, in a fresh virtualenv,
    without constraints.txt (not part of the default run)."""
    install_system_packages(session)
    session.install("--upgrade", "pip")
    session.install("--upgrade", "--upgrade-strategy", "eager", "-e", ".[dev]")
    session.run("pip", "freeze", "--exclude-editable")
    session.run("pytest", *session.posargs)


@nox.session
def constraints(session: nox.Session) -> None:
    """Rewrite constraints.txt from a fresh install of the newest releases (not part of
    the default run): then run `nox`, and commit the file if it passes."""
    session.install("--upgrade", "pip")
    session.install("-e", ".[dev]")
    freeze = session.run("pip", "freeze", "--exclude-editable", silent=True)
    path = pathlib.Path("constraints.txt")
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    pins = [line for line in str(freeze).splitlines() if line and not line.startswith("#")]
    path.write_text("\n".join([*header, *pins]) + "\n")
