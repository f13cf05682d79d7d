"""The fault scenarios, each a function of a rig that returns the counts of its run.

The test suite runs each once per backend; `make soak` runs them again and again. A scenario
only injects its fault and waits for conditions: `Rig.counts` judges the outcome.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import func, select, text

from cartback.store import tables as t
from tests.support.faultrig import LEASE_SECONDS, Counts, Rig, wait_until
from tests.support.pg import PgServer, interrupt_server, relaunch_server

API_KEY = "cbk_demo_local_only"


def kill9(rig: Rig, rounds: int = 5) -> Counts:
    """Two workers killed with SIGKILL at random points while carts keep coming, each
    restarted at once."""
    for name in ("w1", "w2"):
        rig.start_worker(name)
    rig.wait_running("w1")
    for number in range(rounds):
        rig.seed_carts(12, f"k{number}")
        time.sleep(rig.rng.uniform(0.5, 3.0))
        victim = rig.rng.choice(["w1", "w2"])
        rig.signal(victim, signal.SIGKILL)
        rig.start_worker(victim)
    return rig.counts("kill9", rig.settle(LEASE_SECONDS + 40))


def kill_mid_call(rig: Rig) -> Counts:
    """A worker killed with SIGKILL after the provider took a message and before the worker
    recorded the answer (the provider answers a second late). After the lease the row is
    looked up with the provider and settled as sent: never sent again, never lost."""
    rig.provider.switch("hang", delay=1.0)
    rig.start_worker("w1")
    rig.wait_running("w1")
    rig.seed_carts(12, "mid", sms=False)
    wait_until(lambda: rig.provider.count() >= 1, 30, "the provider to take a message", every=0.01)
    rig.signal("w1", signal.SIGKILL)
    rig.provider.switch("normal")
    rig.start_worker("w1")
    return rig.counts("kill_mid_call", rig.settle(LEASE_SECONDS + 40))


def sigstop(rig: Rig) -> Counts:
    """A worker paused (SIGSTOP) in the middle of a batch until past its lease, while a second
    worker runs; then resumed (SIGCONT)."""
    rig.provider.switch("slow", delay=0.5)
    rig.start_worker("w1", CARTBACK_DISPATCH_CONCURRENCY="2")
    rig.wait_running("w1")
    tokens = rig.seed_carts(30, "stall", sms=False)
    wait_until(lambda: rig.provider.count() >= 1, 30, "w1 to start sending", every=0.02)
    _stop_outside_a_write(rig, "w1")
    rig.provider.switch("normal")
    rig.start_worker("w2")
    # w1 holds the first email of every cart; w2 records them all only once it has taken over.
    wait_until(
        lambda: _recorded_sent(rig, "email1") >= len(tokens),
        LEASE_SECONDS + 30,
        "w2 to take over the stalled messages",
    )
    rig.signal("w1", signal.SIGCONT)
    return rig.counts("sigstop", rig.settle(60))


def _stop_outside_a_write(rig: Rig, name: str) -> None:
    """Stop a worker while it waits on its provider. On SQLite one writer holds the database
    lock at a time: a worker stopped inside a write transaction stalls every process until it
    resumes, which no lease can change. So on SQLite the worker is stopped at a moment it holds
    no write lock (stopped again until then); on PostgreSQL wherever it is."""
    for _ in range(100):
        rig.signal(name, signal.SIGSTOP)
        if rig.backend != "sqlite" or _write_lock_free(rig):
            return
        rig.signal(name, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"{name} never stopped outside a write transaction")


def _write_lock_free(rig: Rig) -> bool:
    database = rig.engine.url.database
    assert database is not None
    probe = sqlite3.connect(database, timeout=0.2, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


def _recorded_sent(rig: Rig, step: str) -> int:
    o = t.outbox.c
    with rig.engine.connect() as conn:
        found = conn.execute(
            select(func.count()).select_from(t.outbox).where(o.step_id == step, o.status == "sent")
        ).scalar_one()
    return int(found)


def provider_hang(rig: Rig) -> Counts:
    """A provider that takes messages but answers only after the client's timeout, for a
    while, under two workers."""
    for name in ("w1", "w2"):
        rig.start_worker(name)
    rig.wait_running("w1")
    rig.wait_running("w2")
    rig.provider.switch("hang", delay=3)
    rig.seed_carts(24, "hang", sms=False)
    wait_until(lambda: rig.provider.count() >= 8, 30, "the hung provider to take messages")
    rig.provider.switch("normal")
    return rig.counts("provider_hang", rig.settle(60))


def provider_fail_in_turn(rig: Rig) -> Counts:
    """A provider that refuses every other request with 500 (retried later), under two workers."""
    rig.provider.switch("fail_in_turn")
    for name in ("w1", "w2"):
        rig.start_worker(name)
    rig.seed_carts(24, "turn")
    wait_until(lambda: rig.provider.requests >= 48, 60, "the workers to try the provider")
    rig.provider.switch("normal")
    counts = rig.counts("provider_fail_in_turn", rig.settle(60))
    with rig.engine.connect() as conn:
        retrying = conn.execute(
            select(t.outbox.c.id).where(t.outbox.c.status == "pending", t.outbox.c.attempts > 0)
        ).all()
    counts.extra["retrying"] = len(retrying)
    return counts


def database_outage(rig: Rig, server: PgServer | None, down_s: float = 6) -> Counts:
    """The database goes away and comes back: a throwaway PostgreSQL cluster stopped and
    started again, or on SQLite the file locked by another writer. Carts reported after it
    returns must still get their messages."""
    for name in ("w1", "w2"):
        rig.start_worker(name)
    rig.wait_running("w1")
    rig.seed_carts(16, "before")
    wait_until(lambda: rig.provider.count() >= 4, 30, "the first messages")
    if server is not None:
        interrupt_server(server)
        time.sleep(down_s)  # the outage itself: nothing to poll while the server is down
        relaunch_server(server)
    else:
        _hold_sqlite_lock(rig.database_url, down_s)
    returned = time.monotonic()
    after = rig.seed_carts(16, "after")
    wanted = {f"{token}@example.com" for token in after}
    wait_until(
        lambda: wanted <= {item.to for item in rig.provider.taken()},
        60,
        "messages for the carts reported after the outage",
    )
    counts = rig.counts("database_outage", rig.settle(60))
    counts.settle_s = max(counts.settle_s, time.monotonic() - returned)
    return counts


def _hold_sqlite_lock(database_url: str, seconds: float) -> None:
    path = database_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)  # the outage itself
        conn.execute("COMMIT")
    finally:
        conn.close()


def concurrent_events(rig: Rig, rounds: int = 6, writers: int = 40) -> Counts:
    """Many concurrent updates to one cart, and updates delivered out of order: the cart must
    end as the newest update left it."""
    base = rig.start_web()
    rig.start_worker("w1")
    stale = 0
    now = datetime.now(UTC)
    with httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        for number in range(rounds):
            token = f"race-{number}"
            assert _post_checkout(client, base, token, 0, now) == 200
            versions = list(range(1, writers + 1))
            rig.rng.shuffle(versions)
            barrier = threading.Barrier(writers)

            def post(version: int, token: str = token, barrier: threading.Barrier = barrier) -> int:
                barrier.wait()
                return _post_checkout(client, base, token, version, now)

            with ThreadPoolExecutor(max_workers=writers) as pool:
                answers = list(pool.map(post, versions))
            assert set(answers) == {200}, answers
            rig.accepted.append(token)
            stale += _stored_version(rig, token) != writers
        for number in range(rounds):
            token = f"late-{number}"
            for version in (3, 1, 2):
                assert _post_checkout(client, base, token, version, now) == 200
            rig.accepted.append(token)
            stale += _stored_version(rig, token) != 3
    counts = rig.counts("concurrent_events", rig.settle(60))
    counts.extra["stale"] = stale
    return counts


def _post_checkout(
    client: httpx.Client, base: str, token: str, version: int, start: datetime
) -> int:
    """Checkout update `version` of a cart: `version` + 1 items, stamped `version` ms after start.
    Each version comes from another address (a guest retyping it), so nothing but the cart
    row itself orders the concurrent updates."""
    at = start + timedelta(milliseconds=version)
    payload = {
        "id": f"{token}-v{version}",
        "type": "checkout.updated",
        "occurred_at": at.isoformat(),
        "cart_token": token,
        "contact": {"email": f"{token}-{version}@example.com", "first_name": "Kari"},
        "shipping": {"country": "NO"},
        "lines": [{"title": "Wool socks", "quantity": version + 1, "price": "10.00"}],
        "currency": "NOK",
        "restore_url": f"https://shop.example/cart/{token}",
        "consent": {"email_marketing": True},
    }
    return client.post(f"{base}/v1/events", json=payload).status_code


def _stored_version(rig: Rig, token: str) -> int:
    """The cart's stored version once the worker has applied every accepted event."""
    wait_until(lambda: _inbox_pending(rig) == 0, 60, "the worker to apply the inbox", 0.05)
    with rig.engine.connect() as conn:
        lines = conn.execute(select(t.carts.c.lines).where(t.carts.c.token == token)).scalar_one()
    return int(lines[0]["quantity"]) - 1


