"""The command line. Its summary in `--help` is made from the commands registered (see the end)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cartback import cli_help
from cartback.app import App, build_app, register_flows
from cartback.config import ConfigError, Settings, load_settings
from cartback.core.flows import FlowError, load_flow
from cartback.core.model import Store, format_duration, parse_duration
from cartback.dashboard_cli import dashboard_cli

cli_help.install()
cli = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
flows_cli = typer.Typer(no_args_is_help=True, help="Check flow files and run carts through them.")
store_cli = typer.Typer(no_args_is_help=True, help="Stores and their API keys.")
consent_cli = typer.Typer(no_args_is_help=True, help="Shoppers' consent ledger.")
discounts_cli = typer.Typer(no_args_is_help=True, help="Pools of single-use discount codes.")
enrollments_cli = typer.Typer(
    no_args_is_help=True, help="Carts in a flow: resume one the timer parked after failures."
)
cli.add_typer(flows_cli, name="flows")
cli.add_typer(store_cli, name="store")
cli.add_typer(consent_cli, name="consent")
cli.add_typer(discounts_cli, name="discounts")
cli.add_typer(enrollments_cli, name="enrollments")
shops_cli = typer.Typer(
    no_args_is_help=True, help="Shop platform connections, webhook deliveries and replays."
)
contacts_cli = typer.Typer(no_args_is_help=True, help="Shoppers' data: erasure and export.")
import_cli = typer.Typer(no_args_is_help=True, help="Import checkouts from CSV files.")
shopify_cli = typer.Typer(no_args_is_help=True, help="Shopify through its Admin API.")
shops_cli.add_typer(shopify_cli, name="shopify")
magento_cli = typer.Typer(no_args_is_help=True, help="Magento 2 through its REST API.")
shops_cli.add_typer(magento_cli, name="magento")
cli.add_typer(shops_cli, name="shops")
cli.add_typer(contacts_cli, name="contacts")
channels_cli = typer.Typer(
    no_args_is_help=True,
    help="Per-store SMS and email providers; secrets are references (env:NAME, file:/path).",
)
cli.add_typer(channels_cli, name="channels")
cli.add_typer(import_cli, name="import")
cli.add_typer(dashboard_cli, name="dashboard")
report_cli = typer.Typer(
    help="What each flow, step, variant and channel recovered, cost and provoked."
)
cli.add_typer(report_cli, name="report")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DEMO_KEY = "cbk_demo_local_only"
PLATFORMS = ("generic", "shopify", "woocommerce", "bigcommerce", "magento")
USAGE_ERROR = 2


def fail(message: str, code: int = USAGE_ERROR) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    return typer.Exit(code)


def settings_or_exit(**overrides: object) -> Settings:
    try:
        return load_settings(None, **overrides)
    except ConfigError as error:
        raise fail(f"configuration: {error}") from None


@contextmanager
def running_app(**overrides: object) -> Iterator[App]:
    app = build_app(settings_or_exit(**overrides))
    try:
        yield app
    finally:
        app.close()


def _flows_or_exit(app: App) -> None:
    try:
        register_flows(app)
    except FlowError as error:
        raise fail(str(error)) from None


@cli.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from cartback.store.migrate import current_revision, head_revision, upgrade

    with running_app() as app:
        before = current_revision(app.engine)
        upgrade(app.engine)
        where = _safe_url(app.settings.database_url)
    head = head_revision()
    if before is None:
        out.print(f"created the schema (revision {head}) in a new database ({where})")
    elif before == head:
        out.print(f"database is already at the latest schema (revision {head}) ({where})")
    else:
        out.print(f"upgraded the schema from revision {before} to {head} ({where})")


@cli.command()
def demo() -> None:
    """Create the demo store (flow `demo`, steps seconds apart) with a local-only API key."""
    from cartback.services import admin

    with running_app() as app:
        _flows_or_exit(app)
        now = app.clock.now()
        with app.engine.begin() as conn:
            if admin.store_by_slug(conn, "demo") is None:
                store = admin.create_store(
                    conn,
                    admin.NewStore(
                        slug="demo",
                        name="Demo Outfitters",
                        brand="DemoShop",
                        flow_name="demo",
                        default_zone="Europe/Oslo",
                        currency="USD",
                        domains=("shop.example",),
                        postal_address="1 Demo Street, 0150 Oslo, Norway",
                        support_contact="help@shop.example",
                    ),
                    now,
                )
                admin.issue_api_key(conn, store.id, now, label="demo", key=DEMO_KEY)
        out.print(f"demo store ready; API key: {DEMO_KEY} (for local use only)")


@store_cli.command("create")
def store_create(
    slug: str,
    name: Annotated[str, typer.Option(help="The store's name")],
    brand: Annotated[str, typer.Option(help="Brand shown at the start of each SMS")],
    flow: Annotated[str, typer.Option(help="Name of the flow new carts enter")] = "default",
    zone: Annotated[str, typer.Option(help="Default IANA time zone")] = "UTC",
    locale: str = "en",
    currency: str = "USD",
    domain: Annotated[
        list[str] | None, typer.Option(help="Store domain; links may only lead here (repeatable)")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Postal address; marketing email needs one")
    ] = None,
    support: Annotated[str | None, typer.Option(help="Support contact for HELP replies")] = None,
    platform: Annotated[
        str, typer.Option(help="generic, shopify, woocommerce, bigcommerce or magento")
    ] = "generic",
) -> None:
    """Create a store and print its first API key (shown once)."""
    from cartback.services import admin

    if not domain:
        raise fail(
            "--domain: give at least one; tracked links may only lead to the store's domains"
        )
    if platform not in PLATFORMS:
        raise fail(f"--platform: one of {', '.join(PLATFORMS)}, not {platform!r}")
    with running_app() as app:
        _flows_or_exit(app)
        now = app.clock.now()
        with app.engine.begin() as conn:
            if admin.store_by_slug(conn, slug) is not None:
                raise fail(f"a store with slug {slug!r} exists")
            store = admin.create_store(
                conn,
                admin.NewStore(
                    slug=slug,
                    name=name,
                    brand=brand,
                    flow_name=flow,
                    default_zone=zone,
                    default_locale=locale,
                    currency=currency,
                    domains=tuple(domain),
                    postal_address=address,
                    support_contact=support,
                    platform=platform,
                ),
                now,
            )
            key = admin.issue_api_key(conn, store.id, now)
        out.print(f"store {slug} created; API key (shown once): {key}")


@store_cli.command("policy")
def store_policy_command(
    slug: str,
    file: Annotated[
        Path | None, typer.Argument(help="Policy YAML; omit to show the current")
    ] = None,
) -> None:
    """Set a store's send policy: cooldowns, caps, stricter jurisdiction rules, and the products
    no discount covers."""
    from cartback.services import admin

    settings = _policy_file_or_exit(file) if file is not None else None
    with running_app() as app, app.engine.begin() as conn:
        store = admin.store_by_slug(conn, slug)
        if store is None:
            raise fail(f"no store with slug {slug!r}")
        if settings is None:
            out.print_json(data=store.policy or {})
            return
        admin.set_store_policy(conn, store.id, settings)
    out.print(f"policy of {slug} updated from {file}")


FLOW_ACTIONS = ("list", "set", "remove", "window")


@store_cli.command("flows")
def store_flows_command(
    slug: str,
    action: Annotated[str, typer.Argument(help="list, set, remove or window")] = "list",
    name: Annotated[
        str | None, typer.Argument(help="The flow's name (set, remove); the window (window)")
    ] = None,
    priority: Annotated[int, typer.Option(help="1 is tried first")] = 1,
    trigger: Annotated[
        str,
        typer.Option(help="The event type that enrolls a cart: checkout.updated or cart.updated"),
    ] = "checkout.updated",
) -> None:
    """The flows a store runs, with their triggers and priorities, and its suppression window:
    `list`; `set NAME --priority N --trigger TYPE`; `remove NAME`; `window 3d`."""
    from cartback.services import admin, store_flows
    from cartback.services.store_flows import Assignment, AssignmentError

    if action not in FLOW_ACTIONS:
        raise fail(f"ACTION: one of {', '.join(FLOW_ACTIONS)}, not {action!r}")
    if action != "list" and name is None:
        raise fail(f"{action} needs {'a duration like 3d' if action == 'window' else 'NAME'}")
    with running_app() as app:
        _flows_or_exit(app)
        with app.engine.begin() as conn:
            store = admin.store_by_slug(conn, slug)
            if store is None:
                raise fail(f"no store with slug {slug!r}")
            now = app.clock.now()
            try:
                if action == "set" and name is not None:
                    wanted = Assignment(name, priority, trigger)
                    store_flows.assign(conn, app.registry, store, wanted, now)
                elif action == "remove" and name is not None:
                    store_flows.unassign(conn, store, name, now)
                elif action == "window" and name is not None:
                    store_flows.set_suppression(conn, store.id, store_flows.parse_window(name))
            except AssignmentError as error:
                raise fail(f"{error.field}: {error.message}") from None
            listed = store_flows.assignments(conn, store)
            window = store_flows.suppression(conn, store.id)
    table = Table(title=f"flows of {slug} (suppression window {format_duration(window)})")
    for column in ("priority", "flow", "trigger"):
        table.add_column(column)
    for assigned in listed:
        table.add_row(str(assigned.priority), assigned.flow_name, assigned.trigger)
    out.print(table)


def _policy_file_or_exit(file: Path) -> dict[str, Any]:
    from cartback.core.storepolicy import StorePolicyError, parse_store_policy_text

    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise fail(f"{file}:1: file: cannot read: {error}") from None
    try:
        return parse_store_policy_text(text, str(file))
    except StorePolicyError as error:
        for issue in error.issues:
            err.print(str(issue), highlight=False, markup=False)
        raise typer.Exit(USAGE_ERROR) from None


@store_cli.command("support-webhook")
def store_support_webhook(
    slug: str,
    url: Annotated[str | None, typer.Argument(help="http(s) URL; omit to clear")] = None,
) -> None:
    """Where replies that are not STOP/START/HELP are forwarded (a JSON POST)."""
    from urllib.parse import urlsplit

    from sqlalchemy import update

    from cartback.services import admin
    from cartback.store import tables as t

    if url is not None and (
        urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc
    ):
        raise fail(f"url: must be an http(s) URL, got {url!r}")
    with running_app() as app, app.engine.begin() as conn:
        store = admin.store_by_slug(conn, slug)
        if store is None:
            raise fail(f"no store with slug {slug!r}")
        conn.execute(
            update(t.stores).where(t.stores.c.id == store.id).values(support_webhook_url=url)
        )
    out.print(f"support webhook of {slug}: {url or 'none'}")


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise fail(f"{flag} {item!r}: expected NAME=VALUE")
        pairs[name.strip()] = value
    return pairs


@channels_cli.command("set")
def channels_set(
    store: Annotated[str, typer.Argument(help="Store slug")],
    kind: Annotated[str, typer.Argument(help="sms or email")],
    provider: Annotated[str, typer.Argument(help="Provider name, e.g. twilio")],
    option: Annotated[
        list[str] | None, typer.Option(help="NAME=VALUE, stored as given (repeatable)")
    ] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option(help="NAME=env:VARIABLE or NAME=file:/path, never the value (repeatable)"),
    ] = None,
) -> None:
    """Choose a store's provider for one kind of message, with its options and secrets."""
    from cartback.core.model import Channel
    from cartback.services import admin
    from cartback.services.providers import ProviderSettingsError, set_provider

    if kind not in ("sms", "email"):
        raise fail(f"kind: sms or email, not {kind!r}")
    options, secrets = _pairs(option, "--option"), _pairs(secret, "--secret")
    with running_app() as app, app.engine.begin() as conn:
        found = admin.store_by_slug(conn, store)
        if found is None:
            raise fail(f"no store with slug {store!r}")
        try:
            version = set_provider(
                conn,
                store_id=found.id,
                kind=Channel(kind),
                provider=provider,
                options=options,
                secrets=secrets,
                now=app.clock.now(),
            )
        except ProviderSettingsError as error:
            raise fail(str(error)) from None
    out.print(f"{store} sends {kind} through {provider} (settings version {version})")


