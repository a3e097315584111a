"""The dashboard in a real headless Chromium: live values appear, and a screenshot for the
docs (copied to docs/dashboard.png with UPDATE_DOCS_SCREENSHOT=1)."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
from pathlib import Path

import openai
import pytest

from tests.gateway.conftest import FAST, SLOW, TOKEN, GatewayProcess

# The docs' picture is refreshed only on request: a test run leaves the checkout as it was.
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
HELLO = [{"role": "user", "content": "Say hello"}]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail("the dashboard test needs Chromium: `apt-get install chromium`")


def test_the_dashboard_shows_live_values(gateway: GatewayProcess, tmp_path: Path) -> None:
    screenshot = tmp_path / "dashboard.png"
    from playwright.sync_api import expect, sync_playwright

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TOKEN, max_retries=0)
    for _ in range(12):
        client.chat.completions.create(model=FAST, messages=HELLO, max_tokens=32)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-nonexistent", messages=HELLO)
    with (
        sync_playwright() as playwright,
        concurrent.futures.ThreadPoolExecutor(5) as pool,
    ):
        browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.goto(f"{gateway.url}/dashboard#token={TOKEN}")
            expect(page.locator("#state")).to_have_text("running")
            # Slow-model requests wait for capacity (one a second) while the page looks.
            waiting = [
                pool.submit(
                    client.chat.completions.create, model=SLOW, messages=HELLO, max_tokens=4
                )
                for _ in range(5)
            ]
            expect(page.locator("#answered")).not_to_have_text("–")
            assert int(page.locator("#answered").inner_text().replace(",", "")) >= 12
            for key in ("k1", "k2", "k3", "k4"):
                expect(page.get_by_test_id(f"key-{key}")).to_be_visible()
            expect(page.get_by_test_id(f"rpm-k3-{SLOW}")).to_contain_text("/min")
            expect(page.get_by_test_id(f"tpm-k1-{FAST}")).to_contain_text("/min")
            expect(page.locator("#recent-errors")).to_contain_text("model_not_found")
            # The page is live: deferred requests are counted as they are answered, and
            # those still waiting show in the queue, within a poll or two.
            expect(page.locator("#deferred")).not_to_have_text("0", timeout=10_000)
            expect(page.get_by_test_id("queue-medium")).not_to_contain_text("0 waiting")
            assert TOKEN not in page.url  # the token leaves the address bar
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
        for future in waiting:
            assert future.result(timeout=30).choices
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)


def test_the_dashboard_asks_for_a_token_when_it_has_none(gateway: GatewayProcess) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{gateway.url}/dashboard")
            expect(page.locator("#state")).to_have_text("token needed")
            page.locator("#token").fill(TOKEN)
            page.locator("#login button").click()
            expect(page.locator("#state")).to_have_text("running")
        finally:
            browser.close()
