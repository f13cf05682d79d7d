"""The fault rig: real `cartback` processes against a database and a fault provider, and the
invariants checked afterwards from what the provider took and what the database says.

A rig runs a short flow (two emails and an SMS, seconds apart), seeds carts through the
services as a shop would report them, and lets a scenario kill, stop or starve the workers.
`Rig.counts` then checks, from the provider's history and the rows:
- ``duplicates``: provider acceptances beyond the first for one (cart, step);
- ``after_optout``: messages the provider took more than a second after an opt-out was made;
- ``quiet``: SMS taken inside the quiet hours the rule packs set for the number's zone;
- ``lost``: an accepted event with no cart row or never applied (still in the inbox, or kept
  there with an error), an enrollment overdue or ended without a decision, a message due but
  still pending, claimed or sending, or recorded `sent` that the provider never took;
- ``unknown``: messages whose fate cartback could not learn (never resent).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from sqlalchemy import Engine, func, select

from cartback.services import admin
from cartback.services.flows import FlowRegistry
from cartback.services.ingest import ingest
from cartback.store import tables as t
from cartback.store.db import make_engine
from tests.support.events import checkout
from tests.support.procs import cartback_env, free_port, run_cartback, start_cartback
from tests.support.provider import FaultProvider, running_provider

RULES = Path(__file__).resolve().parents[2] / "src/cartback/core/rules"
FLOW_NAME = "faults"
# Offsets from abandonment (1 s after the checkout): the whole flow is over 8 s after a checkout.
FLOW = """\
name: faults
abandon_after: 1s
exit_on: [order_placed, cart_emptied, opted_out]
holdout: 0
steps:
  - id: email1
    at: 1s
    channel: email
    when: contact.email_consent
    subject: "{{ first_name }}, your cart"
    body: "Hi {{ first_name }}, {% for item in items %}{{ item.title }} {% endfor %}: {{ link }}"
  - id: email2
    at: 4s
    channel: email
    when: contact.email_consent
    subject: "Still yours, {{ first_name }}"
    body: "Your cart at {{ brand }} is saved: {{ link }}"
  - id: sms1
    at: 7s
    channel: sms
    when: contact.sms_consent
    body: "{{ brand }}: {{ first_name }}, your cart is saved: {{ link }}"
"""
# Numbers whose zone is in daytime when the suite runs, so the SMS step is sent rather than held
# for the morning: (E.164 prefix, digits after it, zone, rule pack for its quiet hours).
NUMBERS = (
    ("+4740", 6, "Europe/Oslo", "no"),
    ("+819012", 6, "Asia/Tokyo", "default"),
    ("+55119", 8, "America/Sao_Paulo", "default"),
    ("+6421", 7, "Pacific/Auckland", "default"),
)
FLOW_SPAN = timedelta(seconds=10)
LEASE_SECONDS = 6
SEND_TIMEOUT_SECONDS = 2
OPTOUT_MARGIN_S = 1.0
PROVIDER_IDLE_S = 2.0


@dataclass
class Counts:
    scenario: str
    backend: str
    seed: int
    sent: int = 0
    duplicates: int = 0
    after_optout: int = 0
    quiet: int = 0
    lost: int = 0
    unknown: int = 0
    settle_s: float = 0.0
    extra: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        extra = "".join(f" {key}={value}" for key, value in sorted(self.extra.items()))
        return (
            f"faults[{self.scenario}/{self.backend}] seed={self.seed} sent={self.sent} "
            f"duplicates={self.duplicates} after_optout={self.after_optout} quiet={self.quiet} "
            f"lost={self.lost} unknown={self.unknown}{extra} settled_in={self.settle_s:.1f}s"
        )

    def assert_promises(self) -> None:
        assert self.sent > 0, self.line()
        assert (self.duplicates, self.after_optout, self.quiet, self.lost) == (0, 0, 0, 0), (
            self.line()
        )


# Every summary line of the run, for the terminal summary and the soak, and the counts behind
# them for the total line.
SUMMARIES: list[str] = []
RUNS: list[Counts] = []


def total_line(runs: list[Counts]) -> str:
    """One line for the whole suite: what its promises are measured by."""
    return (
        f"faults: runs={len(runs)} sent={sum(r.sent for r in runs)} "
        f"duplicates={sum(r.duplicates for r in runs)} "
        f"after_optout={sum(r.after_optout for r in runs)} "
        f"quiet={sum(r.quiet for r in runs)} lost={sum(r.lost for r in runs)} "
        f"unknown={sum(r.unknown for r in runs)}"
    )


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> float:
    """Poll `check` until it holds; the seconds it took. AssertionError after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def daytime_number(at: datetime, index: int) -> str:
    for prefix, digits, zone, _pack in NUMBERS:
        if 10 <= at.astimezone(ZoneInfo(zone)).hour < 18:
            return f"{prefix}{index % 10**digits:0{digits}d}"
    raise AssertionError("no daytime zone among NUMBERS; extend it")