@channels_cli.command("remove")
def channels_remove(
    store: Annotated[str, typer.Argument(help="Store slug")],
    kind: Annotated[str, typer.Argument(help="sms or email")],
) -> None:
    """Go back to the global channel for one kind of message."""
    from cartback.core.model import Channel
    from cartback.services import admin
    from cartback.services.providers import remove_provider

    if kind not in ("sms", "email"):
        raise fail(f"kind: sms or email, not {kind!r}")
    with running_app() as app, app.engine.begin() as conn:
        found = admin.store_by_slug(conn, store)
        if found is None:
            raise fail(f"no store with slug {store!r}")
        removed = remove_provider(conn, found.id, Channel(kind))
    out.print(f"{store} {kind}: " + ("global channel again" if removed else "had no provider"))


@channels_cli.command("list")
def channels_list() -> None:
    """Each store's providers, options, secret references (masked) and callback URLs.
    Exit code 2 when a secret does not resolve here, naming it."""
    from cartback.services.providers import (
        SecretUnavailable,
        callback_urls,
        list_providers,
        resolve_secret,
    )

    with running_app() as app, app.engine.connect() as conn:
        found = list_providers(conn)
        settings = app.settings
    table = Table(title="store providers")
    for column in ("store", "kind", "provider", "options", "secrets", "callbacks"):
        table.add_column(column, overflow="fold")
    broken: list[str] = []
    for item in found:
        secrets = []
        for name, ref in sorted(item.secrets.items()):
            try:
                resolve_secret(name, ref, os.environ)
                state = "ok"
            except SecretUnavailable as error:
                state = "UNRESOLVED"
                broken.append(f"{item.store_slug} {item.kind} {item.provider}: {error}")
            secrets.append(f"{name}={ref.partition(':')[0]}:*** ({state})")
        status_url, inbound_url = callback_urls(settings.base_url, item.store_slug, item.provider)
        table.add_row(
            item.store_slug,
            str(item.kind),
            item.provider,
            " ".join(f"{k}={v}" for k, v in sorted(item.options.items())),
            " ".join(secrets),
            f"{status_url}\n{inbound_url}",
        )
    out.print(f"default: sms={settings.sms_channel} email={settings.email_channel}")
    out.print(table if found else "no store has a provider of its own")
    if broken:
        for line in broken:
            err.print(f"[red]error:[/red] {line}", highlight=False, markup=True)
        raise typer.Exit(USAGE_ERROR)


@store_cli.command("key")
def store_key(slug: str, label: str = "default") -> None:
    """Issue another API key for a store."""
    from cartback.services import admin

    with running_app() as app:
        now = app.clock.now()
        with app.engine.begin() as conn:
            store = admin.store_by_slug(conn, slug)
            if store is None:
                raise fail(f"no store with slug {slug!r}")
            key = admin.issue_api_key(conn, store.id, now, label=label)
        out.print(f"API key for {slug} (shown once): {key}")


