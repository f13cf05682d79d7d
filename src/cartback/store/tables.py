"""The schema, as SQLAlchemy Core tables. Alembic migrations are written from these."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite has no 64-bit autoincrement alias for BIGINT; INTEGER PRIMARY KEY is already 64-bit there.
Id = BigInteger().with_variant(Integer(), "sqlite")
Money = Numeric(14, 4)
# The pool of per-cart codes a shop issues (services/compose.py's UNIQUE_POOL).
UNIQUE_POOL_WHERE = "pool = '@unique'"
EXPIRING_WHERE = "pool = '@unique' AND removed_at IS NULL"


class UtcDateTime(TypeDecorator[object]):
    """Timezone-aware UTC datetimes on both backends (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: object, dialect: object) -> object:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError("naive datetime given to the store; pass an aware UTC time")
            return value.astimezone(UTC)
        return value

    def process_result_value(self, value: object, dialect: object) -> object:
        if isinstance(value, datetime):
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value


stores = Table(
    "stores",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("slug", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("brand", String(60), nullable=False),
    Column("default_zone", String(64), nullable=False),
    Column("default_locale", String(16), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("domains", JSON, nullable=False),
    Column("postal_address", Text),
    Column("support_contact", String(200)),
    Column("flow_name", String(64), nullable=False),
    # The shop platform, for what its restore links can carry (a Shopify discount path, say).
    Column("platform", String(20), nullable=False, server_default="generic"),
    # The store's checked send policy (cooldowns, caps, stricter rules); NULL for the defaults.
    Column("policy", JSON),
    # Replies that are not STOP/START/HELP are POSTed here as JSON (a helpdesk, a relay).
    Column("support_webhook_url", Text),
    # Attribution windows and model, currency rates and message prices (core.attribution,
    # services.reports); NULL for the defaults.
    Column("measurement", JSON),
    # How long a shopper in one flow is kept out of the store's other flows; NULL: the default.
    Column("flow_suppression_seconds", Integer),
    Column("created_at", UtcDateTime, nullable=False),
)

# The flows a store runs, each with the event type that enrolls a cart and a priority (1 first).
# A store with no rows runs `stores.flow_name` on checkouts (as every store did before).
store_flows = Table(
    "store_flows",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("flow_name", String(64), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("store_id", "flow_name"),
)

# A store's own SMS or email provider. `secrets` holds references only (`env:NAME`,
# `file:/path`), resolved when the channel is built: never a secret in clear. `version` moves
# on every change, so workers rebuild the channel they cached.
store_providers = Table(
    "store_providers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("options", JSON, nullable=False),
    Column("secrets", JSON, nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("store_id", "kind"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("label", String(100), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime),
)

flow_versions = Table(
    "flow_versions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("version", String(16), nullable=False),
    Column("source_name", String(300), nullable=False),
    Column("source", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("name", "version"),
)

contacts = Table(
    "contacts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("phone", String(20)),
    Column("email", String(320)),
    Column("first_name", String(100)),
    Column("last_name", String(100)),
    Column("locale", String(16)),
    Column("zone", String(64)),
    Column("country", String(2)),
    Column("region", String(8)),
    # What the phone number says (country, US state, zones), derived when the number is stored so
    # the timer never parses it per message. phone_zones NULL: not derived yet; "": no zone known.
    Column("phone_country", String(2)),
    Column("phone_region", String(8)),
    # Text: a NANP number outside the US (+1 473...) maps to every zone of the plan.
    Column("phone_zones", Text),
    # The shipping address's postal code and the zones it settles, looked up when it is stored
    # (cartback.postcodes). postal_zones NULL: no code; "": a code that settles nothing.
    Column("postal_code", String(16)),
    Column("postal_zones", Text),
    Column("sms_marketing", Boolean, nullable=False, default=False),
    Column("email_marketing", Boolean, nullable=False, default=False),
    Column("orders_count", Integer, nullable=False, default=0),
    Column("tags", JSON, nullable=False),
    # The newest marketing opt-out on any channel: running flows exit when it is after their start.
    Column("opted_out_at", UtcDateTime),
    # Set when the shopper's data was erased on request: nothing is ever sent to it again.
    Column("erased_at", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("store_id", "phone"),
    UniqueConstraint("store_id", "email"),
)

consent_events = Table(
    "consent_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("contact_id", ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("channel", String(8), nullable=False),
    Column("purpose", String(20), nullable=False),
    Column("granted", Boolean, nullable=False),
    Column("source", String(20), nullable=False),
    Column("wording", Text),
    Column("wording_hash", String(64)),
    Column("ip", String(64)),
    Column("user_agent", String(400)),
    Column("evidence", JSON),
    # The shop's (or provider's) time for the change: evidence, shown beside the receive time.
    Column("at", UtcDateTime, nullable=False),
    # When cartback recorded the entry: the ledger is folded in this order (then id), so a shop
    # clock running ahead cannot put a grant after the shopper's later opt-out.
    Column("received_at", UtcDateTime, nullable=False),
)

carts = Table(
    "carts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("token", String(200), nullable=False),
    Column("contact_id", ForeignKey("contacts.id", ondelete="SET NULL")),
    Column("lines", JSON, nullable=False),
    Column("value", Money, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("restore_url", Text),
    Column("status", String(10), nullable=False),
    Column("tags", JSON, nullable=False),
    # The shop's time of the newest event applied: older events are stale and change nothing.
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("store_id", "token"),
)

orders = Table(
    "orders",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("order_ref", String(200), nullable=False),
    Column("cart_id", ForeignKey("carts.id", ondelete="SET NULL"), index=True),
    Column("contact_id", ForeignKey("contacts.id", ondelete="SET NULL")),
    Column("value", Money, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("occurred_at", UtcDateTime, nullable=False),
    UniqueConstraint("store_id", "order_ref"),
)

enrollments = Table(
    "enrollments",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("cart_id", ForeignKey("carts.id", ondelete="CASCADE"), nullable=False),
    Column("flow_name", String(64), nullable=False),
    Column("flow_version", String(16), nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("state", String(10), nullable=False),
    Column("abandoned_at", UtcDateTime, nullable=False),
    # NULL once the enrollment has ended: the due index then only holds live timers.
    Column("wake_at", UtcDateTime),
    Column("variant", String(32)),
    Column("holdout", Boolean, nullable=False),
    # The channel whose steps this cart skips (the flow's channel holdout), or NULL.
    Column("held_channel", String(8)),
    # Steps held back by a rule, each with its own time, and those released (rows.holds_to_json).
    Column("holds", JSON),
    Column("exit_reason", String(40)),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("cart_id", "flow_name"),
    Index("ix_enrollments_wake_at", "wake_at"),
    # Reports take a flow's carts abandoned in a window (services.reports).
    Index(
        "ix_enrollments_store_id_flow_name_abandoned_at", "store_id", "flow_name", "abandoned_at"
    ),
    # The daily report summary is built one store and day at a time, every flow at once.
    Index("ix_enrollments_store_id_abandoned_at", "store_id", "abandoned_at"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    # NULL for a service message (a STOP confirmation, a HELP answer), which has `service_key`.
    Column("enrollment_id", ForeignKey("enrollments.id", ondelete="CASCADE")),
    Column("contact_id", ForeignKey("contacts.id", ondelete="SET NULL")),
    Column("step_id", String(64), nullable=False),
    # `reply:<reply id>` for a transactional answer to a shopper's reply: at most one each, and
    # sent even to a shopper who opted out (it is no marketing).
    Column("service_key", String(64), unique=True),
    Column("channel", String(8), nullable=False),
    Column("to_address", String(320), nullable=False),
    Column("subject", Text),
    Column("body", Text, nullable=False),
    Column("html", Text),
    Column("headers", JSON),
    Column("encoding", String(8)),
    Column("segments", Integer),
    # pending → claimed → sending → sent → delivered, or failed / unknown / cancelled / expired.
    Column("status", String(10), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("available_at", UtcDateTime, nullable=False),
    # Quiet hours or the rule's deadline begin here: a message not out by then is never sent.
    Column("send_before", UtcDateTime),
    Column("lease_owner", String(64)),
    Column("lease_until", UtcDateTime),
    Column("provider", String(32)),
    Column("provider_id", String(128)),
    Column("error", Text),
    # The provider's or carrier's own code for a refusal or a failed delivery (Twilio 30003).
    Column("error_code", String(32)),
    Column("cost", Money),
    Column("created_at", UtcDateTime, nullable=False),
    Column("sent_at", UtcDateTime),
    Column("delivered_at", UtcDateTime),
    Column("failed_at", UtcDateTime),
    Column("opened_at", UtcDateTime),
    Column("clicked_at", UtcDateTime),
    Column("updated_at", UtcDateTime, nullable=False),
    # At most one message per cart and step, whatever the number of workers.
    UniqueConstraint("enrollment_id", "step_id"),
    Index("ix_outbox_status_available_at", "status", "available_at"),
    # Cooldowns and caps read a contact's recent sends for every message the timer composes;
    # on PostgreSQL the index carries the status they filter by (store/timer_sql.py).
    Index(
        "ix_outbox_contact_id_created_at",
        "contact_id",
        "created_at",
        postgresql_include=["status"],
    ),
    # Delivery reports that carry only the provider's id find their message by it.
    Index("ix_outbox_provider_provider_id", "provider", "provider_id"),
)

# Every message a shopper sent us (an SMS reply), with what cartback did about it.
replies = Table(
    "replies",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("contact_id", ForeignKey("contacts.id", ondelete="SET NULL"), index=True),
    # The contact's most recent cart and enrollment, for the cart's timeline.
    Column("cart_id", ForeignKey("carts.id", ondelete="SET NULL")),
    Column("enrollment_id", ForeignKey("enrollments.id", ondelete="SET NULL")),
    Column("provider", String(32), nullable=False),
    Column("channel", String(8), nullable=False),
    # The provider's message id, or a digest of sender, text and time when it gives none: a
    # webhook delivered twice is recorded (and answered) once.
    Column("dedup_key", String(128), nullable=False),
    Column("provider_id", String(128)),
    Column("sender", String(320), nullable=False),
    Column("recipient", String(320)),
    Column("text", Text, nullable=False),
    # stop, start, help or other (core.replies), the keyword, and whether a person should look.
    Column("kind", String(8), nullable=False),
    Column("keyword", String(64)),
    Column("needs_review", Boolean, nullable=False),
    # What was done: opted_out, resubscribed, help_sent, forwarded, ...
    Column("action", String(20), nullable=False),
    Column("forwarded_at", UtcDateTime),
    Column("forward_error", Text),
    Column("at", UtcDateTime),
    Column("received_at", UtcDateTime, nullable=False),
    UniqueConstraint("store_id", "provider", "dedup_key"),
)

decisions = Table(
    "decisions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("enrollment_id", ForeignKey("enrollments.id", ondelete="CASCADE"), index=True),
    Column("cart_id", ForeignKey("carts.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("step_id", String(64)),
    Column("outcome", String(12), nullable=False),
    Column("rule", String(64)),
    Column("reason", Text, nullable=False),
    Column("at", UtcDateTime, nullable=False),
)

event_receipts = Table(
    "event_receipts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("source", String(32), nullable=False),
    Column("event_id", String(200), nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    # Seconds the event's occurred_at was ahead of received_at when ingest clamped it; NULL if not.
    Column("clamped_seconds", BigInteger),
    UniqueConstraint("store_id", "source", "event_id"),
)

# Ingest is an append: each accepted event is one row, committed before its answer, then
# applied by the worker (services/inbox.py). The unique key is the event id per store and source.
inbox = Table(
    "inbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("source", String(32), nullable=False),
    Column("event_id", String(200), nullable=False),
    # The event as received (one event of the request's body), validated again when applied;
    # dropped once applied, so no shopper's details stay here (an erasure need not look).
    Column("body", Text),
    Column("received_at", UtcDateTime, nullable=False),
    Column("applied_at", UtcDateTime),
    # What applying it made of it: accepted, duplicate or stale, and why.
    Column("status", String(16)),
    Column("detail", Text),
    # A row that cannot be applied keeps its error until it is retried (`cartback inbox`).
    Column("error", Text),
    Column("attempts", Integer, nullable=False, default=0),
    UniqueConstraint("store_id", "source", "event_id"),
    Index(
        "ix_inbox_pending",
        "id",
        sqlite_where=text("applied_at IS NULL AND error IS NULL"),
        postgresql_where=text("applied_at IS NULL AND error IS NULL"),
    ),
)

links = Table(
    "links",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # Random, ≥ 64 bits, base62: the only thing a shopper's URL carries.
    Column("token", String(32), nullable=False, unique=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    # The message it belongs to, by the outbox's own unique key: links are minted before the
    # outbox row exists, in the same transaction.
    Column("enrollment_id", ForeignKey("enrollments.id", ondelete="CASCADE")),
    Column("step_id", String(64)),
    Column("cart_id", ForeignKey("carts.id", ondelete="CASCADE")),
    Column("contact_id", ForeignKey("contacts.id", ondelete="CASCADE")),
    # click: redirect to `destination`; open: the email pixel; unsubscribe: one-click opt-out.
    Column("purpose", String(12), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("destination", Text),
    Column("created_at", UtcDateTime, nullable=False),
)

clicks = Table(
    "clicks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("link_id", ForeignKey("links.id", ondelete="CASCADE"), nullable=False, index=True),
    # human, bot, prefetch or head: only human clicks count for flows and attribution.
    Column("kind", String(10), nullable=False),
    Column("user_agent", String(300)),
    Column("at", UtcDateTime, nullable=False),
)

discount_codes = Table(
    "discount_codes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("pool", String(64), nullable=False),
    Column("code", String(64), nullable=False),
    # Set once a cart is given the code: each pooled code is used by one cart only.
    Column("cart_id", ForeignKey("carts.id", ondelete="SET NULL")),
    Column("assigned_at", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
    # Per-cart codes a shop created (pool `@unique`): the platform that holds the code, its
    # name for the object to delete (Shopify price rule, WooCommerce coupon), when the code
    # expires, and when the cleanup removed it from the shop after it expired unused.
    Column("platform", String(20)),
    Column("platform_ref", String(100)),
    Column("expires_at", UtcDateTime),
    Column("removed_at", UtcDateTime),
    UniqueConstraint("store_id", "pool", "code"),
    Index("ix_discount_codes_free", "store_id", "pool", "assigned_at"),
    # One shop-issued code per cart, whichever worker or flow asked for it.
    Index(
        "uq_discount_codes_unique_cart",
        "store_id",
        "cart_id",
        unique=True,
        sqlite_where=text(UNIQUE_POOL_WHERE),
        postgresql_where=text(UNIQUE_POOL_WHERE),
    ),
    # The cleanup's worklist: shop-issued codes not yet removed, by expiry.
    Index(
        "ix_discount_codes_expiring",
        "expires_at",
        sqlite_where=text(EXPIRING_WHERE),
        postgresql_where=text(EXPIRING_WHERE),
    ),
)

# A store's link to its shop platform. Secrets are references (`env:NAME`, `file:PATH`) resolved
# when used, never the secret itself.
shop_connections = Table(
    "shop_connections",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("platform", String(20), nullable=False),
    Column("shop_domain", String(255), nullable=False),
    Column("secret_ref", String(400), nullable=False),
    # Accepted beside the current secret while a rotation settles.
    Column("previous_secret_ref", String(400)),
    Column("api_token_ref", String(400)),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("store_id", "platform"),
)

# Each webhook delivery once, by the platform's delivery id, with its raw body for replay until
# the retention prune blanks it.
shop_deliveries = Table(
    "shop_deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("platform", String(20), nullable=False),
    Column("delivery_id", String(200), nullable=False),
    # Shared by every delivery of one shop action (Shopify X-Shopify-Event-Id).
    Column("event_id", String(200)),
    Column("topic", String(100), nullable=False),
    Column("payload", Text),
    Column("results", JSON),
    Column("received_at", UtcDateTime, nullable=False),
    Column("replayed_at", UtcDateTime),
    UniqueConstraint("store_id", "platform", "delivery_id"),
    Index("ix_shop_deliveries_received_at", "received_at"),
)

# How a platform's thin payloads name a cart: Shopify's checkouts/delete carries the checkout
# id and cart_token but not the checkout token the cart is keyed by.
shop_checkouts = Table(
    "shop_checkouts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("platform", String(20), nullable=False),
    Column("token", String(200), nullable=False),
    Column("checkout_id", String(100)),
    Column("cart_token", String(200)),
    UniqueConstraint("store_id", "platform", "token"),
    Index("ix_shop_checkouts_checkout_id", "store_id", "checkout_id"),
    Index("ix_shop_checkouts_cart_token", "store_id", "cart_token"),
)

# Erased shoppers, as keyed hashes (HMAC-SHA256) of their phone and email: a re-import of the
# same person is recognised without keeping who they were.
suppressions = Table(
    "suppressions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("reason", String(40), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("store_id", "kind", "digest"),
)

# One shared token bucket per provider account and sender, so a send rate holds across all the
# workers (services/sendrate.py). The rate itself comes from the settings, not from here.
send_rates = Table(
    "send_rates",
    metadata,
    Column("account", String(128), primary_key=True),
    Column("sender", String(64), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

# People who may log in to the dashboard, one store each; the password is kept as an scrypt hash.
dashboard_users = Table(
    "dashboard_users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("email", String(320), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=False),
    # Failed logins since the last success: past a threshold each further try waits longer.
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
)

# A logged-in browser: the cookie carries the token, the table only its SHA-256.
dashboard_sessions = Table(
    "dashboard_sessions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "user_id", ForeignKey("dashboard_users.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)

# The only addresses the dashboard's test send may reach.
test_contacts = Table(
    "test_contacts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("address", String(320), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("store_id", "channel", "address"),
)

# Which message an order is credited to (core.attribution), written when the order arrives so
# reports are queries. One row per order at most: an order is never credited twice.
attributions = Table(
    "attributions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("order_id", ForeignKey("orders.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("outbox_id", ForeignKey("outbox.id", ondelete="SET NULL")),
    Column("enrollment_id", ForeignKey("enrollments.id", ondelete="SET NULL")),
    Column("flow_name", String(64), nullable=False),
    Column("step_id", String(64), nullable=False),
    Column("variant", String(32)),
    Column("channel", String(8), nullable=False),
    # click, open or delivery: the event that earned the credit.
    Column("touch", String(10), nullable=False),
    # cart (the order's cart or checkout token) or contact (the same shopper).
    Column("matched_by", String(8), nullable=False),
    Column("model", String(12), nullable=False),
    Column("touch_at", UtcDateTime, nullable=False),
    Column("order_at", UtcDateTime, nullable=False),
    Column("revenue", Money, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_attributions_enrollment_id", "enrollment_id"),
    Index("ix_attributions_store_id_order_at", "store_id", "order_at"),
)

# Outbound webhooks: a store's endpoints, and a durable row per (endpoint, event) written in the
# transaction of the change that caused it, sent by the worker outside any transaction
# (services/outbound.py). `event_key` makes a producer that runs twice write the row once.
webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("url", String(2000), nullable=False),
    Column("events", JSON, nullable=False),
    # `env:NAME` or `file:/path`; the secret itself is never stored.
    Column("secret_ref", String(500), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("endpoint_id", ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False),
    Column("event_id", String(40), nullable=False),
    Column("event_key", String(200), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("payload", Text, nullable=False),
    # pending → sending → delivered, or failed (given up, with `error`).
    Column("status", String(10), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("available_at", UtcDateTime, nullable=False),
    Column("lease_until", UtcDateTime),
    Column("error", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("delivered_at", UtcDateTime),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("endpoint_id", "event_key"),
    Index("ix_webhook_deliveries_status_available_at", "status", "available_at"),
)

# The flow report's daily summary (services/report_summary.py): the report's grouped counts for
# the carts a store abandoned on one UTC day, so a report over a month reads a few hundred rows.
# A row's `kind` says which grouping it holds; the columns that grouping does not use are NULL:
#   cohort    (flow, variant, holdout, held_channel): enrolled
#   orders    (flow, variant, holdout, held_channel, currency): converted, revenue, squares
#             (orders naming the cart after it was abandoned, attributed or not)
#   messages  (flow, step, variant, channel, country): sent, delivered, failed, clicked, segments
#   credits   (flow, step, variant, channel, currency): recovered, revenue, squares
# Sums stay in their own currency and segments by destination country: rates and prices are
# applied when the report is read, so a changed price table changes past reports as before.
report_daily = Table(
    "report_daily",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), nullable=False),
    Column("day", Date, nullable=False),
    Column("kind", String(8), nullable=False),
    Column("flow_name", String(64), nullable=False),
    Column("step_id", String(64)),
    Column("variant", String(32)),
    Column("channel", String(8)),
    Column("holdout", Boolean),
    Column("held_channel", String(8)),
    Column("country", String(2)),
    Column("currency", String(3)),
    Column("enrolled", Integer, nullable=False, default=0),
    Column("converted", Integer, nullable=False, default=0),
    Column("sent", Integer, nullable=False, default=0),
    Column("delivered", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("clicked", Integer, nullable=False, default=0),
    Column("segments", Integer, nullable=False, default=0),
    Column("recovered", Integer, nullable=False, default=0),
    Column("revenue", Numeric(20, 4), nullable=False, default=0),
    Column("squares", Numeric(30, 8), nullable=False, default=0),
    Index("ix_report_daily_store_id_day", "store_id", "day"),
)

# The days whose summary is built. Triggers on the report's facts (store/report_triggers.py)
# mark a built day stale, in the transaction that changes it, so a late receipt or order for a
# past day is never missed; stale days are read live until the worker rebuilds them.
report_days = Table(
    "report_days",
    metadata,
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("built_at", UtcDateTime, nullable=False),
)

# Append-only (no row is ever updated, so concurrent writers never wait on each other).
report_stale = Table(
    "report_stale",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("store_id", Id, nullable=False),
    Column("day", Date, nullable=False),
    Index("ix_report_stale_store_id_day", "store_id", "day"),
)
