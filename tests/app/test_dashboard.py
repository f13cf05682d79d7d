"""The dashboard through the HTTP app: login, CSRF, lockout, the seeded figures, search,
consent lookup, the test send, and /docs without a CDN."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.core.model import Channel
from cartback.ports import LookupStatus, OutboundMessage, SendResult, SendStatus
from cartback.services import dashboard_auth as auth
from cartback.services import dashboard_views as views
from cartback.services.dispatch import Dispatcher
from cartback.store import tables as t
from cartback.web.app import create_app
from tests.support import dashboard as seeded
from tests.support.world import World, make_world


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with world.app.engine.begin() as conn:
        version = world.app.registry.current("default").version
        seeded.seed(conn, world.store.id, version, world.now)
        auth.add_user(conn, world.store.id, seeded.USER, seeded.PASSWORD, world.now)
    with TestClient(create_app(world.app), follow_redirects=False) as test_client:
        yield test_client


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


def _login(client: TestClient, password: str = seeded.PASSWORD) -> TestClient:
    form = client.get("/dashboard/login")
    assert form.status_code == 200
    return client.post(  # type: ignore[return-value]
        "/dashboard/login",
        data={"csrf": _csrf(form.text), "email": seeded.USER, "password": password},
    )


def test_pages_need_a_login(client: TestClient) -> None:
    for path in ("/dashboard", "/dashboard/messages?q=cart-01", "/dashboard/consent"):
        response = client.get(path)
        assert response.status_code == 303
        assert response.headers["location"] == "/dashboard/login"


def test_login_sets_a_session_cookie_that_scripts_cannot_read(client: TestClient) -> None:
    response = _login(client)
    assert response.status_code == 303
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("cartback_session=")
    )
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/dashboard" in cookie
    assert "Secure" not in cookie  # the base URL is http here
    assert client.get("/dashboard").status_code == 200


def test_a_wrong_password_is_refused(client: TestClient) -> None:
    response = _login(client, password="not the password")
    assert response.status_code == 401
    assert "Wrong email or password" in response.text
    assert client.get("/dashboard").status_code == 303


def test_login_without_its_csrf_token_is_refused(client: TestClient) -> None:
    client.get("/dashboard/login")
    response = client.post(
        "/dashboard/login", data={"email": seeded.USER, "password": seeded.PASSWORD}
    )
    assert response.status_code == 403
    assert "cartback_session" not in response.headers.get("set-cookie", "")


def test_repeated_failures_lock_the_user_out_even_with_the_right_password(
    client: TestClient, world: World
) -> None:
    for _ in range(auth.FREE_FAILURES):
        assert _login(client, password="wrong guess!!").status_code == 401
    locked = _login(client)
    assert locked.status_code == 401
    assert "Too many failed logins" in locked.text
    world.clock.advance(timedelta(seconds=31))
    assert _login(client).status_code == 303


def test_lockout_grows_with_each_failure_and_stops_growing() -> None:
    assert auth.lock_for(auth.FREE_FAILURES - 1) is None
    assert auth.lock_for(auth.FREE_FAILURES) == timedelta(seconds=30)
    assert auth.lock_for(auth.FREE_FAILURES + 1) == timedelta(seconds=60)
    assert auth.lock_for(10_000) == timedelta(hours=1)


def test_passwords_are_stored_as_salted_scrypt_hashes(world: World) -> None:
    with world.app.engine.begin() as conn:
        auth.add_user(conn, world.store.id, "a@shop.example", seeded.PASSWORD, world.now)
        auth.add_user(conn, world.store.id, "b@shop.example", seeded.PASSWORD, world.now)
        hashes = conn.execute(select(t.dashboard_users.c.password_hash)).scalars().all()
    assert all(h.startswith("scrypt$") and seeded.PASSWORD not in h for h in hashes)
    assert len(set(hashes)) == 2
    assert auth.verify_password(seeded.PASSWORD, hashes[0])
    assert not auth.verify_password(seeded.PASSWORD + "x", hashes[0])
    with pytest.raises(auth.PasswordTooShort):
        auth.hash_password("short")


def test_overview_shows_the_seeded_figures(client: TestClient, world: World) -> None:
    with world.app.engine.connect() as conn:
        model = views.overview(conn, world.store.id, world.now)
    counts = {c.channel: c for c in model.channels}
    for channel in ("sms", "email"):
        got = counts[channel]
        expected = seeded.EXPECTED[channel]
        assert (got.sent, got.delivered, got.failed, got.clicked) == (
            expected["sent"],
            expected["delivered"],
            expected["failed"],
            expected["clicked"],
        )
    assert model.funnel == seeded.EXPECTED["funnel"]
    assert model.revenue == {"USD": seeded.EXPECTED["revenue"]}
    assert model.opt_outs == seeded.EXPECTED["opt_outs"]
    [alert] = model.alerts
    assert (alert.step, alert.sends, alert.opt_outs) == ("sms1", 8, 1)
    assert sum(bar.value for bar in model.sends_chart.bars) == 12
    assert sum(bar.value for bar in model.orders_chart.bars) == 4
    _login(client)
    page = client.get("/dashboard").text
    assert "200.50" in page and "Orders on carts that got a message" in page
    assert "Opt-out alert" in page and "<svg" in page


def test_flow_page_counts_steps_variants_and_holdout(client: TestClient) -> None:
    _login(client)
    page = client.get("/dashboard/flows/default")
    assert page.status_code == 200
    steps = re.search(r'<tr data-step="email1">(.*?)</tr>', page.text, re.S)
    assert steps is not None and "consent: 3" in steps.group(1)
    variants = re.search(r'<table id="variants">(.*?)</table>', page.text, re.S)
    assert variants is not None
    cells = re.findall(r"<td>([^<]*)</td><td>(\d+)</td>", variants.group(1))
    assert ("a", "4") in cells and ("b", "4") in cells
    assert any(name.startswith("holdout") and n == "2" for name, n in cells)
    assert client.get("/dashboard/flows/nope").status_code == 404


def test_message_log_finds_a_cart_by_phone_email_or_token_and_masks_addresses(
    client: TestClient,
) -> None:
    _login(client)
    for query in (seeded.phone(2), "+47 900 00 002", seeded.email(2).upper(), seeded.token(2)):
        page = _search(client, "messages", query).text
        assert 'href="/dashboard/carts/cart-02"' in page, query
        table = re.search(r'<table id="messages">(.*?)</table>', page, re.S)
        assert table is not None, query
        rows = table.group(1)
        assert seeded.phone(2) not in rows and seeded.email(2) not in rows
        assert "+47•••••002" in rows and "s•••@example.com" in rows
    assert "Nothing found" in _search(client, "messages", "+4711111111").text


def test_a_search_without_the_csrf_token_is_refused(client: TestClient) -> None:
    _login(client)
    for page in ("messages", "consent"):
        response = client.post(f"/dashboard/{page}", data={"q": seeded.phone(2)})
        assert response.status_code == 403
        assert "+47•••••002" not in response.text


def test_cart_page_shows_the_decision_timeline(client: TestClient) -> None:
    _login(client)
    page = client.get("/dashboard/carts/cart-06").text
    assert "the contact has not granted email marketing" in page
    assert "consent" in page and "sms1" in page
    assert client.get("/dashboard/carts/nope").status_code == 404


def test_consent_lookup_shows_the_ledger(client: TestClient) -> None:
    _login(client)
    page = _search(client, "consent", seeded.phone(4)).text
    assert 'id="consent-history"' in page and "keyword_reply" in page
    shown = page.split("</form>", 2)[2]  # past the logout form and the search box
    assert seeded.phone(4) not in shown and "+47•••••004" in shown


def test_a_post_without_the_csrf_token_is_refused(client: TestClient, world: World) -> None:
    _add_test_contact(world)
    _login(client)
    response = client.post("/dashboard/test-send", data={"test_contact": "1"})
    assert response.status_code == 403
    response = client.post("/dashboard/logout", data={"csrf": "forged"})
    assert response.status_code == 403
    assert _outbox_tests(world) == []


def test_test_send_queues_one_service_message_to_a_listed_test_contact(
    client: TestClient, world: World
) -> None:
    contact_id = _add_test_contact(world)
    _login(client)
    csrf = _csrf(client.get("/dashboard/consent").text)
    response = client.post(
        "/dashboard/test-send", data={"csrf": csrf, "test_contact": str(contact_id)}
    )
    assert response.status_code == 303
    [row] = _outbox_tests(world)
    assert row.to_address == seeded.TEST_PHONE and row.status == "pending"
    assert row.enrollment_id is None and row.service_key.startswith("test:")
    # Any other id (another store's, or none) reaches nobody.
    refused = client.post("/dashboard/test-send", data={"csrf": csrf, "test_contact": "999"})
    assert refused.status_code == 422
    assert len(_outbox_tests(world)) == 1


def test_logout_ends_the_session(client: TestClient) -> None:
    _login(client)
    csrf = _csrf(client.get("/dashboard").text)
    assert client.post("/dashboard/logout", data={"csrf": csrf}).status_code == 303
    assert client.get("/dashboard").status_code == 303


def test_docs_load_swagger_ui_from_the_server_itself(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    urls += re.findall(r"url: '([^']+)'", page.text)
    assert urls and all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    assert "https://" not in page.text and "http://" not in page.text
    for url in urls:
        assert client.get(url).status_code == 200, url
    assert client.get("/redoc").status_code == 404


def test_cli_adds_a_user_with_a_password_read_from_stdin(world: World) -> None:
    env = {"CARTBACK_DATABASE_URL": world.app.settings.database_url}
    runner = CliRunner()
    args = ["dashboard", "user", "add", "New@Shop.example", "--store", "test"]
    done = runner.invoke(cli, [*args, "--password-stdin"], input=seeded.PASSWORD + "\n", env=env)
    assert done.exit_code == 0, done.output
    short = runner.invoke(cli, [*args, "--password-stdin"], input="short\n", env=env)
    assert short.exit_code == 2 and "at least 12" in short.stderr
    with world.app.engine.begin() as conn:
        assert auth.login(conn, "new@shop.example", seeded.PASSWORD, world.now).token
    again = runner.invoke(cli, [*args, "--password-stdin"], input=seeded.PASSWORD + "\n", env=env)
    assert again.exit_code == 2 and "exists" in again.stderr
    typed = runner.invoke(
        cli,
        ["dashboard", "user", "add", "typed@shop.example", "--store", "test"],
        input=f"{seeded.PASSWORD}\n{seeded.PASSWORD}\n",
        env=env,
    )
    assert typed.exit_code == 0, typed.output
    assert seeded.PASSWORD not in typed.output  # the prompt never echoes it
    bad = runner.invoke(
        cli, ["dashboard", "test-contact", "add", "12345", "--store", "test"], env=env
    )
    assert bad.exit_code == 2 and "ADDRESS" in bad.stderr


def _search(client: TestClient, page: str, query: str) -> Any:
    csrf = _csrf(client.get(f"/dashboard/{page}").text)
    response = client.post(f"/dashboard/{page}", data={"csrf": csrf, "q": query})
    assert response.status_code == 200, response.text
    return response


def _add_test_contact(world: World) -> int:
    with world.app.engine.begin() as conn:
        assert views.add_test_contact(conn, world.store.id, "sms", seeded.TEST_PHONE, world.now)
        return int(conn.execute(select(t.test_contacts.c.id)).scalar_one())


def _outbox_tests(world: World) -> list[object]:
    with world.app.engine.connect() as conn:
        return list(
            conn.execute(select(t.outbox).where(t.outbox.c.step_id == "dashboard-test")).all()
        )


def test_the_flow_page_shows_the_flow_report(client: TestClient) -> None:
    """The panel is the flow report's figures (services/reports.py): per flow and channel,
    the seeded sends, with the holdout readout as a note."""
    _login(client)
    page = client.get("/dashboard/flows/default").text
    assert 'id="report"' in page and "Attributed results (USD)" in page
    table = page[page.index('id="report"') :]
    rows = {
        cells[0]: cells[1:]
        for cells in (
            re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)
        )
        if cells
    }
    # Sent, then delivered, per channel, as seeded.
    assert rows["channel sms"][:2] == ["8", "6"]
    assert rows["channel email"][:1] == ["4"]
    assert "Holdout:" in table


def test_a_session_ends_after_its_lifetime(client: TestClient, world: World) -> None:
    _login(client)
    world.clock.advance(auth.SESSION_LIFETIME + timedelta(seconds=1))
    assert client.get("/dashboard").status_code == 303


def test_the_session_cookie_is_secure_behind_https(database_url: str) -> None:
    with make_world(database_url, base_url="https://shop.example") as world:
        with world.app.engine.begin() as conn:
            auth.add_user(conn, world.store.id, seeded.USER, seeded.PASSWORD, world.now)
        with TestClient(
            create_app(world.app), base_url="https://testserver", follow_redirects=False
        ) as https_client:
            response = _login(https_client)
    assert response.status_code == 303
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("cartback_session=")
    )
    assert "Secure" in cookie and "HttpOnly" in cookie


def test_a_test_send_goes_out_through_the_dispatcher(client: TestClient, world: World) -> None:
    with world.app.engine.begin() as conn:
        views.add_test_contact(conn, world.store.id, "email", "owner@shop.example", world.now)
        [email_contact] = conn.execute(select(t.test_contacts.c.id)).scalars().all()
        assert views.queue_test_send(conn, world.store.id, email_contact, "Test Store", world.now)
    sent: list[OutboundMessage] = []

    class Recorder:
        name = "recorder"
        kind = Channel.EMAIL

        def send(self, message: OutboundMessage) -> SendResult:
            sent.append(message)
            return SendResult(SendStatus.ACCEPTED, provider_id="p-1")

        def lookup(self, key: str) -> LookupStatus:
            return LookupStatus.UNKNOWN

        def close(self) -> None:
            return None

    dispatcher = Dispatcher(
        world.app.engine,
        {Channel.EMAIL: Recorder()},  # type: ignore[dict-item]
        clock=world.clock.now,
    )
    try:
        dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
    [message] = sent
    assert message.to == "owner@shop.example"
    assert message.subject == views.TEST_SUBJECT