@cli.command()
def why(
    cart_token: Annotated[str, typer.Argument(help="The cart (checkout) token")],
    store: Annotated[
        str | None, typer.Option(help="Store slug, when several share a token")
    ] = None,
) -> None:
    """Why did this cart get (or not get) each message? Every decision with its rule."""
    from sqlalchemy import select

    from cartback.store import tables as t

    with running_app() as app, app.engine.connect() as conn:
        query = (
            select(t.carts.c.id, t.stores.c.slug)
            .join(t.stores, t.stores.c.id == t.carts.c.store_id)
            .where(t.carts.c.token == cart_token)
        )
        if store:
            query = query.where(t.stores.c.slug == store)
        carts = conn.execute(query).all()
        if not carts:
            raise fail(f"no cart with token {cart_token!r}")
        if len(carts) > 1:
            slugs = ", ".join(row.slug for row in carts)
            raise fail(f"several stores have cart {cart_token!r} ({slugs}); pass --store")
        d = t.decisions.c
        rows = conn.execute(
            select(d.at, d.step_id, d.outcome, d.rule, d.reason)
            .where(d.cart_id == carts[0].id)
            .order_by(d.at, d.id)
        ).all()
    table = Table(title=f"cart {cart_token} ({carts[0].slug})")
    for column in ("time (UTC)", "step", "outcome", "rule", "reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row.at.strftime("%Y-%m-%d %H:%M:%S"),
            row.step_id or "",
            row.outcome,
            row.rule or "",
            row.reason,
        )
    out.print(table if rows else "no decisions yet: the cart's first step is not due")


@enrollments_cli.command("resume")
def enrollments_resume(
    enrollment_id: Annotated[int, typer.Argument(help="The id `cartback why` names")],
) -> None:
    """Wake a parked enrollment now; if it fails again it is retried, then parked again."""
    from cartback.services.tick import resume

    with running_app() as app:
        with app.engine.begin() as conn:
            resumed = resume(conn, enrollment_id, app.clock.now())
        if not resumed:
            raise fail(f"no parked enrollment with id {enrollment_id}")
    out.print(f"enrollment {enrollment_id} resumed: the timer runs it on its next tick")


@consent_cli.command("show")
def consent_show(
    who: Annotated[str, typer.Argument(metavar="PHONE|EMAIL", help="E.164 phone or email")],
) -> None:
    """A shopper's consent: the current state per channel and the whole ledger."""
    from cartback.services import consent as consent_service

    key = who.strip().lower() if "@" in who else who.strip().replace(" ", "")
    with running_app() as app, app.engine.connect() as conn:
        found = consent_service.find_contact(conn, key)
        if not found:
            raise fail(f"no contact with phone or email {who!r}")
        histories = [consent_service.contact_history(conn, s, c) for s, c in found]
    for history in histories:
        assert history is not None
        out.print(
            f"[bold]contact {history['contact_id']}[/bold] {history['phone'] or ''} "
            f"{history['email'] or ''}"
        )
        for channel, state in history["current"].items():
            flags = [
                name
                for name in ("marketing", "cart_reminders", "double_opt_in", "suppressed")
                if state[name]
            ]
            out.print(f"  {channel}: {', '.join(flags) or 'nothing granted'}")
        table = Table()
        # The ledger's order is the receive time; the shop's own time is shown as evidence.
        columns = ("received", "shop time", "channel", "purpose", "granted", "source")
        for column in (*columns, "effective", "note"):
            table.add_column(column, overflow="fold")
        for entry in history["history"]:
            table.add_row(
                str(entry["received_at"])[:19],
                str(entry["time"])[:19],
                str(entry["channel"]),
                str(entry["purpose"]),
                "yes" if entry["granted"] else "no",
                str(entry["source"]),
                "yes" if entry["effective"] else "no",
                str(entry.get("note") or ""),
            )
        out.print(table)


@discounts_cli.command("load")
def discounts_load(
    pool: Annotated[str, typer.Argument(help="Pool name, as flows name it in `discount.pool`")],
    file: Annotated[Path, typer.Argument(help="Text file: one code per line, # comments")],
    store: Annotated[str, typer.Option(help="Store slug")],
) -> None:
    """Add codes to a pool; codes already in it are left as they are."""
    from cartback.services import admin
    from cartback.services.discounts import load_pool

    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise fail(f"{file}:1: file: cannot read: {error}") from None
    for number, line in enumerate(lines, start=1):
        code = line.split("#", 1)[0].strip()
        if code and (len(code) > 64 or any(char.isspace() for char in code)):
            raise fail(f"{file}:{number}: code: {code[:70]!r} must be one word of 64 characters")
    with running_app() as app, app.engine.begin() as conn:
        found = admin.store_by_slug(conn, store)
        if found is None:
            raise fail(f"--store: no store with slug {store!r}")
        result = load_pool(conn, found.id, pool, lines, app.clock.now())
    out.print(f"pool {pool}: {result.added} codes added, {result.already_there} already there")


@discounts_cli.command("list")
def discounts_list(store: Annotated[str, typer.Option(help="Store slug")]) -> None:
    """Each pool with its unused and used codes."""
    from cartback.services import admin
    from cartback.services.discounts import pool_sizes

    with running_app() as app, app.engine.connect() as conn:
        found = admin.store_by_slug(conn, store)
        if found is None:
            raise fail(f"--store: no store with slug {store!r}")
        sizes = pool_sizes(conn, found.id)
    table = Table()
    for column in ("pool", "unused", "used"):
        table.add_column(column)
    for pool, (unused, used) in sorted(sizes.items()):
        table.add_row(pool, str(unused), str(used))
    out.print(table if sizes else "no discount pools")


@discounts_cli.command("prune")
def discounts_prune(
    api_base: Annotated[
        str | None, typer.Option(help="The shops' API base URL; default https://SHOP_DOMAIN")
    ] = None,
) -> None:
    """Delete from the shops the per-cart codes that expired unused, and mark them removed.
    Running it again changes nothing; a code the shop refuses is tried again next time."""
    from cartback.services import unique_codes

    with running_app() as app:
        stats = unique_codes.prune_expired(
            app.engine, app.clock.now(), unique_codes.shop_issuers(api_base, app.clock.now)
        )
    for line in stats.failures:
        err.print(f"failed {line}", highlight=False, markup=False)
    out.print(
        f"{stats.removed} expired codes removed, {stats.gone} already gone, {stats.failed} failed"
    )
    if stats.failed:
        raise typer.Exit(1)


SECRET_HELP = "env:NAME or file:PATH; the secret itself is never stored"


@shops_cli.command("connect")
def shops_connect(
    platform: Annotated[
        str,
        typer.Argument(help="shopify, woocommerce, cartflows, bigcommerce, generic or magento"),
    ],
    store: Annotated[str, typer.Option(help="Store slug")],
    shop_domain: Annotated[str, typer.Option(help="The shop's domain, e.g. x.myshopify.com")],
    secret: Annotated[
        str | None,
        typer.Option(help=f"Webhook signing secret (not for magento): {SECRET_HELP}"),
    ] = None,
    previous_secret: Annotated[
        str | None,
        typer.Option(help=f"The secret before a rotation, still accepted: {SECRET_HELP}"),
    ] = None,
    api_token: Annotated[
        str | None, typer.Option(help=f"Admin API access token: {SECRET_HELP}")
    ] = None,
    mapping: Annotated[
        Path | None,
        typer.Option(help="generic only: a YAML or JSON file mapping cartback's fields to paths"),
    ] = None,
) -> None:
    """Connect a store to its shop: webhooks to /hooks/shop/PLATFORM/STORE are then accepted."""
    from cartback.services import admin
    from cartback.services import shops as shop_service
    from cartback.shops.registry import ADAPTERS, POLLED

    platforms = sorted([*ADAPTERS, *POLLED])
    if platform not in platforms:
        raise fail(f"PLATFORM: one of {', '.join(platforms)}, not {platform!r}")
    if platform in POLLED:
        # Polled, not pushed: no webhook secret; the API token stands in its place.
        if api_token is None:
            raise fail(f"--api-token: {platform} is polled through its API and needs a token")
        secret = secret or api_token
    elif secret is None:
        raise fail(f"--secret: {platform} webhooks need their signing secret")
    domain = shop_domain.strip().lower()
    # BigCommerce's may be its API root ending in the store hash; Magento's is its REST root.
    api_root = platform in ("bigcommerce", "magento") and domain.startswith(("https://", "http://"))
    if not domain or " " in domain or ("/" in domain and not api_root):
        raise fail(
            f"--shop-domain: a host name such as example.myshopify.com (BigCommerce: the store "
            f"hash or the API root URL; Magento: the REST root URL), not {shop_domain!r}"
        )
    try:
        refs = [
            shop_service.check_reference(value, option) if value is not None else None
            for value, option in (
                (secret, "--secret"),
                (previous_secret, "--previous-secret"),
                (api_token, "--api-token"),
            )
        ]
    except shop_service.SecretError as error:
        raise fail(str(error)) from None
    if mapping is not None or platform == "generic":
        if platform != "generic":
            raise fail("--mapping: only the generic webhook takes a field mapping")
        if api_token is not None:
            raise fail("--api-token: the generic webhook calls no API; give --mapping instead")
        refs[2] = _mapping_reference_or_exit(mapping) if mapping is not None else None
    with running_app() as app:
        try:
            shop_service.resolve(refs[0] or "")
        except shop_service.SecretError as error:
            err.print(f"[yellow]warning:[/yellow] --secret: {error}", highlight=False)
        with app.engine.begin() as conn:
            found = admin.store_by_slug(conn, store)
            if found is None:
                raise fail(f"--store: no store with slug {store!r}")
            new = shop_service.connect(
                conn, found.id, platform, domain, refs[0] or "", refs[1], refs[2], app.clock.now()
            )
        if app.settings.suppression_key is None:
            err.print(
                "[yellow]warning:[/yellow] CARTBACK_SUPPRESSION_KEY is not set: erasure "
                "requests (customers/redact, shop/redact) are refused until it is",
                highlight=False,
            )
    verb = "connected" if new else "connection updated"
    out.print(
        f"{store} {verb} to {platform} ({domain}); webhook path: /hooks/shop/{platform}/{store}"
    )