def _inbox_pending(rig: Rig) -> int:
    i = t.inbox.c
    with rig.engine.connect() as conn:
        query = select(func.count()).where(i.applied_at.is_(None), i.error.is_(None))
        return int(conn.execute(query).scalar_one())


def skewed_events(rig: Rig, carts: int = 4) -> Counts:
    """A shop whose clock runs 10 minutes ahead grants email consent; the shopper uses the
    one-click unsubscribe of the first email. Nothing may be sent to them after it."""
    base = rig.start_web()
    rig.start_worker("w1")
    ahead = datetime.now(UTC) + timedelta(minutes=10)
    addresses = []
    with httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as client:
        for number in range(carts):
            token = f"skew-{number}"
            payload = {
                "id": f"{token}-v1",
                "type": "checkout.updated",
                "occurred_at": ahead.isoformat(),
                "cart_token": token,
                "contact": {"email": f"{token}@example.com", "first_name": "Kari"},
                "shipping": {"country": "NO"},
                "lines": [{"title": "Wool socks", "quantity": 1, "price": "10.00"}],
                "currency": "NOK",
                "restore_url": f"https://shop.example/cart/{token}",
                "consent": {"email_marketing": True},
            }
            assert client.post(f"{base}/v1/events", json=payload).status_code == 200
            rig.accepted.append(token)
            addresses.append(f"{token}@example.com")
    # Carts reported on time show the flow running beside the skewed ones.
    rig.seed_carts(4, "ontime", sms=False)
    # A skewed time clamped to the receive time makes the first email due in seconds; one taken
    # as it came waits 10 minutes.
    with contextlib.suppress(AssertionError):
        wait_until(
            lambda: all(rig.taken_for(address) for address in addresses),
            15,
            "the first email of every skewed cart",
        )
    for address in addresses:
        if rig.taken_for(address):
            _unsubscribe(rig, address)
    counts = rig.counts("skewed_events", rig.settle(60))
    counts.extra["held_by_skew"] = len(addresses) - len(rig.optouts)
    return counts


