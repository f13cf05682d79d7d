"""Per-store provider settings, their secrets, and the channel each (store, kind) sends through.

A store may choose its own SMS and email provider (`cartback channels set`); a store without
one uses the global channel (`CARTBACK_SMS_CHANNEL` / `CARTBACK_EMAIL_CHANNEL`). Options are
stored as given; secrets are stored only as references, resolved when the channel is built:

- `env:NAME`: the environment variable NAME of the process that sends (the worker) or receives
  callbacks (the web process);
- `file:/path`: the file's content, without the trailing newline (Docker and systemd secrets).

The resolved values are merged into `ProviderConfig.options` under the secret's name. Each
change bumps the settings' `version`, so a running worker builds the channel again on its next
batch; built channels are cached per (store, kind, version).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select, update

from cartback.channels.registry import PROVIDERS
from cartback.core.model import Channel
from cartback.ports import MessageChannel, ProviderChannel, ProviderConfig
from cartback.store import tables as t

SECRET_SCHEMES = ("env", "file")
ProviderFactory = Callable[[ProviderConfig], ProviderChannel]


class ProviderSettingsError(ValueError):
    """A setting that cannot be stored or used; `field` names it (`--secret auth_token`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class SecretUnavailable(ProviderSettingsError):
    """A secret reference that does not resolve (unset variable, unreadable file)."""


@dataclass(frozen=True, slots=True)
class StoreProvider:
    store_id: int
    store_slug: str
    kind: Channel
    provider: str
    options: Mapping[str, str]
    # name -> reference (`env:NAME`, `file:/path`); never a secret in clear.
    secrets: Mapping[str, str]
    version: int


def check_secret_ref(name: str, ref: str) -> None:
    scheme, _, target = ref.partition(":")
    if scheme not in SECRET_SCHEMES or not target:
        raise ProviderSettingsError(
            f"secret {name}",
            "must be a reference, env:VARIABLE or file:/path (secrets are never stored in clear)",
        )


def resolve_secret(name: str, ref: str, environ: Mapping[str, str]) -> str:
    check_secret_ref(name, ref)
    scheme, _, target = ref.partition(":")
    if scheme == "env":
        value = environ.get(target)
        if not value:
            raise SecretUnavailable(f"secret {name}", f"environment variable {target} is not set")
        return value
    try:
        value = Path(target).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        raise SecretUnavailable(
            f"secret {name}", f"cannot read {target}: {type(error).__name__}"
        ) from None
    if not value:
        raise SecretUnavailable(f"secret {name}", f"{target} is empty")
    return value


def callback_urls(base_url: str, store_slug: str, provider: str) -> tuple[str, str]:
    """The public status and inbound URLs of one store's provider."""
    root = f"{base_url.rstrip('/')}/hooks/channel/{provider}/{store_slug}"
    return f"{root}/status", f"{root}/inbound"


def build_config(
    setting: StoreProvider,
    *,
    base_url: str,
    timeout: float,
    environ: Mapping[str, str] | None = None,
) -> ProviderConfig:
    environ = os.environ if environ is None else environ
    options = dict(setting.options)
    for name, ref in sorted(setting.secrets.items()):
        options[name] = resolve_secret(name, ref, environ)
    status_url, inbound_url = callback_urls(base_url, setting.store_slug, setting.provider)
    return ProviderConfig(
        provider=setting.provider,
        kind=setting.kind,
        store=setting.store_slug,
        options=options,
        status_url=status_url,
        inbound_url=inbound_url,
        timeout=timeout,
    )


# -- stored settings ---------------------------------------------------------------------------


def set_provider(
    conn: Connection,
    *,
    store_id: int,
    kind: Channel,
    provider: str,
    options: Mapping[str, str],
    secrets: Mapping[str, str],
    now: datetime,
    known: Iterable[str] | None = None,
) -> int:
    """Store (or replace) a store's provider for one kind; the new version number."""
    names = sorted(PROVIDERS if known is None else known)
    if provider not in names:
        raise ProviderSettingsError(
            "provider", f"unknown provider {provider!r}; one of {', '.join(names) or 'none'}"
        )
    for name, ref in secrets.items():
        check_secret_ref(name, ref)
    both = set(options) & set(secrets)
    if both:
        raise ProviderSettingsError(
            f"option {sorted(both)[0]}", "is given both as an option and as a secret"
        )
    p = t.store_providers.c
    values: dict[str, Any] = {
        "provider": provider,
        "options": dict(options),
        "secrets": dict(secrets),
        "updated_at": now,
    }
    current = conn.execute(
        select(p.id, p.version).where(p.store_id == store_id, p.kind == str(kind))
    ).first()
    if current is None:
        conn.execute(
            t.store_providers.insert().values(
                store_id=store_id, kind=str(kind), version=1, created_at=now, **values
            )
        )
        return 1
    conn.execute(
        update(t.store_providers)
        .where(p.id == current.id)
        .values(version=current.version + 1, **values)
    )
    return int(current.version) + 1


def remove_provider(conn: Connection, store_id: int, kind: Channel) -> bool:
    p = t.store_providers.c
    deleted = conn.execute(
        t.store_providers.delete().where(p.store_id == store_id, p.kind == str(kind))
    )
    return deleted.rowcount > 0


def _query() -> Any:
    p, s = t.store_providers.c, t.stores.c
    return (
        select(p.store_id, s.slug, p.kind, p.provider, p.options, p.secrets, p.version)
        .join(t.stores, s.id == p.store_id)
        .order_by(s.slug, p.kind)
    )


def _from_row(row: Any) -> StoreProvider:
    return StoreProvider(
        store_id=row.store_id,
        store_slug=row.slug,
        kind=Channel(row.kind),
        provider=row.provider,
        options={str(k): str(v) for k, v in (row.options or {}).items()},
        secrets={str(k): str(v) for k, v in (row.secrets or {}).items()},
        version=row.version,
    )


def list_providers(conn: Connection, store_id: int | None = None) -> list[StoreProvider]:
    query = _query()
    if store_id is not None:
        query = query.where(t.store_providers.c.store_id == store_id)
    return [_from_row(row) for row in conn.execute(query)]


def load_providers(
    conn: Connection, store_ids: Iterable[int]
) -> dict[tuple[int, Channel], StoreProvider]:
    ids = sorted(set(store_ids))
    if not ids:
        return {}
    rows = conn.execute(_query().where(t.store_providers.c.store_id.in_(ids)))
    found = [_from_row(row) for row in rows]
    return {(item.store_id, item.kind): item for item in found}


def provider_for_route(conn: Connection, store_slug: str, provider: str) -> StoreProvider | None:
    """The settings a callback route answers for: this store, using this provider."""
    p, s = t.store_providers.c, t.stores.c
    rows = conn.execute(_query().where(s.slug == store_slug, p.provider == provider)).all()
    # A provider serving both kinds answers with the SMS settings (replies are SMS).
    found = sorted((_from_row(row) for row in rows), key=lambda item: item.kind != Channel.SMS)
    return found[0] if found else None


# -- built channels ----------------------------------------------------------------------------


class ProviderUnavailable(RuntimeError):
    """A store's provider cannot be built now (an unresolvable secret, a bad option)."""


class ChannelResolver:
    """The channel a message goes out on: its store's provider, else the global default.

    `refresh` reads the settings of some stores (inside the caller's short transaction);
    `channel` then answers from memory, building each provider once per settings version.
    Thread-safe: the dispatcher's send threads ask it concurrently.
    """

    def __init__(
        self,
        defaults: Mapping[Channel, MessageChannel],
        *,
        base_url: str,
        timeout: float,
        environ: Mapping[str, str] | None = None,
        factories: Mapping[str, ProviderFactory] | None = None,
        per_store: bool = True,
    ) -> None:
        self.defaults = dict(defaults)
        self.base_url = base_url
        self.timeout = timeout
        self.environ = environ
        self.factories = dict(PROVIDERS if factories is None else factories)
        self.per_store = per_store
        self._settings: dict[tuple[int, Channel], StoreProvider] = {}
        self._built: dict[tuple[int, Channel, int], ProviderChannel] = {}
        self._retired: list[ProviderChannel] = []
        self._lock = threading.Lock()

    def refresh(self, conn: Connection, store_ids: Iterable[int]) -> None:
        if not self.per_store:
            return
        ids = set(store_ids)
        found = load_providers(conn, ids)
        with self._lock:
            for key in [key for key in self._settings if key[0] in ids]:
                del self._settings[key]
            self._settings.update(found)

    def channel(self, store_id: int, kind: Channel) -> MessageChannel:
        with self._lock:
            setting = self._settings.get((store_id, kind))
        if setting is None:
            default = self.defaults.get(kind)
            if default is None:
                raise ProviderUnavailable(f"no {kind} channel is configured")
            return default
        return self.build(setting)

    def build(self, setting: StoreProvider) -> ProviderChannel:
        key = (setting.store_id, setting.kind, setting.version)
        with self._lock:
            built = self._built.get(key)
            if built is not None:
                return built
            # Settings read before a change: the newer channel serves them, so a stale batch
            # never builds an old one again (an SMPP bind nobody drains or closes).
            newer = [other for other in self._built if other[:2] == key[:2] and other > key]
            if newer:
                return self._built[max(newer)]
        factory = self.factories.get(setting.provider)
        if factory is None:
            raise ProviderUnavailable(f"provider {setting.provider!r} is not available")
        try:
            config = build_config(
                setting, base_url=self.base_url, timeout=self.timeout, environ=self.environ
            )
            channel = factory(config)
        except ValueError as error:
            raise ProviderUnavailable(
                f"{setting.provider} for store {setting.store_slug}: {error}"
            ) from None
        with self._lock:
            built = self._built.setdefault(key, channel)
            # Replaced settings: the old channel may still be mid-call, so it is only dropped
            # from the cache; its client is closed with the resolver.
            for old in [old for old in self._built if old[:2] == key[:2] and old[2] < key[2]]:
                self._retired.append(self._built.pop(old))
        if built is not channel:
            channel.close()
        return built

    def close(self) -> None:
        with self._lock:
            channels = [*self._built.values(), *self._retired]
            self._built.clear()
            self._retired.clear()
        for channel in channels:
            channel.close()