def _mapping_reference_or_exit(file: Path) -> str:
    """Check a generic webhook's field mapping; the connection keeps a reference to the file,
    read again with each delivery."""
    from rich.markup import escape

    from cartback.shops import generic

    try:
        source = file.read_bytes()
    except OSError as error:
        raise fail(f"{file}: cannot read: {error.strerror}") from None
    try:
        generic.load_mapping(source)
    except generic.MappingError as error:
        raise fail(escape(f"{file}:{error.line}: {error.field}: {error.message}")) from None
    return f"file:{file.resolve()}"


@shops_cli.command("list")
def shops_list() -> None:
    """Every store's shop connection; secrets shown only by where they come from."""
    from cartback.services import shops as shop_service

    with running_app() as app, app.engine.connect() as conn:
        rows = shop_service.connections(conn)
    table = Table()
    for column in ("store", "platform", "shop domain", "secret", "previous", "api token/mapping"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["slug"],
            row["platform"],
            row["shop_domain"],
            shop_service.mask(row["secret_ref"]),
            shop_service.mask(row["previous_secret_ref"]),
            shop_service.mask(row["api_token_ref"]),
        )
    out.print(table if rows else "no shop connections")


@shops_cli.command("replay")
def shops_replay(
    delivery_id: Annotated[str, typer.Argument(help="The platform's delivery id (webhook id)")],
    store: Annotated[str | None, typer.Option(help="Store slug, when several have the id")] = None,
) -> None:
    """Run a kept webhook payload through ingest again; what was applied before is a
    duplicate, so a replay only fills in what was missed."""
    from datetime import timedelta

    from cartback.services import admin, erasure, store_flows
    from cartback.services import shops as shop_service
    from cartback.shops.base import LinkError, PayloadError, ShopLink
    from cartback.shops.registry import adapter

    with running_app() as app:
        _flows_or_exit(app)
        with app.engine.connect() as conn:
            found = shop_service.kept_deliveries(conn, delivery_id)
            if store is not None:
                chosen = admin.store_by_slug(conn, store)
                found = [row for row in found if chosen and row.store_id == chosen.id]
            if not found:
                raise fail(f"no delivery {delivery_id!r}")
            if len(found) > 1:
                raise fail(f"several stores have delivery {delivery_id!r}; pass --store")
            delivery = found[0]
            if delivery.payload is None:
                raise fail(f"delivery {delivery_id!r}: its payload is past retention or erased")
            shop = admin.get_store(conn, delivery.store_id)
            link = shop_service.connection(conn, shop.id, delivery.platform)
        platform = adapter(delivery.platform)
        assert platform is not None
        try:
            document = (
                shop_service.resolve(link.api_token_ref)
                if platform.USES_DOCUMENT and link is not None and link.api_token_ref
                else None
            )
            # Parsed before the transaction: an adapter may call its platform's API.
            items = shop_service.parse_kept(
                platform,
                delivery,
                ShopLink(
                    link.shop_domain if link else "", shop.currency, document, delivery.received_at
                ),
            )
        except PayloadError as error:
            raise fail(f"delivery {delivery_id!r}: {error.field}: {error.message}") from None
        except (shop_service.SecretError, LinkError) as error:
            raise fail(f"delivery {delivery_id!r}: {error}", code=1) from None
        try:
            with app.engine.begin() as conn:
                # The store's flows are read on this transaction's connection: a second
                # connection would wait on SQLite's write lock held by this one.
                ctx = shop_service.Context(
                    store=shop,
                    flow=store_flows.lineup(conn, app.registry, shop),
                    now=app.clock.now(),
                    future_skew=timedelta(seconds=app.settings.future_skew_seconds),
                    suppression_key=app.settings.suppression_key,
                )
                outcome = shop_service.replay(conn, ctx, platform, delivery, items)
        except erasure.SuppressionKeyMissing as error:
            raise fail(str(error)) from None
        shop_service.write_exports(app.settings.export_dir, outcome.exports)
    for result in outcome.results:
        detail = f" ({result['detail']})" if result.get("detail") else ""
        out.print(f"{result['id']}: {result['status']}{detail}", highlight=False, markup=False)
    out.print(f"delivery {delivery_id} replayed: {len(outcome.results)} results")


@shops_cli.command("prune")
def shops_prune() -> None:
    """Blank kept webhook payloads older than CARTBACK_SHOP_PAYLOAD_RETENTION_DAYS (30)."""
    from cartback.services import shops as shop_service

    with running_app() as app, app.engine.begin() as conn:
        days = app.settings.shop_payload_retention_days
        count = shop_service.prune(conn, app.clock.now(), days)
    out.print(f"{count} payloads older than {days} days removed")


@shopify_cli.command("subscribe")
def shopify_subscribe(
    store: Annotated[str, typer.Option(help="Store slug, connected with `shops connect`")],
    address: Annotated[
        str | None,
        typer.Option(
            help="Where Shopify delivers; default CARTBACK_BASE_URL/hooks/shop/shopify/STORE"
        ),
    ] = None,
    api_base: Annotated[
        str | None, typer.Option(help="Admin API base URL; default https://SHOP_DOMAIN")
    ] = None,
) -> None:
    """Register the webhook topics cartback maps, with the connection's --api-token. Topics
    already registered for the address are left as they are."""
    from cartback.services import admin
    from cartback.services import shops as shop_service
    from cartback.shops import shopify_admin

    with running_app() as app:
        with app.engine.connect() as conn:
            found = admin.store_by_slug(conn, store)
            link = shop_service.connection(conn, found.id, "shopify") if found else None
        if link is None:
            raise fail(f"--store: {store!r} is not connected to shopify; run `shops connect`")
        if link.api_token_ref is None:
            raise fail(f"{store}: the connection has no --api-token; connect again with one")
        try:
            token = shop_service.resolve(link.api_token_ref)
        except shop_service.SecretError as error:
            raise fail(f"--api-token: {error}") from None
        target = address or f"{app.settings.base_url.rstrip('/')}/hooks/shop/shopify/{store}"
        # No transaction is open while the Admin API is called.
        with shopify_admin.client(api_base or f"https://{link.shop_domain}", token) as http:
            try:
                done = shopify_admin.subscribe(http, target)
            except shopify_admin.AdminError as error:
                raise fail(f"Shopify Admin API: {error}", code=1) from None
    for topic in done.created:
        out.print(f"subscribed {topic}", highlight=False)
    for topic in done.existing:
        out.print(f"already subscribed {topic}", highlight=False)
    out.print(f"{len(done.created)} topics subscribed, {len(done.existing)} already were; {target}")


