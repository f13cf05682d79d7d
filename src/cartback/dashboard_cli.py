"""`cartback dashboard ...`: dashboard users and the store's test contacts."""

from __future__ import annotations

import re
import sys
from typing import Annotated

import typer

dashboard_cli = typer.Typer(no_args_is_help=True, help="Dashboard users and test contacts.")
user_cli = typer.Typer(no_args_is_help=True, help="People who may log in to the dashboard.")
test_contact_cli = typer.Typer(
    no_args_is_help=True, help="The only addresses the dashboard's test send may reach."
)
dashboard_cli.add_typer(user_cli, name="user")
dashboard_cli.add_typer(test_contact_cli, name="test-contact")

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    # Typed twice, never echoed; there is no default password.
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@user_cli.command("add")
def user_add(
    email: Annotated[str, typer.Argument(help="The user's email; it is the login name")],
    store: Annotated[str, typer.Option(help="Slug of the store the user sees")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Add a dashboard user; the password is prompted for (or read from standard input)."""
    from sqlalchemy import select

    from cartback.cli import fail, out, running_app
    from cartback.services import admin
    from cartback.services import dashboard_auth as auth
    from cartback.store import tables as t

    if not _EMAIL.match(email.strip()):
        raise fail(f"EMAIL: not an email address: {email!r}")
    password = _password(password_stdin)
    if len(password) < auth.MIN_PASSWORD:
        raise fail(f"password: at least {auth.MIN_PASSWORD} characters")
    with running_app() as app, app.engine.begin() as conn:
        found = admin.store_by_slug(conn, store)
        if found is None:
            raise fail(f"--store: no store with slug {store!r}")
        taken = conn.execute(
            select(t.dashboard_users.c.id).where(t.dashboard_users.c.email == email.strip().lower())
        ).first()
        if taken is not None:
            raise fail(f"a dashboard user {email.strip().lower()!r} exists")
        auth.add_user(conn, found.id, email, password, app.clock.now())
    out.print(f"dashboard user {email.strip().lower()} added for store {store}")


@test_contact_cli.command("add")
def test_contact_add(
    address: Annotated[str, typer.Argument(help="An E.164 phone number or an email address")],
    store: Annotated[str, typer.Option(help="Store slug")],
) -> None:
    """List an address the dashboard's test send may reach (the store's own phone or inbox)."""
    from cartback.cli import fail, out, running_app
    from cartback.services import admin
    from cartback.services import dashboard_views as views

    value = address.strip()
    if _E164.match(value.replace(" ", "")):
        channel, value = "sms", value.replace(" ", "")
    elif _EMAIL.match(value):
        channel, value = "email", value.lower()
    else:
        raise fail(f"ADDRESS: neither an E.164 phone (+4712345678) nor an email: {address!r}")
    with running_app() as app, app.engine.begin() as conn:
        found = admin.store_by_slug(conn, store)
        if found is None:
            raise fail(f"--store: no store with slug {store!r}")
        if not views.add_test_contact(conn, found.id, channel, value, app.clock.now()):
            raise fail(f"store {store} already lists that test contact")
    out.print(f"test contact added for store {store} ({channel})")