def _sms_window(pack: str) -> tuple[int, int]:
    """The (start, end) minutes of the day when the pack allows SMS, from its quiet-hours rule."""
    data = yaml.safe_load((RULES / f"{pack}.yaml").read_text())
    for rule in data["rules"]:
        if rule.get("name", "").endswith("quiet_hours") and "window" in rule:
            start, end = rule["window"]["mon-sun"].split("-")
            return _minutes(start), _minutes(end)
    raise AssertionError(f"rule pack {pack} has no quiet hours")


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def in_quiet_hours(phone: str, at: float) -> bool:
    for prefix, _digits, zone, pack in NUMBERS:
        if phone.startswith(prefix):
            local = datetime.fromtimestamp(at, ZoneInfo(zone))
            start, end = _sms_window(pack)
            return not start <= local.hour * 60 + local.minute < end
    return False


@dataclass
class Rig:
    backend: str
    database_url: str
    tmp: Path
    provider: FaultProvider
    seed: int
    env: dict[str, str]
    engine: Engine
    rng: random.Random
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    accepted: list[str] = field(default_factory=list)
    optouts: dict[str, float] = field(default_factory=dict)
    web_base: str | None = None
    _starts: Counter[str] = field(default_factory=Counter)

    # --- processes -----------------------------------------------------------------------------

    def start_worker(self, name: str, **extra: str) -> subprocess.Popen[bytes]:
        self._starts[name] += 1
        log = self.tmp / f"{name}.{self._starts[name]}.log"
        process = start_cartback(["worker"], {**self.env, **extra}, self.tmp, log)
        self.procs[name] = process
        return process

    def wait_running(self, name: str, timeout: float = 60) -> None:
        log = self.tmp / f"{name}.{self._starts[name]}.log"
        wait_until(
            lambda: log.exists() and "worker running" in log.read_text(errors="replace"),
            timeout,
            f"{name} to start",
        )

    def start_web(self) -> str:
        port = int(self.env["CARTBACK_PORT"])
        self._starts["web"] += 1
        self.procs["web"] = start_cartback(["web"], self.env, self.tmp, self.tmp / "web.log")
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _healthy(base), 60, "the web process to answer /healthz")
        self.web_base = base
        return base

    def signal(self, name: str, signum: int) -> None:
        process = self.procs[name]
        if process.poll() is None:
            os.kill(process.pid, signum)
        if signum == signal.SIGKILL:
            process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.procs.values():
            if process.poll() is None:
                # A stopped process must run again to hear its kill.
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
                process.wait(timeout=10)

    # --- shop events ---------------------------------------------------------------------------

    def seed_carts(
        self,
        count: int,
        prefix: str,
        *,
        sms: bool = True,
        lines: list[dict[str, Any]] | None = None,
        title: str = "Wool socks",
    ) -> list[str]:
        """`count` abandoned checkouts reported now, each with SMS and email consent."""
        now = datetime.now(UTC)
        start = len(self.accepted)
        tokens = [f"{prefix}-{start + i}" for i in range(count)]
        events = [
            checkout(
                token,
                now,
                phone=daytime_number(now, start + i) if sms else None,
                email=f"{token}@example.com",
                sms=sms,
                title=title,
            )
            for i, token in enumerate(tokens)
        ]
        # The registry reads in a transaction of its own: SQLite allows one writer at a time.
        flow = FlowRegistry(self.engine).current(FLOW_NAME)
        with self.engine.begin() as conn:
            store = admin.store_by_slug(conn, "demo")
            assert store is not None
            ingest(conn, store, flow, events, now)
        self.accepted.extend(tokens)
        return tokens

    def taken_for(self, address: str) -> list[Any]:
        return [item for item in self.provider.taken() if item.to == address]

    # --- afterwards ----------------------------------------------------------------------------

    def busy(self) -> bool:
        """Something is due, or soon due, and not done: an enrollment whose step is overdue or
        due within the flow's span, or a message due or in flight. (A step held for the
        morning by quiet hours is not soon due.)"""
        now = datetime.now(UTC) - timedelta(seconds=1)
        e, o = t.enrollments.c, t.outbox.c
        with self.engine.connect() as conn:
            overdue = conn.execute(
                select(func.count())
                .select_from(t.enrollments)
                .where(e.state == "active", e.wake_at <= now + FLOW_SPAN)
            ).scalar_one()
            due = conn.execute(
                select(func.count())
                .select_from(t.outbox)
                .where(
                    o.status.in_(["claimed", "sending"])
                    | ((o.status == "pending") & (o.available_at <= now))
                )
            ).scalar_one()
            # Events accepted by the web process and not yet applied by a worker.
            unapplied = conn.execute(
                select(func.count())
                .select_from(t.inbox)
                .where(t.inbox.c.applied_at.is_(None), t.inbox.c.error.is_(None))
            ).scalar_one()
        return bool(overdue or due or unapplied)

    def settle(self, timeout: float = 60) -> float:
        """Wait until nothing is overdue (progress after the fault); the seconds it took, or
        the timeout if it never settled (then `counts` reports what is stuck as lost)."""

        # A worker resumed after a stall may still hold messages in memory: nothing is settled
        # until the provider, too, has heard nothing for a while.
        def settled() -> bool:
            return self.provider.idle_for() >= PROVIDER_IDLE_S and not self.busy()

        try:
            return wait_until(settled, timeout, "the workers to catch up", 0.25)
        except AssertionError:
            return timeout

    def counts(self, scenario: str, settle_s: float) -> Counts:
        counts = Counts(scenario, self.backend, self.seed, settle_s=settle_s)
        taken = self.provider.taken()
        keys = {item.key for item in taken}
        o, e, c = t.outbox.c, t.enrollments.c, t.carts.c
        late = datetime.now(UTC) - timedelta(seconds=1)
        with self.engine.connect() as conn:
            messages = {
                f"cb-{row.id}": row
                for row in conn.execute(
                    select(o.id, o.status, o.step_id, o.available_at, e.cart_id).join(
                        t.enrollments, e.id == o.enrollment_id
                    )
                )
            }
            carts = set(conn.execute(select(c.token)).scalars())
            explained = set(conn.execute(select(t.decisions.c.enrollment_id).distinct()).scalars())
            enrollments = conn.execute(select(e.id, e.state, e.wake_at)).all()
            inbox = conn.execute(
                select(t.inbox.c.applied_at, t.inbox.c.error).where(t.inbox.c.applied_at.is_(None))
            ).all()
        per_step = Counter(
            (messages[item.key].cart_id, messages[item.key].step_id)
            if item.key in messages
            else item.key
            for item in taken
        )
        counts.sent = len(taken)
        counts.duplicates = sum(n - 1 for n in per_step.values() if n > 1)
        counts.after_optout = sum(
            1
            for item in taken
            if item.to in self.optouts and item.at > self.optouts[item.to] + OPTOUT_MARGIN_S
        )
        counts.quiet = sum(
            1 for item in taken if item.channel == "sms" and in_quiet_hours(item.to, item.at)
        )
        # Each kind of loss counted apart, so a failing run says which promise broke.
        lost: Counter[str] = Counter()
        lost["no_cart"] = sum(1 for token in self.accepted if token not in carts)
        for row in enrollments:
            if row.state == "active":
                lost["overdue_enrollment"] += row.wake_at is not None and row.wake_at <= late
            else:
                lost[f"ended_unexplained_{row.state}"] += row.id not in explained
        for key, row in messages.items():
            if row.status in ("claimed", "sending"):
                lost[f"left_{row.status}"] += 1
            elif row.status == "pending" and row.available_at <= late:
                lost["overdue_pending"] += 1
            elif row.status == "sent" and key not in keys:
                lost["sent_not_taken"] += 1
        # An accepted event never applied: still waiting, or kept with an error.
        for row in inbox:
            lost["inbox_failed" if row.error is not None else "inbox_unapplied"] += 1
        counts.lost = sum(lost.values())
        counts.extra.update({f"lost_{kind}": n for kind, n in lost.items() if n})
        counts.unknown = sum(1 for row in messages.values() if row.status == "unknown")
        return counts