@shopify_cli.command("reconcile")
def shopify_reconcile(
    since: Annotated[
        str, typer.Option(help="How far back to look: 6h, 90m, 2d (by updated_at)")
    ] = "6h",
    store: Annotated[
        str | None, typer.Option(help="Store slug; default every store connected to Shopify")
    ] = None,
    api_base: Annotated[
        str | None, typer.Option(help="Admin API base URL; default https://SHOP_DOMAIN")
    ] = None,
) -> None:
    """Read back the abandoned checkouts and orders updated since then through the Admin API,
    and apply what webhooks missed. Running it again changes nothing."""
    from datetime import timedelta

    from rich.markup import escape

    from cartback.core.model import parse_duration
    from cartback.services import shopify_reconcile as reconciler

    try:
        window = parse_duration(since)
    except (ValueError, OverflowError) as error:
        raise fail(f"--since: {error}") from None
    if not timedelta(minutes=1) <= window <= timedelta(days=60):
        raise fail("--since: from 1m to 60d")
    with running_app() as app:
        _flows_or_exit(app)
        settings = app.settings
        contexts = reconciler.contexts(
            app.engine,
            app.registry,
            app.clock.now,
            timedelta(seconds=settings.future_skew_seconds),
            settings.suppression_key,
        )
        start = app.clock.now() - window
        try:
            runs = reconciler.reconcile_stores(
                app.engine, contexts, start, slug=store, api_base=api_base
            )
        except reconciler.NotConnected:
            raise fail(
                f"--store: {store!r} is not connected to shopify with an --api-token; "
                "run `shops connect`"
            ) from None
    if not runs:
        out.print("no store is connected to shopify with an API token")
    for run in runs:
        if run.report is None:
            err.print(f"[red]error:[/red] {run.slug}: {escape(str(run.error))}", highlight=False)
            continue
        report = run.report
        for line in report.rejected:
            err.print(f"{run.slug}: rejected {line}", highlight=False, markup=False)
        out.print(
            f"{run.slug}: since {report.since:%Y-%m-%d %H:%M:%S} UTC, fetched "
            f"{report.checkouts} checkouts and {report.orders} orders; checkouts: "
            f"{report.new} new, {report.updated} updated, {report.unchanged} unchanged; "
            f"orders: {report.orders_matched} matched, {report.orders_unmatched} without a "
            f"known cart, {report.orders_known} already known; {len(report.rejected)} rejected",
            highlight=False,
            markup=False,
        )
    if any(run.report is None for run in runs):
        raise typer.Exit(1)


@magento_cli.command("poll")
def magento_poll(
    store: Annotated[str, typer.Option(help="Store slug, connected with `shops connect magento`")],
    first_window: Annotated[
        int, typer.Option(help="Hours to look back when the store has no Magento carts yet")
    ] = 24,
) -> None:
    """Fetch the carts and orders changed since the last poll, once, and apply them."""
    from datetime import timedelta

    from cartback.services import admin
    from cartback.services import magento as poller
    from cartback.services import shops as shop_service
    from cartback.shops import magento

    if first_window < 1:
        raise fail("--first-window: at least 1 hour")
    with running_app() as app:
        _flows_or_exit(app)
        with app.engine.connect() as conn:
            found = admin.store_by_slug(conn, store)
            link = shop_service.connection(conn, found.id, "magento") if found else None
        if found is None or link is None:
            raise fail(f"--store: {store!r} is not connected to magento; run `shops connect`")

        def context() -> shop_service.Context:
            return shop_service.Context(
                store=found,
                flow=app.registry.current(found.flow_name),
                now=app.clock.now(),
                future_skew=timedelta(seconds=app.settings.future_skew_seconds),
                suppression_key=app.settings.suppression_key,
            )

        try:
            report = poller.poll_connection(
                app.engine, context, link, first_window=timedelta(hours=first_window)
            )
        except shop_service.SecretError as error:
            raise fail(f"--api-token: {error}") from None
        except magento.MagentoError as error:
            raise fail(f"Magento API: {error}", code=1) from None
    for line in report.rejected:
        err.print(f"rejected {line}", highlight=False, markup=False)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.statuses.items()))
    out.print(
        f"{report.fetched} fetched (carts since {report.since_carts:%Y-%m-%d %H:%M:%S}, orders "
        f"since {report.since_orders:%Y-%m-%d %H:%M:%S} UTC): {counts or 'nothing new'}; "
        f"{len(report.rejected)} rejected",
        highlight=False,
    )


def _shopper(who: str) -> Any:
    from cartback.core.events import ContactInfo

    key = who.strip()
    if "@" in key:
        return ContactInfo(email=key.lower())
    return ContactInfo(phone=key.replace(" ", ""))


@contacts_cli.command("erase")
def contacts_erase(
    who: Annotated[str, typer.Argument(metavar="PHONE|EMAIL", help="E.164 phone or email")],
    store: Annotated[str, typer.Option(help="Store slug")],
) -> None:
    """Erase a shopper's data and keep only a keyed hash that blocks a re-import."""
    from cartback.services import admin, erasure

    with running_app() as app, app.engine.begin() as conn:
        found = admin.store_by_slug(conn, store)
        if found is None:
            raise fail(f"--store: no store with slug {store!r}")
        try:
            count = erasure.erase_shopper(
                conn, found.id, _shopper(who), app.settings.suppression_key, app.clock.now(), "cli"
            )
        except erasure.SuppressionKeyMissing as error:
            raise fail(str(error)) from None
    out.print(f"{count} contacts erased; the phone or email is suppressed in {store}")


@contacts_cli.command("export")
def contacts_export(
    who: Annotated[str, typer.Argument(metavar="PHONE|EMAIL", help="E.164 phone or email")],
    store: Annotated[str, typer.Option(help="Store slug")],
) -> None:
    """Print, as JSON, what is held about a shopper: consent, carts, messages, clicks, orders."""
    from cartback.services import admin, erasure

    with running_app() as app, app.engine.connect() as conn:
        found = admin.store_by_slug(conn, store)
        if found is None:
            raise fail(f"--store: no store with slug {store!r}")
        export = erasure.export_shopper(conn, found.id, _shopper(who))
    sys.stdout.write(json.dumps(export, indent=2, sort_keys=True) + "\n")


@import_cli.command("checkouts")
def import_checkouts(
    file: Annotated[Path, typer.Argument(metavar="FILE.csv", help="The CSV file")],
    store: Annotated[
        str | None, typer.Option(help="Store slug; may be left out when there is one store")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="shopify (abandoned-checkout export) or events")
    ] = "shopify",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and count, keep nothing")
    ] = False,
) -> None:
    """Import checkouts: Shopify's abandoned-checkout export, or one event per row. Running it
    twice adds nothing. Exit code 0: all imported or skipped; 1: some rejected (listed, with
    their lines, in FILE.rejects.csv); 2: the file cannot be read as the format."""
    from datetime import timedelta

    from cartback.imports import console as screen
    from cartback.imports import run as importer
    from cartback.imports.drafts import FormatError
    from cartback.services import store_flows
    from cartback.web.app import MAX_AHEAD

    if fmt not in importer.FORMATS:
        raise fail(f"--format: one of {', '.join(importer.FORMATS)}, not {fmt!r}")
    if not file.is_file():
        raise fail(f"{file}: no such file")
    try:
        rows, drafts = importer.load(file, fmt)
    except FormatError as error:
        raise fail(f"{file}:{error.line}: {error.column}: {error.message}") from None
    with running_app() as app:
        _flows_or_exit(app)
        with app.engine.connect() as conn:
            chosen = _import_store(conn, store)
        settings = app.settings
        report = screen.with_progress(
            err,
            rows,
            lambda advance: importer.run(
                app.engine,
                chosen,
                store_flows.lineup_for(app.engine, app.registry, chosen),
                drafts,
                now=app.clock.now(),
                max_age=timedelta(days=settings.event_max_age_days),
                max_ahead=MAX_AHEAD,
                future_skew=timedelta(seconds=settings.future_skew_seconds),
                suppression_key=settings.suppression_key,
                dry_run=dry_run,
                advance=advance,
            ),
        )
    report.rows = rows
    rejects = None
    if report.rejections:
        rejects = file.with_name(file.stem + ".rejects.csv")
        importer.write_rejects(rejects, report.rejections)
    screen.print_report(out, report, rejects, dry_run)
    if report.rejections:
        raise typer.Exit(1)