def _unsubscribe(rig: Rig, address: str) -> None:
    """POST the one-click unsubscribe of the first email, as a mail client does."""
    header = rig.taken_for(address)[0].headers["List-Unsubscribe"]
    answer = httpx.post(header.strip("<>"), data={"List-Unsubscribe": "One-Click"}, timeout=30)
    assert answer.status_code == 200, answer.text
    rig.optouts[address] = time.time()


def poison_row(rig: Rig, others: int = 20) -> Counts:
    """One cart whose line title holds a NUL byte, written straight into the carts table,
    among others: the others must still get their messages."""
    poison = rig.seed_carts(1, "poison", sms=False)[0]
    with rig.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE carts SET lines = :lines WHERE token = :token"
                if rig.backend == "sqlite"
                else "UPDATE carts SET lines = CAST(:lines AS json) WHERE token = :token"
            ),
            {
                "lines": '[{"title": "Wool\\u0000socks", "quantity": 1, "price": "60.00"}]',
                "token": poison,
            },
        )
    healthy = rig.seed_carts(others, "healthy", sms=False)
    rig.start_worker("w1")
    wanted = {f"{token}@example.com" for token in healthy}
    # Counted below if it never happens: the healthy carts left waiting are lost.
    with contextlib.suppress(AssertionError):
        wait_until(
            lambda: wanted <= {item.to for item in rig.provider.taken()},
            20,
            "the healthy carts' first emails",
        )
    counts = rig.counts("poison_row", rig.settle(10))
    counts.extra["healthy_reached"] = len(wanted & {item.to for item in rig.provider.taken()})
    return counts


SCENARIOS: dict[str, Callable[..., Counts]] = {
    "kill9": kill9,
    "kill_mid_call": kill_mid_call,
    "sigstop": sigstop,
    "provider_hang": provider_hang,
    "provider_fail_in_turn": provider_fail_in_turn,
    "database_outage": database_outage,
    "concurrent_events": concurrent_events,
    "skewed_events": skewed_events,
    "poison_row": poison_row,
}
