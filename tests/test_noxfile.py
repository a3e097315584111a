"""What `nox` does about the system tools the tests need (redis-server, Chromium),
decided without running apt-get."""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

import pytest

NOXFILE = pathlib.Path(__file__).resolve().parent.parent / "noxfile.py"


@pytest.fixture(scope="module")
def noxfile() -> ModuleType:
    spec = importlib.util.spec_from_file_location("noxfile_under_test", NOXFILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_tool_under_any_of_its_names_is_found(noxfile: ModuleType) -> None:
    on_path = {"redis-server", "chromium-browser"}
    assert noxfile.missing_packages(lambda name: name if name in on_path else None) == []


def test_the_missing_tools_are_named_by_their_debian_package(noxfile: ModuleType) -> None:
    assert noxfile.missing_packages(lambda name: None) == ["redis-server", "chromium"]
    only_redis = noxfile.missing_packages(lambda name: name if name == "redis-server" else None)
    assert only_redis == ["chromium"]


def test_nothing_missing_runs_nothing(noxfile: ModuleType) -> None:
    assert noxfile.install_plan([], root=False, apt=False) == []


def test_root_with_apt_installs_what_is_missing(noxfile: ModuleType) -> None:
    plan = noxfile.install_plan(["chromium"], root=True, apt=True)
    apt_get = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-qq"]
    assert plan == [[*apt_get, "update"], [*apt_get, "install", "-y", "chromium"]]


def test_otherwise_the_error_gives_the_command_to_run(noxfile: ModuleType) -> None:
    with pytest.raises(RuntimeError) as error:
        noxfile.install_plan(["redis-server", "chromium"], root=False, apt=True)
    assert "`sudo apt-get install -y redis-server chromium`" in str(error.value)
    with pytest.raises(RuntimeError) as error:
        noxfile.install_plan(["chromium"], root=True, apt=False)
    assert "`sudo apt-get install -y chromium`" in str(error.value)
    assert "your package manager" in str(error.value)