def _import_store(conn: Any, slug: str | None) -> Store:
    from sqlalchemy import select

    from cartback.services import admin
    from cartback.store import tables as t

    if slug is not None:
        found = admin.store_by_slug(conn, slug)
        if found is None:
            raise fail(f"--store: no store with slug {slug!r}")
        return found
    ids = conn.execute(select(t.stores.c.id).limit(2)).scalars().all()
    if len(ids) != 1:
        raise fail("--store: give the store's slug" if ids else "no store yet: create one first")
    return admin.get_store(conn, ids[0])


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT end the process cleanly, exit code 0, within the documented bound
    (`worker.shutdown_seconds`). uvicorn, while it runs, handles them itself and re-raises the
    one it caught once it has shut down; this handler absorbs that."""

    def _handler(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


# How long the web server waits for requests in progress after a stop signal.
WEB_SHUTDOWN_SECONDS = 5


def _serve_web(app: App, host: str, port: int, on_exit: threading.Event | None = None) -> None:
    import uvicorn

    from cartback.web.app import create_app

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # The worker beside the web server starts stopping at the same moment.
            if on_exit is not None:
                on_exit.set()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        create_app(app),
        host=host,
        port=port,
        log_level="info",
        # uvicorn's loggers propagate to cartback's masked handler instead of their own.
        log_config=None,
        timeout_graceful_shutdown=WEB_SHUTDOWN_SECONDS,
    )
    _Server(config).run()


def _exit_now() -> None:
    """End the process at once, exit code 0: the stop asked for has run out of time."""
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address")] = None,
    port: Annotated[int | None, typer.Option(help="Port")] = None,
) -> None:
    """Web and worker in one process. Stops cleanly on SIGTERM/SIGINT."""
    from cartback.worker import Worker, settle_startup_heap

    _logging()
    with running_app(host=host, port=port) as app:
        _flows_or_exit(app)
        runner = Worker(app)
        settle_startup_heap()
        result: list[bool] = []
        thread = threading.Thread(
            target=lambda: result.append(runner.run()), name="worker", daemon=True
        )
        thread.start()
        _stop_on_signals(runner.stop)
        try:
            _serve_web(app, app.settings.host, app.settings.port, on_exit=runner.stop)
        finally:
            runner.stop.set()
            # The worker bounds its own stop; the extra second covers its last log line.
            thread.join(timeout=runner.shutdown_seconds + 1)
        if not result or not result[0]:
            _exit_now()


@cli.command()
def web(
    host: Annotated[str | None, typer.Option(help="Bind address")] = None,
    port: Annotated[int | None, typer.Option(help="Port")] = None,
) -> None:
    """The web server alone (run workers separately)."""
    _logging()
    with running_app(host=host, port=port) as app:
        _flows_or_exit(app)
        _serve_web(app, app.settings.host, app.settings.port)


@cli.command()
def worker(
    role: Annotated[
        list[str] | None,
        typer.Option(
            "--role",
            metavar="ROLE",
            help="What this process runs: timer, dispatcher, inbox, jobs or all (the default). "
            "Repeat it or give a comma list; run every role in some process.",
        ),
    ] = None,
) -> None:
    """The worker alone: apply accepted events, fire due timers and send messages, or the roles
    given. Stops cleanly on SIGTERM/SIGINT, within the send timeout plus five seconds."""
    from cartback.worker import (
        ALL_ROLES,
        Worker,
        parse_roles,
        serve_worker_metrics,
        settle_startup_heap,
    )

    try:
        roles = parse_roles(role or [])
    except ValueError as error:
        raise fail(f"--role: {error}") from None
    _logging()
    with running_app() as app:
        _flows_or_exit(app)
        runner = Worker(app, roles=roles)
        settle_startup_heap()
        _stop_on_signals(runner.stop)
        if app.settings.worker_metrics_port:
            serve_worker_metrics(app.settings.worker_metrics_host, app.settings.worker_metrics_port)
        running = "all" if roles == ALL_ROLES else ",".join(sorted(roles))
        out.print(f"worker running ({running}); Ctrl-C to stop")
        if not runner.run():
            _exit_now()


@flows_cli.command("check")
def flows_check(
    files: Annotated[list[Path], typer.Argument(help="Flow files")],
    min_gap: Annotated[
        str,
        typer.Option(
            "--min-gap",
            help="Warn when a condition reads opens/clicks of a step planned less than this "
            "earlier",
        ),
    ] = "1h",
) -> None:
    """Validate flow files; errors print as file:line: field: message and exit with code 2.
    Warnings print the same way, prefixed `warning:`, and do not fail the check."""
    try:
        gap = parse_duration(min_gap)
    except ValueError as error:
        raise fail(f"--min-gap: {error}") from None
    failed = False
    for path in files:
        try:
            flow = load_flow(path, min_condition_gap=gap)
        except FlowError as error:
            failed = True
            for issue in error.issues:
                err.print(str(issue), highlight=False, markup=False)
            continue
        except OSError as error:
            failed = True
            err.print(f"{path}:0: file: {error.strerror}", highlight=False, markup=False)
            continue
        for warning in flow.warnings:
            err.print(f"warning: {warning}", highlight=False, markup=False)
        steps = f"{len(flow.steps)} step" + ("" if len(flow.steps) == 1 else "s")
        out.print(f"{path}: ok ({flow.name}, {steps}, version {flow.version})")
    if failed:
        raise typer.Exit(USAGE_ERROR)


@flows_cli.command("test")
def flows_test(
    flow_path: Annotated[
        Path, typer.Argument(metavar="FLOW", help="Flow file, or a shipped flow's name")
    ],
    event: Annotated[
        Path, typer.Option("--event", help='JSON file: one event or {"events": [...]}')
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the timeline as JSON")] = False,
    brand: Annotated[str, typer.Option(help="Brand shown at the start of each SMS")] = "DemoShop",
    domain: Annotated[
        list[str] | None, typer.Option(help="Store domain for links (repeatable)")
    ] = None,
    address: Annotated[
        str, typer.Option(help="Postal address for email footers")
    ] = "1 Demo Street, 0150 Oslo",
    policy: Annotated[
        Path | None, typer.Option(help="Store policy YAML (cooldowns, caps, stricter rules)")
    ] = None,
    opened: Annotated[
        list[str] | None,
        typer.Option(
            "--opened", metavar="STEP", help="The shopper opens this email once sent (repeatable)"
        ),
    ] = None,
    clicked: Annotated[
        list[str] | None,
        typer.Option(
            "--clicked",
            metavar="STEP",
            help="The shopper clicks this message's link once sent (repeatable)",
        ),
    ] = None,
    ordered_at: Annotated[
        str | None,
        typer.Option(
            "--ordered-at",
            metavar="DURATION",
            help="The shopper places an order this long after abandonment, e.g. 9h",
        ),
    ] = None,
    replied: Annotated[
        list[str] | None,
        typer.Option(
            "--replied",
            metavar="TEXT",
            help='The shopper texts this (e.g. "STOP"); pair each with an --at (repeatable)',
        ),
    ] = None,
    reply_at: Annotated[
        list[str] | None,
        typer.Option(
            "--at",
            metavar="DURATION",
            help="When the --replied text in the same position is sent, after abandonment",
        ),
    ] = None,
) -> None:
    """Run one cart through a flow in virtual time and print every decision, the branch each
    condition takes, and what the shopper did. Times after abandonment: 90s, 15m, 9h, 2d."""
    from cartback.app import SHIPPED_FLOWS
    from cartback.simulate import timeline
    from cartback.web.intake import parse_event_document
    from cartback.web.problems import Problem

    path = flow_path if flow_path.exists() else SHIPPED_FLOWS / f"{flow_path}.yaml"
    try:
        flow = load_flow(path)
    except FlowError as error:
        raise fail(str(error)) from None
    except OSError as error:
        raise fail(f"{flow_path}: {error.strerror}") from None
    engagement = _engagement_or_exit(flow, opened, clicked, ordered_at, replied, reply_at)
    try:
        events = parse_event_document(event.read_bytes())
    except OSError as error:
        raise fail(f"{event}: {error.strerror}") from None
    except Problem as problem:
        details = (
            "; ".join(f"{e['field']}: {e['message']}" for e in problem.errors) or problem.detail
        )
        raise fail(f"{event}: {details}") from None
    settings = settings_or_exit()
    store = Store(
        id=1,
        name=brand,
        brand=brand,
        domains=tuple(domain or ("shop.example",)),
        postal_address=address,
        policy=_policy_file_or_exit(policy) if policy is not None else {},
    )
    try:
        entries = timeline(flow, store, events, base_url=settings.base_url, engagement=engagement)
    except ValueError as error:
        raise fail(f"{event}: {error}") from None
    zone = _shopper_zone(events, store)
    if as_json:
        rows = [_timeline_row(entry, zone) for entry in entries]
        sys.stdout.write(json.dumps(rows, default=str, indent=2, ensure_ascii=False) + "\n")
        return
    _print_timeline(flow.name, entries, zone)


def _engagement_or_exit(
    flow: Any,
    opened: list[str] | None,
    clicked: list[str] | None,
    ordered_at: str | None,
    replied: list[str] | None,
    reply_at: list[str] | None,
) -> Any:
    """The shopper's actions from the `flows test` options; exit 2 naming the option."""
    from cartback.simulate import Engagement, ShopperReply

    texts, times = replied or [], reply_at or []
    if len(texts) != len(times):
        raise fail(
            f"--replied and --at go in pairs: {len(texts)} --replied, {len(times)} --at "
            '(e.g. --replied "STOP" --at 3h)'
        )
    engagement = Engagement(
        opened=frozenset(opened or ()),
        clicked=frozenset(clicked or ()),
        ordered_after=_duration_or_exit("--ordered-at", ordered_at) if ordered_at else None,
        replies=tuple(
            ShopperReply(text, _duration_or_exit("--at", at))
            for text, at in zip(texts, times, strict=True)
        ),
    )
    problems = engagement.problems(flow)
    if problems:
        raise fail("; ".join(problems))
    return engagement