def _healthy(base: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def worker_env(
    database_url: str, provider: FaultProvider, flows: Path, **extra: str
) -> dict[str, str]:
    return cartback_env(
        database_url,
        CARTBACK_SMS_CHANNEL="webhook",
        CARTBACK_EMAIL_CHANNEL="webhook",
        CARTBACK_SMS_WEBHOOK_URL=provider.url,
        CARTBACK_EMAIL_WEBHOOK_URL=provider.url,
        CARTBACK_FLOWS_DIR=str(flows),
        CARTBACK_LEASE_SECONDS=str(LEASE_SECONDS),
        CARTBACK_SEND_TIMEOUT_SECONDS=str(SEND_TIMEOUT_SECONDS),
        CARTBACK_WORKER_POLL_SECONDS="0.1",
        CARTBACK_DISPATCH_CONCURRENCY="4",
        **extra,
    )


@contextmanager
def rig(backend: str, database_url: str, tmp: Path, seed: int) -> Iterator[Rig]:
    """A migrated database with the demo store on the `faults` flow, a provider, no workers."""
    flows = tmp / "flows"
    flows.mkdir(exist_ok=True)
    (flows / f"{FLOW_NAME}.yaml").write_text(FLOW)
    with running_provider() as provider:
        port = free_port()
        env = worker_env(
            database_url,
            provider,
            flows,
            CARTBACK_PORT=str(port),
            CARTBACK_BASE_URL=f"http://127.0.0.1:{port}",
        )
        for command in (["migrate"], ["demo"]):
            done = run_cartback(command, env, tmp)
            assert done.returncode == 0, done.stderr
        engine = make_engine(database_url)
        with engine.begin() as conn:
            conn.execute(t.stores.update().values(flow_name=FLOW_NAME))
        made = Rig(
            backend=backend,
            database_url=database_url,
            tmp=tmp,
            provider=provider,
            seed=seed,
            env=env,
            engine=engine,
            rng=random.Random(seed),
        )
        try:
            yield made
        finally:
            made.stop_all()
            engine.dispose()
