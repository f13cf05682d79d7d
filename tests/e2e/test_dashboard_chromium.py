"""The dashboard in a real headless Chromium (Debian's), against a real `cartback web`:
log in, read the seeded figures, search a cart and read its timeline, and see a forged POST
refused. The screenshot is kept in the test's output directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Connection

from cartback.services.flows import FlowRegistry
from cartback.store.db import make_engine
from tests.reports import scenario
from tests.support import dashboard as seeded
from tests.support.procs import (
    CARTBACK,
    cartback_env,
    free_port,
    run_cartback,
    start_cartback,
    stop,
    wait_for,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _chromium() -> str:
    """Debian's chromium, installed when missing and we may (as root, as on CI)."""
    if not Path(CHROMIUM).exists():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip(f"{CHROMIUM} is not installed and installing it needs root and apt-get")
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            done = subprocess.run(command, capture_output=True, timeout=600, check=False)
            assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return CHROMIUM


@contextmanager
def _serving(tmp_path: Path, seed: Callable[[Connection, str], None]) -> Iterator[str]:
    """A migrated database with one store and dashboard user, `seed(conn, flow_version)` run
    on it, then `cartback web` serving it; yields its base URL."""
    url = f"sqlite:///{tmp_path / 'cartback.db'}"
    port = free_port()
    env = cartback_env(url, CARTBACK_PORT=str(port), CARTBACK_BASE_URL=f"http://127.0.0.1:{port}")
    create = ["store", "create", "shop", "--name", "Seeded Shop", "--brand", "Seeded"]
    for command in (["migrate"], [*create, "--domain", "shop.example"]):
        done = run_cartback(command, env, tmp_path)
        assert done.returncode == 0, done.stderr
    add_user = [*CARTBACK, "dashboard", "user", "add", seeded.USER, "--store", "shop"]
    done = subprocess.run(
        [*add_user, "--password-stdin"],
        input=seeded.PASSWORD + "\n",
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    engine = make_engine(url)
    try:
        version = FlowRegistry(engine).current("default").version
        with engine.begin() as conn:
            seed(conn, version)
    finally:
        engine.dispose()
    process = start_cartback(["web"], env, tmp_path, tmp_path / "web.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(base), 30, "cartback web to answer /healthz")
        yield base
    finally:
        stop(process)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with _serving(
        tmp_path, lambda conn, version: seeded.seed(conn, 1, version, datetime.now(UTC))
    ) as base:
        yield base


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_dashboard_in_chromium(server: str, tmp_path: Path) -> None:
    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.set_default_timeout(10_000)
            page.goto(f"{server}/dashboard")
            assert page.url.endswith("/dashboard/login")
            page.fill("input[name=email]", seeded.USER)
            page.fill("input[name=password]", seeded.PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{server}/dashboard")

            assert page.inner_text('[data-figure="revenue-USD"]') == "200.50"
            sms = page.locator('#channels tr[data-channel="sms"] td').all_inner_texts()
            email = page.locator('#channels tr[data-channel="email"] td').all_inner_texts()
            assert sms == ["sms", "8", "6", "0", "3"]
            assert email == ["email", "4", "4", "1", "1"]
            funnel = page.locator("#funnel td").all_inner_texts()
            assert funnel == [str(n) for _label, n in seeded.EXPECTED["funnel"]]
            assert "Opt-out alert" in page.inner_text("main")
            assert page.locator("svg rect.sends").count() == 30
            shot = tmp_path / "dashboard-overview.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"dashboard screenshot: {shot}")

            page.click("text=Message log")
            page.fill("input[name=q]", seeded.token(6))
            page.click("main button[type=submit]")
            page.click(f'#messages a[href="/dashboard/carts/{seeded.token(6)}"]')
            timeline = page.inner_text("#timeline")
            assert "the contact has not granted email marketing" in timeline
            assert "consent" in timeline and "send" in timeline
            page.screenshot(path=str(tmp_path / "dashboard-cart.png"), full_page=True)

            # A search by phone or email finds the cart, and the address never reaches a URL
            # (so neither the access log nor the browser's history holds it).
            for address in (seeded.phone(2), seeded.email(2)):
                page.click("text=Message log")
                page.fill("input[name=q]", address)
                page.click("main button[type=submit]")
                page.wait_for_selector(f'#messages a[href="/dashboard/carts/{seeded.token(2)}"]')
                assert seeded.phone(2)[1:] not in page.url and "shopper2" not in page.url

            page.click("header >> text=Flow")
            assert page.locator('#steps tr[data-step="sms1"] td').nth(4).inner_text() == "8"
            page.screenshot(path=str(tmp_path / "dashboard-flow.png"), full_page=True)
            page.click("text=Consent & test send")
            page.fill("input[name=q]", seeded.phone(4))
            page.click("main form button[type=submit]")
            assert "keyword_reply" in page.inner_text("#consent-history")
            page.screenshot(path=str(tmp_path / "dashboard-consent.png"), full_page=True)

            # The browser's own cookie, but no form token: refused, nothing queued.
            forged = page.request.post(f"{server}/dashboard/test-send", form={"test_contact": "1"})
            assert forged.status == 403
            page.goto(f"{server}/dashboard")
            assert page.url.endswith("/dashboard")  # still logged in

            # /docs renders with every request kept on this server (as on one without internet).
            outside: list[str] = []
            docs = browser.new_page()
            docs.route(
                "**/*",
                lambda route: (
                    route.continue_()
                    if route.request.url.startswith(server)
                    else (outside.append(route.request.url), route.abort())
                ),
            )
            docs.goto(f"{server}/docs")
            docs.wait_for_selector(".swagger-ui .info .title", timeout=15_000)
            assert "cartback" in docs.inner_text(".swagger-ui .info .title")
            assert outside == []
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    log = (tmp_path / "web.log").read_text()
    assert "/dashboard/messages" in log
    assert seeded.phone(2)[1:] not in log and "shopper2" not in log


def _seed_report_scenario(conn: Connection, _version: str) -> None:
    """The report scenario's 1,000 carts (tests/reports/scenario.py), abandoned five days ago,
    in the served store's own flow so that its flow page reads them."""
    scenario.seed(conn, 1, datetime.now(UTC) - timedelta(days=5), flow_name="default")


@pytest.mark.slow
def test_flow_report_figures_in_chromium(tmp_path: Path) -> None:
    """The flow page shows the seeded scenario's known figures (as tests/reports checks them
    in the report itself), the holdout lift with its interval included."""
    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with (
        _serving(tmp_path, _seed_report_scenario) as server,
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.set_default_timeout(10_000)
            page.goto(f"{server}/dashboard/login")
            page.fill("input[name=email]", seeded.USER)
            page.fill("input[name=password]", seeded.PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{server}/dashboard")
            page.click("header >> text=Flow")
            panel = page.locator("#report-panel")
            assert panel.locator("h2").inner_text() == "Attributed results (USD)"
            rendered = page.eval_on_selector_all(
                "#report tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText))"
            )
            rows = {cells[0]: cells[1:] for cells in rendered}
            # Sent, delivered, clicked, recovered, revenue, cost, return on spend, opt-outs/send.
            assert rows["flow"] == [
                "1800",
                "890",
                "200",
                "161",
                "11580.00",
                "659.00",
                "17.57",
                "0.0033",
            ]
            assert rows["step sms1"] == [
                "900",
                "890",
                "200",
                "161",
                "11580.00",
                "650.00",
                "17.82",
                "0.0056",
            ]
            assert rows["step email1"][:6] == ["900", "0", "0", "0", "0.00", "9.00"]
            assert rows["variant A"][:6] == ["1000", "490", "100", "61", "6080.00", "255.00"]
            assert rows["variant B"][:6] == ["800", "400", "100", "100", "5500.00", "404.00"]
            assert rows["channel sms"] == rows["step sms1"]
            notes = panel.locator("p").all_inner_texts()
            assert "step sms1: 0.0056 opt-outs per send is over 0.005 (5 of 900)" in notes
            # 161 of 900 treated carts against 10 of 100 held out: +7.9 points, Newcombe's
            # interval from the two Wilson intervals (as tests/reports checks).
            assert (
                "Holdout: recovery +7.9% against held-out carts (95 % interval +0.1% to +13.1%)"
                in notes
            )
            shot = tmp_path / "dashboard-flow-report.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"flow report screenshot: {shot}")
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