def _duration_or_exit(option: str, text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise fail(f"{option}: {error}") from None


def _instant(moment: datetime) -> str:
    """An ISO 8601 instant in UTC, as the API writes them: 2026-06-10T08:25:00Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _timeline_row(entry: Any, zone: Any) -> dict[str, Any]:
    row = asdict(entry)
    local = entry.at.astimezone(zone)
    return {
        "at": _instant(entry.at),
        "local_at": local.isoformat(),
        "zone": zone.key,
        **{key: value for key, value in row.items() if key != "at"},
    }


def _shopper_zone(events: list[Any], store: Store) -> Any:
    """The zone quiet hours use for this shopper: explicit, address, phone, then the store's."""
    from cartback.core.events import CheckoutUpdated
    from cartback.core.timezones import resolve_zone
    from cartback.postcodes import postal_zones

    first = next(event for event in events if isinstance(event, CheckoutUpdated))
    info = first.contact
    return resolve_zone(
        explicit=info.zone,
        country=info.country,
        region=info.region,
        phone=info.phone,
        store_default=store.default_zone,
        postal_zones=postal_zones(info.country, info.region, info.postal_code),
    ).zone


def _print_timeline(name: str, entries: list[Any], zone: Any) -> None:
    table = Table(title=f"flow {name}", show_lines=True)
    # One column, two lines: UTC above the shopper's own time, so the message keeps its width.
    time_column = f"time (UTC)\nshopper's: {zone.key}"
    for column in (time_column, "step", "outcome", "channel", "message or reason"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        if entry.text is not None:
            detail = (f"Subject: {entry.subject}\n" if entry.subject else "") + entry.text
            if entry.segments is not None:
                detail += f"\n[{entry.encoding}, {entry.segments} segment(s)]"
            if entry.outcome == "replied":
                detail = f"{entry.reason}\nanswer: {detail}"
        else:
            detail = entry.reason + (f" [rule: {entry.rule}]" if entry.rule else "")
        if entry.condition is not None:
            # A false condition is the whole reason: say it once, with the facts.
            reason = "" if entry.rule == "when" else f"\n{detail}"
            detail = f"{_branch_text(entry)}{reason}"
        table.add_row(
            entry.at.strftime("%Y-%m-%d %H:%M:%S")
            + "\n"
            + entry.at.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z"),
            entry.step_id or "",
            entry.outcome,
            entry.channel or "",
            Text(detail),
        )
    out.print(table)


def _branch_text(entry: Any) -> str:
    """`when A and not B -> false (A = true, B = true)`: the branch and what decided it."""
    if entry.branch is None:
        return f"when {entry.condition} -> not read (the step was late)"
    facts = ", ".join(f"{name} = {_fact_text(value)}" for name, value in entry.facts.items())
    branch = "true" if entry.branch else "false"
    return f"when {entry.condition} -> {branch}" + (f" ({facts})" if facts else "")


def _fact_text(value: object) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _logging() -> None:
    from cartback.logs import setup_logging

    setup_logging()


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as error:
        # An operator gets one line; CARTBACK_DEBUG=1 shows the full trace for a bug report.
        import os

        if os.environ.get("CARTBACK_DEBUG") == "1":
            raise
        from rich.markup import escape

        from cartback.logs import mask

        detail = escape(mask(str(error)))
        err.print(f"[red]error:[/red] {type(error).__name__}: {detail}", highlight=False)
        err.print("set CARTBACK_DEBUG=1 to see the full trace", style="dim")
        raise SystemExit(1) from None


def _report_store(conn: Any, slug: str | None) -> Store:
    from cartback.services import admin

    if slug is not None:
        found = admin.store_by_slug(conn, slug)
        if found is None:
            raise fail(f"no store with slug {slug!r}")
        return found
    from sqlalchemy import select

    from cartback.store import tables as t

    slugs = conn.execute(select(t.stores.c.slug).order_by(t.stores.c.slug)).scalars().all()
    if len(slugs) != 1:
        raise fail("pass --store: " + (", ".join(slugs) or "there is no store yet"))
    found = admin.store_by_slug(conn, slugs[0])
    assert found is not None
    return found


@report_cli.callback(invoke_without_command=True)
def report(
    ctx: typer.Context,
    flow: Annotated[str | None, typer.Option(help="Only this flow")] = None,
    since: Annotated[str, typer.Option(help="The window: carts abandoned in the last 30d")] = "30d",
    until: Annotated[
        str | None, typer.Option(help="End of the window (ISO 8601 UTC); default now")
    ] = None,
    store: Annotated[str | None, typer.Option(help="Store slug (needed when several)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV instead of a table")] = False,
) -> None:
    """The flow report: sends, clicks, recovered orders, revenue, cost, opt-outs, experiments."""
    if ctx.invoked_subcommand is not None:
        return
    from cartback import reporting
    from cartback.services.reports import flow_report

    if as_json and as_csv:
        raise fail("--json and --csv: choose one")
    with running_app() as app, app.engine.connect() as conn:
        try:
            now = reporting.end_of_window(until, app.clock.now())
            start = reporting.window(since, now)
        except reporting.SettingsError as error:
            raise fail(f"--{error}") from None
        chosen = _report_store(conn, store)
        result = flow_report(conn, chosen.id, since=start, until=now, flow=flow)
    if as_json:
        sys.stdout.write(reporting.as_json(result) + "\n")
        return
    if as_csv:
        sys.stdout.write(reporting.as_csv(result))
        return
    _print_report(result)


@report_cli.command("rebuild")
def report_rebuild(
    since: Annotated[
        str | None, typer.Option(help="Only days from this date (YYYY-MM-DD); default all")
    ] = None,
    store: Annotated[str | None, typer.Option(help="Store slug; default every store")] = None,
) -> None:
    """Build the report's daily summary again for every ended day: a backfill after the
    upgrade, or a repair. The worker keeps it up to date by itself."""
    from datetime import date

    from sqlalchemy import select

    from cartback.services import report_summary
    from cartback.store import tables as t

    try:
        first = None if since is None else date.fromisoformat(since)
    except ValueError:
        raise fail("--since: expected a date, YYYY-MM-DD") from None
    with running_app() as app:
        with app.engine.connect() as conn:
            query = select(t.stores.c.id, t.stores.c.slug).order_by(t.stores.c.slug)
            if store is not None:
                query = query.where(t.stores.c.slug == store)
            stores = conn.execute(query).all()
        if not stores:
            raise fail(f"--store: no store {store!r}" if store else "there is no store yet")
        now = app.clock.now()
        for store_id, slug in stores:
            days = report_summary.rebuild(app.engine, store_id, now, since=first)
            out.print(f"{slug}: {days} {'day' if days == 1 else 'days'} summarised")


def _print_report(result: dict[str, Any]) -> None:
    from cartback import reporting

    if not result["flows"]:
        out.print("no carts entered a flow in this window")
        return
    table = Table(title=f"since {result['since'][:16]} UTC, money in {result['currency']}")
    for column in ("flow", "row", *reporting.COLUMNS):
        table.add_column(column.replace("_", " "), overflow="fold")
    for row in reporting.rows(result):
        label = row["level"] if not row["key"] else f"{row['level']} {row['key']}"
        table.add_row(
            row["flow"], label, *("" if row[c] is None else str(row[c]) for c in reporting.COLUMNS)
        )
    out.print(table)
    for entry in result["flows"]:
        for alert in entry["alerts"]:
            out.print(f"[yellow]alert:[/yellow] {entry['flow']}: {alert}", highlight=False)
        holdout = entry["experiments"]["holdout"]
        if holdout is not None:
            lift = holdout["lift"]
            extra = holdout["incremental_carts"]
            verdict = (
                "too small to tell"
                if holdout["too_small_to_tell"]
                else f"incremental carts {extra['estimate']} ({extra['low']} to {extra['high']})"
            )
            out.print(
                f"{entry['flow']}: holdout {holdout['held_out']['rate']:.2%} vs treated "
                f"{holdout['treated']['rate']:.2%}, lift {lift['diff']:+.2%} "
                f"(95% {lift['low']:+.2%} to {lift['high']:+.2%}): {verdict}",
                highlight=False,
            )
        ab = entry["experiments"]["ab"]
        if ab is not None:
            named = f"winner {ab['winner']}" if ab["winner"] else "no significant winner"
            out.print(
                f"{entry['flow']}: A/B {named}; P({ab['leader']} better) "
                f"{ab['probability_leader_is_better']:.1%}",
                highlight=False,
            )
    for currency, amount in result["unconverted"].items():
        out.print(f"[yellow]note:[/yellow] {amount} {currency} left out: no rate for {currency}")


@report_cli.command("attribute")
def report_attribute(
    since: Annotated[str, typer.Option(help="Orders placed in the last 30d")] = "30d",
    store: Annotated[str | None, typer.Option(help="Store slug (needed when several)")] = None,
) -> None:
    """Credit the orders of a window again, with the store's current attribution settings."""
    from cartback import reporting
    from cartback.services.attribution import recompute

    with running_app() as app, app.engine.begin() as conn:
        now = app.clock.now()
        try:
            start = reporting.window(since, now)
        except reporting.SettingsError as error:
            raise fail(f"--{error}") from None
        chosen = _report_store(conn, store)
        seen, credited = recompute(conn, chosen.id, start, now)
    out.print(f"{seen} orders since {start:%Y-%m-%d %H:%M} UTC; {credited} credited to a message")


@report_cli.command("promote")
def report_promote(
    since: Annotated[str, typer.Option(help="Judge on carts abandoned in the last 30d")] = "30d",
    store: Annotated[str | None, typer.Option(help="Store slug (needed when several)")] = None,
) -> None:
    """Promote the significant A/B winner of each flow listed in `auto_promote`: new carts get
    it; carts already enrolled keep their variant."""
    from cartback import reporting
    from cartback.services.experiments import promote_winners

    with running_app() as app, app.engine.begin() as conn:
        now = app.clock.now()
        try:
            start = reporting.window(since, now)
        except reporting.SettingsError as error:
            raise fail(f"--{error}") from None
        chosen = _report_store(conn, store)
        winners = promote_winners(conn, chosen.id, since=start, until=now)
    if not winners:
        out.print("no flow has auto_promote set")
    for flow_name, winner in winners.items():
        out.print(f"{flow_name}: " + (f"{winner} promoted" if winner else "no significant winner"))


@report_cli.command("settings")
def report_settings(
    slug: str,
    file: Annotated[
        Path | None, typer.Argument(help="Measurement YAML; omit to show the current")
    ] = None,
) -> None:
    """A store's attribution windows and model, currency rates and message prices."""
    from sqlalchemy import update

    from cartback.core.attribution import SettingsError
    from cartback.services.reports import check_settings
    from cartback.store import tables as t

    settings = _measurement_file_or_exit(file) if file is not None else None
    with running_app() as app, app.engine.begin() as conn:
        chosen = _report_store(conn, slug)
        if settings is None:
            from sqlalchemy import select

            current = conn.execute(
                select(t.stores.c.measurement).where(t.stores.c.id == chosen.id)
            ).scalar()
            out.print_json(data=current or {})
            return
        try:
            check_settings(settings, chosen.currency)
        except SettingsError as error:
            raise fail(f"{file}: {error}") from None
        conn.execute(
            update(t.stores).where(t.stores.c.id == chosen.id).values(measurement=settings or None)
        )
    out.print(f"measurement settings of {slug} updated from {file}")


def _measurement_file_or_exit(file: Path) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise fail(f"{file}:1: file: cannot read: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise fail(f"{file}:{line}: file: not valid YAML") from None
    if not isinstance(loaded, dict):
        raise fail(f"{file}:1: file: expected a mapping of settings")
    return loaded


# Registered last: these modules use the helpers above.
from cartback.cli_inbox import inbox_cli  # noqa: E402
from cartback.cli_outbound import export, webhooks_cli  # noqa: E402
from cartback.cli_simulate import simulate  # noqa: E402

cli.add_typer(webhooks_cli, name="webhooks")
cli.add_typer(inbox_cli, name="inbox")
cli.command("export")(export)
cli.command("simulate")(simulate)


def _summary() -> str:
    """`cartback --help`'s first line: every command and command group, so none is missed."""
    names = [
        info.name or info.callback.__name__ for info in cli.registered_commands if info.callback
    ]
    groups = [info.name for info in cli.registered_groups if info.name]
    return "cartback, abandoned-cart recovery: " + " · ".join([*names, *groups]) + "."


cli.info.help = _summary()
