"""A real `cartback serve` whose demo store sends SMS through a provider of its own, set up as an
operator would (`migrate`, `demo`, `channels set`), for end-to-end tests of delivery."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, select
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.store import tables as t
from tests.support.procs import cartback_env, start_cartback, stop, wait_for

DEMO_KEY = "cbk_demo_local_only"
# Steps seconds apart: the store's two-hour gap between texts would hold every second SMS.
NO_COOLDOWN = "sms_cooldown: 0s\nsms_cap: null\n"
# Generous: a loaded 2-core machine may take seconds for what takes milliseconds alone.
WAIT = 30.0


def flow_with_steps(steps: str) -> str:
    """The demo flow's frame (name, exits) with steps seconds apart, given as YAML."""
    return (
        "name: demo\n"
        "abandon_after: 1s\n"
        "exit_on: [order_placed, cart_emptied, opted_out]\n"
        "holdout: 0\n"
        "steps:\n" + steps
    )


@dataclass
class Served:
    base: str
    engine: Engine
    log: Path

    def checkout(self, token: str, phone: str) -> None:
        event = {
            "id": f"evt-{token}",
            "type": "checkout.updated",
            "occurred_at": datetime.now(UTC).isoformat(),
            "cart_token": token,
            # No address: the phone alone places the shopper, so a test can pick a number
            # whose zone is in daytime whenever it runs (faultrig.daytime_number).
            "contact": {"phone": phone, "first_name": "Kari", "locale": "en"},
            "lines": [{"title": "Wool socks", "quantity": 2, "price": "60.00"}],
            "currency": "USD",
            "restore_url": f"https://shop.example/cart/{token}",
            "consent": {"sms_marketing": True},
        }
        answer = httpx.post(
            f"{self.base}/v1/events",
            json=event,
            headers={"Authorization": f"Bearer {DEMO_KEY}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text

    def rows(self, table: Any, *where: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            query = select(table).where(*where).order_by(table.c.id)
            return [dict(row) for row in conn.execute(query).mappings()]

    def outbox(self, phone: str) -> list[dict[str, Any]]:
        return self.rows(t.outbox, t.outbox.c.to_address == phone)

    def sent(self, phone: str, step: str) -> dict[str, Any] | None:
        found = [row for row in self.outbox(phone) if row["step_id"] == step]
        return found[0] if found else None

    def enrollment(self, token: str) -> dict[str, Any]:
        cart = t.carts.c
        with self.engine.connect() as conn:
            cart_id = conn.execute(select(cart.id).where(cart.token == token)).scalar_one()
        [found] = self.rows(t.enrollments, t.enrollments.c.cart_id == cart_id)
        return found

    def decisions(self, token: str) -> list[dict[str, Any]]:
        answer = httpx.get(
            f"{self.base}/v1/carts/{token}/decisions",
            headers={"Authorization": f"Bearer {DEMO_KEY}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        decisions: list[dict[str, Any]] = answer.json()
        return decisions

    def contact(self, phone: str) -> dict[str, Any]:
        [found] = self.rows(t.contacts, t.contacts.c.phone == phone)
        return found


@contextmanager
def served(
    database_url: str,
    workdir: Path,
    *,
    port: int,
    flow: str,
    provider: list[str],
    environ: Mapping[str, str],
) -> Iterator[Served]:
    """`cartback serve` on `port`, the demo store's SMS going through `provider` (the arguments
    of `cartback channels set demo sms ...`); it must stop cleanly (exit code 0)."""
    flows = workdir / "flows"
    flows.mkdir()
    (flows / "demo.yaml").write_text(flow)
    base = f"http://127.0.0.1:{port}"
    env = cartback_env(
        database_url,
        CARTBACK_SMS_CHANNEL="null",
        CARTBACK_EMAIL_CHANNEL="null",
        CARTBACK_FLOWS_DIR=str(flows),
        CARTBACK_PORT=str(port),
        CARTBACK_BASE_URL=base,
        CARTBACK_WORKER_POLL_SECONDS="0.1",
        CARTBACK_SEND_TIMEOUT_SECONDS="5",
        CARTBACK_LEASE_SECONDS="30",
        **environ,
    )
    (workdir / "policy.yaml").write_text(NO_COOLDOWN)
    for command in (
        ["migrate"],
        ["demo"],
        ["store", "policy", "demo", str(workdir / "policy.yaml")],
        ["channels", "set", "demo", "sms", *provider],
    ):
        # The real commands, in this process: a new interpreter for each costs seconds.
        done = CliRunner().invoke(cli, command, env=_only(env))
        assert done.exit_code == 0, f"{command}: {done.output}"
    log = workdir / "serve.log"
    process = start_cartback(["serve"], env, workdir, log)
    engine = create_engine(database_url)
    try:
        wait_for(lambda: _healthy(base) or process.poll() is not None, WAIT, "cartback serve")
        assert process.poll() is None, log.read_text()
        yield Served(base, engine, log)
    finally:
        code = stop(process, timeout=WAIT)
        engine.dispose()
    assert code == 0, log.read_text()[-4000:]


def _only(env: Mapping[str, str]) -> dict[str, str | None]:
    """`env` for an in-process command: the test process's other CARTBACK_* variables unset."""
    unset: dict[str, str | None] = {
        key: None for key in os.environ if key.startswith("CARTBACK_") and key not in env
    }
    return {**unset, **env}


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
