"""WooCommerce, CartFlows, BigCommerce and the generic webhook against a running
`cartback serve`, connected as a shop owner connects them: a checkout creates one enrollment,
the same delivery again changes nothing, bad authentication is refused, and the matching
order ends the enrollment. One server per database backend serves every platform."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from cartback.store import tables as t
from cartback.store.db import make_engine
from tests.support.pg import acquire_server, temporary_database
from tests.support.procs import (
    cartback_env,
    free_port,
    run_cartback,
    start_cartback,
    stop,
    wait_for,
)
from tests.support.recording import RecordingServer, recording_server
from tests.support.shops import (
    BC_STORE_HASH,
    BC_TOKEN,
    BC_TOKEN_ENV,
    FIXTURES,
    FORM,
    SECRET,
    SECRET_ENV,
    SITE,
    bc_api,
    bc_headers,
    fixture,
    form_body,
    generic_headers,
    json_body,
    woo_headers,
)

STORES = {"wc": "woocommerce", "cf": "woocommerce", "bc": "bigcommerce", "gen": "generic"}


@dataclass
class Running:
    base: str
    database_url: str
    api: RecordingServer


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# One pytest-xdist worker runs this module, so its module-wide fixture is set up once.
pytestmark = pytest.mark.xdist_group("shop-platforms")


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ],
)
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    workdir = tmp_path_factory.mktemp(f"shops-{request.param}")
    with recording_server(_bc_api_now) as api:
        if request.param == "sqlite":
            yield from _serve(f"sqlite:///{workdir / 'cartback.db'}", workdir, api)
        else:
            with temporary_database(acquire_server()) as url:
                yield from _serve(url, workdir, api)


def _bc_api_now(method: str, path: str, body: Any) -> tuple[int, Any]:
    """The recorded BigCommerce API, with the cart's time now: a cart days old would be due at
    once, and the server's own worker could finish its enrollment before the order arrives."""
    checkout = fixture("bigcommerce", "api_checkout")
    checkout["data"]["cart"]["updated_time"] = _now()
    status, answer = bc_api(checkout)(method, path, body)
    if path.endswith("/v2/orders/250"):
        answer = answer | {"date_created": format_datetime(datetime.now(UTC))}
    return status, answer


def _serve(database_url: str, workdir: Path, api: RecordingServer) -> Iterator[Running]:
    port = free_port()
    env = cartback_env(
        database_url,
        CARTBACK_SMS_CHANNEL="null",
        CARTBACK_EMAIL_CHANNEL="null",
        CARTBACK_PORT=str(port),
        **{SECRET_ENV: SECRET, BC_TOKEN_ENV: BC_TOKEN},
    )
    secret = ["--secret", f"env:{SECRET_ENV}"]
    site = ["--shop-domain", SITE, *secret]
    bc_api_root = f"{api.url}/stores/{BC_STORE_HASH}"
    mapping = str(FIXTURES / "generic/zapier_mapping.yaml")
    create = ["store", "create", "--brand", "TestShop", "--domain", SITE, "--currency", "NOK"]
    setup = [["migrate"]]
    setup += [[*create, slug, "--name", slug, "--platform", kind] for slug, kind in STORES.items()]
    connect = ["shops", "connect"]
    setup += [
        [*connect, "woocommerce", "--store", "wc", *site],
        [*connect, "cartflows", "--store", "wc", *site],
        [*connect, "cartflows", "--store", "cf", *site],
        [
            *connect,
            "bigcommerce",
            "--store",
            "bc",
            "--shop-domain",
            bc_api_root,
            *secret,
            "--api-token",
            f"env:{BC_TOKEN_ENV}",
        ],
        [
            *connect,
            "generic",
            "--store",
            "gen",
            "--shop-domain",
            "zapier",
            *secret,
            "--mapping",
            mapping,
        ],
    ]
    for command in setup:
        done = run_cartback(command, env, workdir)
        assert done.returncode == 0, (command, done.stderr)
    log = workdir / "serve.log"
    server = start_cartback(["serve"], env, workdir, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(base), 30, "the server to answer")
        yield Running(base, database_url, api)
    finally:
        code = stop(server)
    assert code == 0, log.read_text()


def _count(running: Running, slug: str, table: Any, *where: Any) -> int:
    engine = make_engine(running.database_url)
    try:
        with engine.connect() as conn:
            store_id = select(t.stores.c.id).where(t.stores.c.slug == slug).scalar_subquery()
            query = select(func.count()).select_from(table).where(table.c.store_id == store_id)
            return int(conn.execute(query.where(*where)).scalar_one())
    finally:
        engine.dispose()


