"""Dashboard logins: scrypt password hashes, server-side sessions, CSRF tokens, lockout."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from cartback.store import tables as t

# scrypt at n=2**14, r=8, p=1 (the interactive-login parameters of RFC 7914): ~16 MiB, ~50 ms.
_N, _R, _P = 2**14, 8, 1
MIN_PASSWORD = 12
SESSION_LIFETIME = timedelta(hours=12)
# After this many failed logins in a row, each further try waits: 30 s, doubling, at most 1 h.
FREE_FAILURES = 5
_BASE_LOCK = timedelta(seconds=30)
_MAX_LOCK = timedelta(hours=1)
# A hash to verify against when the email is unknown, so both answers take as long.
_DUMMY = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44


class PasswordTooShort(ValueError):
    pass


@dataclass(frozen=True)
class Session:
    user_id: int
    store_id: int
    email: str
    csrf_token: str


@dataclass(frozen=True)
class LoginResult:
    token: str | None
    locked_until: datetime | None = None


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise PasswordTooShort(f"the password must have at least {MIN_PASSWORD} characters")
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    encoded = (base64.b64encode(part).decode() for part in (salt, key))
    return f"scrypt${_N}${_R}${_P}${'$'.join(encoded)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, key = stored.split("$")
        expected = base64.b64decode(key)
        derived = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected) or 32,
        )
    except ValueError:
        return False
    return kind == "scrypt" and hmac.compare_digest(derived, expected)


def add_user(conn: Connection, store_id: int, email: str, password: str, now: datetime) -> int:
    result = conn.execute(
        t.dashboard_users.insert().values(
            store_id=store_id,
            email=email.strip().lower(),
            password_hash=hash_password(password),
            failed_logins=0,
            created_at=now,
        )
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def lock_for(failures: int) -> timedelta | None:
    """How long a user waits after `failures` failed logins in a row (None: not at all)."""
    if failures < FREE_FAILURES:
        return None
    wait: timedelta = _BASE_LOCK * 2 ** min(failures - FREE_FAILURES, 12)
    return min(wait, _MAX_LOCK)


def login(conn: Connection, email: str, password: str, now: datetime) -> LoginResult:
    u = t.dashboard_users.c
    row = conn.execute(
        select(u.id, u.password_hash, u.failed_logins, u.locked_until).where(
            u.email == email.strip().lower()
        )
    ).first()
    if row is None:
        verify_password(password, _DUMMY)
        return LoginResult(None)
    if row.locked_until is not None and row.locked_until > now:
        # No password check while locked: a guess during the wait teaches nothing.
        return LoginResult(None, locked_until=row.locked_until)
    if not verify_password(password, row.password_hash):
        failures = row.failed_logins + 1
        wait = lock_for(failures)
        until = now + wait if wait else None
        conn.execute(
            update(t.dashboard_users)
            .where(u.id == row.id)
            .values(failed_logins=failures, locked_until=until)
        )
        return LoginResult(None, locked_until=until)
    conn.execute(
        update(t.dashboard_users).where(u.id == row.id).values(failed_logins=0, locked_until=None)
    )
    token = secrets.token_urlsafe(32)
    conn.execute(
        t.dashboard_sessions.insert().values(
            user_id=row.id,
            token_hash=_token_hash(token),
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + SESSION_LIFETIME,
        )
    )
    return LoginResult(token)


def session(conn: Connection, token: str, now: datetime) -> Session | None:
    s, u = t.dashboard_sessions.c, t.dashboard_users.c
    row = conn.execute(
        select(s.user_id, s.csrf_token, s.expires_at, u.store_id, u.email)
        .join(t.dashboard_users, u.id == s.user_id)
        .where(s.token_hash == _token_hash(token))
    ).first()
    if row is None or row.expires_at <= now:
        return None
    return Session(row.user_id, row.store_id, row.email, row.csrf_token)


def logout(conn: Connection, token: str) -> None:
    conn.execute(
        delete(t.dashboard_sessions).where(t.dashboard_sessions.c.token_hash == _token_hash(token))
    )


def csrf_ok(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())
