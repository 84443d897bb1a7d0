"""The real stack (PostgreSQL + Redis, three processes) and a headless Chromium per test.

Chromium is the system one (/usr/bin/chromium, or NYXFLOW_TEST_CHROMIUM): nothing downloaded.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from playwright.async_api import Browser, Page, async_playwright

from tests.support.databases import REDIS_URL, unavailable
from tests.support.inprocess import API_KEY
from tests.support.processes import ProcessStack, running_stack

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = (
        os.environ.get("NYXFLOW_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    )
    if not Path(path).exists():
        unavailable("Chromium", FileNotFoundError(path))
    return path


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    chromium_path()  # before starting anything
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except (redis.RedisError, OSError) as error:
        unavailable("Redis", error)
    tmp = tmp_path_factory.mktemp("browser-stack")
    with running_stack("postgresql", tmp, REDIS_URL) as stack:
        yield stack


@pytest.fixture
async def http(stack: ProcessStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
        yield client


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(browser: Browser, stack: ProcessStack) -> AsyncIterator[Page]:
    """A signed-in page on the workflows list; uncaught page errors fail the test."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    ARTIFACTS.mkdir(exist_ok=True)
    page = await context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.goto(stack.base_url + "/")
    await page.get_by_label("API key").fill(API_KEY)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", name="Workflows").wait_for()
    try:
        yield page
    finally:
        await context.close()
    assert not errors, f"errors on the page: {errors}"