def _enrollments(running: Running, slug: str, state: str | None = None) -> int:
    where = [t.enrollments.c.state == state] if state else []
    return _count(running, slug, t.enrollments, *where)


def _applied(check: Any, what: str) -> None:
    """A queued delivery is answered once it is durable; the server's worker applies it."""
    wait_for(check, 15, what)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def test_woocommerce_with_cartflows_end_to_end(running: Running) -> None:
    url = f"{running.base}/hooks/shop"
    assert httpx.post(f"{url}/woocommerce/wc", content=b"webhook_id=3", headers=FORM).is_success
    checkout = form_body(fixture("cartflows", "abandoned"))
    first = httpx.post(
        f"{url}/cartflows/wc", params={"token": SECRET}, content=checkout, headers=FORM
    )
    assert first.status_code == 200, first.text
    _applied(lambda: _enrollments(running, "wc") == 1, "the checkout's enrollment")
    order = json_body(fixture("woocommerce", "order_processing") | {"date_paid_gmt": _now()[:19]})
    signed = woo_headers("order.created", order, delivery_id="wc-e2e-1")
    refused = httpx.post(
        f"{url}/woocommerce/wc", content=order, headers=signed | {"X-WC-Webhook-Signature": "AAAA"}
    )
    assert refused.status_code == 401
    assert _enrollments(running, "wc", "exited") == 0
    assert httpx.post(f"{url}/woocommerce/wc", content=order, headers=signed).status_code == 200
    _applied(lambda: _enrollments(running, "wc", "exited") == 1, "the order to end it")
    again = httpx.post(f"{url}/woocommerce/wc", content=order, headers=signed)
    assert again.json()["status"] == "duplicate"
    assert _count(running, "wc", t.orders) == 1


def test_cartflows_end_to_end(running: Running) -> None:
    url = f"{running.base}/hooks/shop/cartflows/cf"
    fields = fixture("cartflows", "abandoned")

    def deliver(status: str, token: str = SECRET) -> httpx.Response:
        body = form_body(fields | {"order_status": status})
        return httpx.post(url, params={"token": token}, content=body, headers=FORM)

    assert deliver("abandoned").status_code == 200
    _applied(lambda: _enrollments(running, "cf") == 1, "the checkout's enrollment")
    assert deliver("abandoned").json()["status"] == "duplicate"
    assert _enrollments(running, "cf") == 1 and _count(running, "cf", t.carts) == 1
    assert deliver("completed", token="wrong").status_code == 401
    assert _enrollments(running, "cf", "exited") == 0
    assert deliver("completed").status_code == 200
    _applied(lambda: _enrollments(running, "cf", "exited") == 1, "the order to end it")


def test_bigcommerce_end_to_end(running: Running) -> None:
    url = f"{running.base}/hooks/shop/bigcommerce/bc"
    abandoned = json_body(fixture("bigcommerce", "cart_abandoned"))
    first = httpx.post(url, content=abandoned, headers=bc_headers())
    assert first.status_code == 200, first.text
    assert _enrollments(running, "bc") == 1
    again = httpx.post(url, content=abandoned, headers=bc_headers())
    assert again.json()["status"] == "duplicate"
    assert _enrollments(running, "bc") == 1
    converted = json_body(fixture("bigcommerce", "cart_converted"))
    assert httpx.post(url, content=converted, headers=bc_headers(secret="x")).status_code == 401
    assert _enrollments(running, "bc", "exited") == 0
    assert httpx.post(url, content=converted, headers=bc_headers()).status_code == 200
    assert _enrollments(running, "bc", "exited") == 1
    tokens = {r.headers.get("X-Auth-Token") for r in running.api.requests}
    assert tokens == {BC_TOKEN}


def test_generic_webhook_end_to_end(running: Running) -> None:
    url = f"{running.base}/hooks/shop/generic/gen"
    checkout = json_body(fixture("generic", "zap_checkout") | {"occurred": _now()})
    first = httpx.post(url, content=checkout, headers=generic_headers(checkout))
    assert first.status_code == 200, first.text
    _applied(lambda: _enrollments(running, "gen") == 1, "the checkout's enrollment")
    again = httpx.post(url, content=checkout, headers=generic_headers(checkout))
    assert again.json()["status"] == "duplicate"
    assert _enrollments(running, "gen") == 1
    order = json_body(fixture("generic", "zap_order") | {"occurred": _now()})
    bad = httpx.post(url, content=order, headers=generic_headers(order, secret="nope"))
    assert bad.status_code == 401
    assert _enrollments(running, "gen", "exited") == 0
    assert httpx.post(url, content=order, headers=generic_headers(order)).status_code == 200
    _applied(lambda: _enrollments(running, "gen", "exited") == 1, "the order to end it")
