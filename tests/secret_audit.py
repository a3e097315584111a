"""A pytest plugin: keep everything the session captured, for the secret audit.

For every test phase it keeps the captured stdout, stderr and log records, and
the text of any failure (exceptions and their reprs). ``tests/test_secrets.py``
greps all of it, and everything passed to `tests.support.expose`, for every API
key a client saw this session; that test is moved to the end of the run.
"""

from __future__ import annotations

import pytest

#: What the session captured so far, one entry per test phase that printed anything.
CAPTURED: list[str] = []
AUDIT_TEST = "test_nothing_the_suite_captured_holds_an_api_key"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    text = "\n".join(part for part in (report.capstdout, report.capstderr, report.caplog) if part)
    if report.failed:
        text += "\n" + report.longreprtext
    if text:
        CAPTURED.append(text)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    audit = [item for item in items if item.name == AUDIT_TEST]
    for item in audit:
        items.remove(item)
    items.extend(audit)
