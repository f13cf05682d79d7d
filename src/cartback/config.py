"""Settings, from CARTBACK_* environment variables. A bad value names its variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit


class ConfigError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# How far ahead of its receipt an event's own time may be before ingest clamps it.
DEFAULT_FUTURE_SKEW_SECONDS = 300


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = "sqlite:///var/cartback.db"
    # A database that does not answer makes requests fail (503) rather than hang: the longest
    # wait for a connection, and for one statement (SQLite: for the write lock).
    database_connect_timeout_seconds: int = 5
    database_statement_timeout_seconds: float = 30.0
    # Events older than this are refused by the API (a shop's broken clock, or a replay).
    event_max_age_days: int = 400
    base_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000
    sms_channel: str = "console"
    email_channel: str = "console"
    jsonl_path: Path = Path("var/messages.jsonl")
    flows_dir: Path | None = None
    worker_batch: int = 500
    worker_poll_seconds: float = 0.5
    dispatch_batch: int = 200
    # How often the worker collects delivery reports and replies from providers that keep them
    # for collection (inMobile's pull endpoints).
    pull_seconds: float = 30.0
    dispatch_concurrency: int = 8
    # Provider calls for one message before a temporary refusal is given up on (`failed`,
    # "gave up after N attempts", a `dispatch.gave_up` decision).
    dispatch_max_attempts: int = 5
    lease_seconds: int = 60
    # How long one provider call may take before it is abandoned as `unknown`. A lease must
    # outlast it comfortably, so that recovery never takes over a row still being sent.
    send_timeout_seconds: float = 10.0
    # Messages (or SMS segments, see below) a second per provider account and sender, shared
    # by all workers on the database (a `send_rates` row), to stay inside what the provider
    # account allows; 0 for no limit.
    sms_rate: float = 0
    email_rate: float = 0
    # What CARTBACK_SMS_RATE counts: "messages", or "segments" (a 3-part SMS costs three).
    sms_rate_unit: str = "messages"
    # An event stamped more than this far ahead of its receive time is clamped to the receive
    # time and marked: a shop clock running ahead must not outrank what is received later.
    future_skew_seconds: int = DEFAULT_FUTURE_SKEW_SECONDS
    # Where the `webhook` channel POSTs each message of that kind.
    sms_webhook_url: str | None = None
    email_webhook_url: str | None = None
    # The `smtp` email channel: one SMTP server for every store (a relay, a provider's
    # submission port). STARTTLS unless `smtp_tls` asks for implicit TLS (port 465).
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_starttls: bool = True
    smtp_tls: bool = False
    smtp_from: str | None = None
    smtp_from_name: str | None = None
    # Raw shop webhook bodies are kept this long for debugging and `cartback shops replay`.
    shop_payload_retention_days: int = 30
    # How often the worker polls each store connected to Magento 2; 0 leaves it to cron
    # (`cartback shops magento poll`).
    magento_poll_minutes: int = 0
    # How often the worker reconciles each store connected to Shopify with an API token (reads
    # back the abandoned checkouts and orders of the last `shopify_reconcile_window_hours`);
    # 0 leaves it to cron (`cartback shops shopify reconcile`).
    shopify_reconcile_minutes: int = 0
    shopify_reconcile_window_hours: int = 6
    # The key of the HMAC-SHA256 that erased shoppers' phones and emails are kept under in the
    # suppression list. Erasure refuses to run without it: a plain hash of a phone number is
    # reversible by trying every number.
    suppression_key: str | None = field(default=None, repr=False)
    # Where `customers/data_request` writes its JSON exports; unset: exports are only made on
    # demand by `cartback contacts export`.
    export_dir: Path | None = None
    # A secondary channel per kind, used while the primary refuses (channels/failover.py):
    # after `failover_failures` refusals in a row or within `failover_window_seconds`, the
    # primary's circuit opens for `failover_cooldown_seconds`, then one message tries it again.
    sms_failover_channel: str | None = None
    email_failover_channel: str | None = None
    sms_failover_webhook_url: str | None = None
    email_failover_webhook_url: str | None = None
    failover_failures: int = 5
    failover_window_seconds: float = 60.0
    failover_cooldown_seconds: float = 30.0
    # `/metrics` on the web server answers only `Authorization: Bearer <token>` when this is set.
    metrics_token: str | None = field(default=None, repr=False)
    # A worker run on its own (`cartback worker`) serves its counters on this port; 0: off.
    worker_metrics_port: int = 0
    worker_metrics_host: str = "127.0.0.1"
    # Outbound webhooks: one POST's timeout, and the attempts before a delivery is given up.
    webhook_timeout_seconds: float = 5.0
    webhook_max_attempts: int = 8
    # Requests the web server handles at once; more are answered 503 with Retry-After. The
    # database pool is sized from it, so load never waits on a pool that is too small.
    web_concurrency: int = 64
    # Accepted events are applied by the worker (`inbox` thread). `true`: the web server also
    # applies a request's events right after their commit, before answering (tests, one-off
    # tools); the answer is the same either way.
    inbox_apply_inline: bool = False
    inbox_batch: int = 500


_BOUNDS: dict[str, tuple[float, float]] = {
    "port": (1, 65535),
    "web_concurrency": (1, 10000),
    "inbox_batch": (1, 10000),
    "database_connect_timeout_seconds": (2, 300),
    "database_statement_timeout_seconds": (0.1, 3600),
    "event_max_age_days": (1, 36500),
    "worker_batch": (1, 10_000),
    "worker_poll_seconds": (0.01, 60),
    "dispatch_batch": (1, 10_000),
    "pull_seconds": (1, 3600),
    "dispatch_concurrency": (1, 256),
    "dispatch_max_attempts": (1, 100),
    "lease_seconds": (5, 3600),
    "send_timeout_seconds": (0.5, 300),
    "sms_rate": (0, 100_000),
    "email_rate": (0, 100_000),
    "future_skew_seconds": (0, 3600),
    "smtp_port": (1, 65535),
    "shop_payload_retention_days": (0, 3650),
    "failover_failures": (1, 1000),
    "failover_window_seconds": (1, 86400),
    "failover_cooldown_seconds": (1, 86400),
    "magento_poll_minutes": (0, 1440),
    "shopify_reconcile_minutes": (0, 1440),
    "shopify_reconcile_window_hours": (1, 720),
    "worker_metrics_port": (0, 65535),
    "webhook_timeout_seconds": (0.5, 60),
    "webhook_max_attempts": (1, 50),
}
CHANNELS = ("console", "jsonl", "null", "webhook", "smtp")
RATE_UNITS = ("messages", "segments")
BOOLEANS = {"1": True, "true": True, "yes": True, "on": True}
BOOLEANS |= {"0": False, "false": False, "no": False, "off": False}
# A lease is this many provider timeouts long, so a slow call ends long before the lease does.
LEASE_PER_TIMEOUT = 3


def env_name(field: str) -> str:
    return f"CARTBACK_{field.upper()}"


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for spec in fields(Settings):
        raw = environ.get(env_name(spec.name))
        if raw is None or raw == "":
            continue
        values[spec.name] = _convert(spec.name, raw, Settings.__dataclass_fields__[spec.name].type)
    values.update({key: value for key, value in overrides.items() if value is not None})
    settings = Settings(**values)  # type: ignore[arg-type]
    _validate(settings)
    return settings


def _convert(name: str, raw: str, kind: object) -> object:
    text = str(kind)
    try:
        if text == "int":
            return int(raw)
        if text == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(env_name(name), f"expected a number, got {raw!r}") from None
    if text == "bool":
        if raw.strip().lower() not in BOOLEANS:
            raise ConfigError(env_name(name), f"expected true or false, got {raw!r}")
        return BOOLEANS[raw.strip().lower()]
    if "Path" in text:
        return Path(raw)
    return raw


def _validate(settings: Settings) -> None:
    for name, (low, high) in _BOUNDS.items():
        value = getattr(settings, name)
        if not low <= value <= high:
            raise ConfigError(env_name(name), f"must be between {low:g} and {high:g}, got {value}")
    if settings.lease_seconds < LEASE_PER_TIMEOUT * settings.send_timeout_seconds:
        raise ConfigError(
            env_name("lease_seconds"),
            f"must be at least {LEASE_PER_TIMEOUT}x {env_name('send_timeout_seconds')} "
            f"({settings.send_timeout_seconds:g} s), got {settings.lease_seconds}",
        )
    if settings.sms_rate_unit not in RATE_UNITS:
        raise ConfigError(
            env_name("sms_rate_unit"),
            f"must be one of {', '.join(RATE_UNITS)}, got {settings.sms_rate_unit!r}",
        )
    for name in ("sms_channel", "email_channel", "sms_failover_channel", "email_failover_channel"):
        value = getattr(settings, name)
        if value is None:
            continue
        if value not in CHANNELS:
            raise ConfigError(
                env_name(name), f"unknown channel {value!r}; one of {', '.join(CHANNELS)}"
            )
        url_field = name.replace("_channel", "_webhook_url")
        url = getattr(settings, url_field)
        if value == "webhook" and url is None:
            raise ConfigError(env_name(url_field), "must be set for the webhook channel")
        if url is not None and urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(env_name(url_field), f"must be an http(s) URL, got {url!r}")
    if settings.sms_channel == "smtp":
        raise ConfigError(env_name("sms_channel"), "smtp sends email only")
    if settings.email_channel == "smtp":
        _validate_smtp(settings)
    parts = urlsplit(settings.base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            env_name("base_url"), f"must be an http(s) URL, got {settings.base_url!r}"
        )
    scheme = settings.database_url.split(":", 1)[0]
    if not scheme.startswith(("sqlite", "postgresql")):
        raise ConfigError(
            env_name("database_url"),
            f"must start with sqlite:/// or postgresql+psycopg://, got {scheme!r}",
        )
    if settings.suppression_key is not None and len(settings.suppression_key) < 16:
        raise ConfigError(env_name("suppression_key"), "must be at least 16 characters")
    if settings.flows_dir is not None and not settings.flows_dir.is_dir():
        raise ConfigError(env_name("flows_dir"), f"{settings.flows_dir} is not a directory")


def smtp_options(settings: Settings) -> dict[str, str]:
    """The `smtp` channel's options from CARTBACK_SMTP_* (the names a per-store config uses)."""
    options = {
        "host": settings.smtp_host or "",
        "port": str(settings.smtp_port),
        "starttls": str(settings.smtp_starttls and not settings.smtp_tls).lower(),
        "tls": str(settings.smtp_tls).lower(),
        "from": settings.smtp_from or "",
        "from_name": settings.smtp_from_name or "",
        "username": settings.smtp_username or "",
        "password": settings.smtp_password or "",
    }
    return {name: value for name, value in options.items() if value}


def _validate_smtp(settings: Settings) -> None:
    # Imported here: the channel pulls in the SMTP client, which only this channel needs.
    from cartback.channels.smtp import check_options

    try:
        check_options(smtp_options(settings))
    except ValueError as error:
        option, _, message = str(error).partition(": ")
        raise ConfigError(env_name(f"smtp_{option}"), message) from None
