"""SMPP 3.4 direct: one persistent transceiver bind to an SMSC, kept by a background thread.

Options (`ProviderConfig.options`):

- ``host`` (required), ``port`` (default 2775).
- ``system_id`` (required), ``password`` (a secret), ``system_type`` (default empty).
- ``from``: the sender; ``message.sender`` wins. An alphanumeric sender goes with TON/NPI 5/0,
  a short code (up to 8 digits) with 3/0, a number with 1/1; ``source_ton``/``source_npi``
  override. Destinations go as international numbers (TON/NPI 1/1) without the ``+``.
- ``enquire_link_seconds`` (default 30): an idle bind sends `enquire_link`; one unanswered
  within the timeout counts the connection as dead.
- ``reconnect_max_seconds`` (default 30): reconnects back off from 0.5 s up to this.

`send` submits each part (`data_coding` 0 for GSM-7, 8 for UCS-2; a UDH for long texts) and
waits, within the config timeout, for every `submit_sm_resp`: the first part's `message_id`
is the provider id. No answer in time, or a connection lost with a submit in flight, is
UNKNOWN; no bind within the timeout is a retryable refusal (nothing went out).

Receipts and replies arrive on the bind as `deliver_sm`, not over HTTP: each becomes a
`DeliveryUpdate` (receipt bit in `esm_class`, `receipted_message_id` / `message_state` TLVs
or the `id:… stat:… err:…` text) or an `InboundReply`, handed to `on_update` / `on_reply`,
or by default put on `events` for the worker to drain (`drain`). The bind opens on the first
`send`, `drain` or `wait_bound` (or `start`), so the worker draining `events` keeps it open
even when it has nothing to send. The SMSC's ids of a
message's parts are remembered (in memory) so a receipt for any part carries our key; after
a restart a receipt is matched by `provider_id` alone.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from smpplib import client as smpp_client
from smpplib import consts as smpp_consts
from smpplib import exceptions as smpp_errors
from smpplib import smpp

from cartback.channels.smppcodec import (
    ESM_CLASS_INTERMEDIATE,
    ESM_CLASS_RECEIPT,
    ESM_CLASS_TYPE_MASK,
    decode_text,
    encode_text,
    id_forms,
    read_receipt,
    split_udh,
)
from cartback.core.events import DeliveryUpdate, InboundReply
from cartback.core.model import Channel
from cartback.ports import (
    LookupResult,
    LookupStatus,
    OutboundMessage,
    ProviderConfig,
    SendResult,
    SendStatus,
    WebhookRequest,
)

log = logging.getLogger(__name__)
# smpplib dumps every PDU in hex at debug level, bodies and numbers included: never let it.
_WIRE_LOG = "cartback.channels.smpp.wire"
logging.getLogger(_WIRE_LOG).setLevel(logging.INFO)

Event = DeliveryUpdate | InboundReply

# command_status values that a later try may get past.
_RETRYABLE_STATUS = frozenset({0x08, 0x14, 0x45, 0x58, 0x61, 0x64})  # SYSERR, MSGQFUL, ...
_REMEMBERED_IDS = 100_000
_POLL_SECONDS = 0.2


@dataclass
class _Pending:
    key: str
    first_id: str | None = None  # the first part's id, for the later parts
    done: threading.Event = field(default_factory=threading.Event)
    status: int | None = None
    message_id: str | None = None
    lost: bool = False


@dataclass
class _Concat:
    total: int
    parts: dict[int, str] = field(default_factory=dict)


class _SequenceGenerator:
    """smpplib asks for sequence numbers from two threads; hand them out under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sequence = 0

    @property
    def sequence(self) -> int:
        return self._sequence

    def next_sequence(self) -> int:
        with self._lock:
            self._sequence = self._sequence % 0x7FFFFFFF + 1
            return self._sequence


class SmppChannel:
    name = "smpp"

    def __init__(
        self,
        config: ProviderConfig,
        *,
        on_update: Callable[[DeliveryUpdate], None] | None = None,
        on_reply: Callable[[InboundReply], None] | None = None,
        start: bool = False,
    ) -> None:
        options = config.options
        missing = [key for key in ("host", "system_id") if not options.get(key)]
        if missing:
            raise ValueError(f"smpp: missing option(s): {', '.join(missing)}")
        self.kind = config.kind
        self.config = config
        self._host = options["host"]
        self._port = int(_number(options, "port", 2775))
        self._system_id = options["system_id"]
        self._password = options.get("password", "")
        self._system_type = options.get("system_type", "")
        self._sender = options.get("from") or None
        self._source_ton = _optional_int(options, "source_ton")
        self._source_npi = _optional_int(options, "source_npi")
        self._enquire_every = _number(options, "enquire_link_seconds", 30)
        self._reconnect_max = _number(options, "reconnect_max_seconds", 30)
        self._timeout = config.timeout
        self.events: queue.Queue[Event] = queue.Queue()
        self._on_update = on_update or self.events.put
        self._on_reply = on_reply or self.events.put
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._bound = threading.Event()
        self._stopping = threading.Event()
        self._client: Any = None
        self._pending: dict[int, _Pending] = {}
        # SMSC id of each part (every form of it) -> (our key, the first part's id).
        self._ids: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._sent: OrderedDict[str, str] = OrderedDict()  # our key -> first part's id
        # Receipts that arrived before their submit_sm_resp: id -> (update, when).
        self._early: dict[str, tuple[DeliveryUpdate, float]] = {}
        self._concat: OrderedDict[tuple[str, int], _Concat] = OrderedDict()
        self.binds = 0
        self.enquire_links_answered = 0
        self._thread = threading.Thread(target=self._run, name="smpp-bind", daemon=True)
        self._start_lock = threading.Lock()
        if start:
            self.start()

    # -- the bind --------------------------------------------------------------------------

    @property
    def bound(self) -> bool:
        return self._bound.is_set()

    def start(self) -> None:
        """Open the bind (once). `send`, `drain` and `wait_bound` call it, so a channel built
        only to answer an HTTP callback never connects."""
        with self._start_lock:
            if self._thread.ident is None and not self._stopping.is_set():
                self._thread.start()

    def wait_bound(self, timeout: float) -> bool:
        self.start()
        return self._bound.wait(timeout)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            client = None
            try:
                client = self._bind()
                backoff = 0.5
                self._serve(client)
            except (smpp_errors.ConnectionError, smpp_errors.PDUError, OSError) as error:
                if not self._stopping.is_set():
                    log.warning(
                        "smpp bind to %s:%s lost: %s %s",
                        self._host,
                        self._port,
                        type(error).__name__,
                        error,
                    )
            except Exception:  # the bind thread must outlive any surprise
                log.exception("smpp bind thread error")
            finally:
                self._drop(client)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, self._reconnect_max)

    def _bind(self) -> Any:
        client = smpp_client.Client(
            self._host,
            self._port,
            timeout=self._timeout,
            sequence_generator=_SequenceGenerator(),
            logger_name=_WIRE_LOG,
            allow_unknown_opt_params=True,
        )
        try:
            client.connect()
            client.bind_transceiver(
                system_id=self._system_id,
                password=self._password,
                system_type=self._system_type,
            )
        except BaseException:
            client.disconnect()  # a refused bind must not leave its socket open
            raise
        with self._state_lock:
            self._client = client
            self.binds += 1
        self._bound.set()
        log.info("smpp bound to %s:%s as transceiver", self._host, self._port)
        return client

    def _drop(self, client: Any) -> None:
        self._bound.clear()
        with self._state_lock:
            if self._client is client:
                self._client = None
            pending, self._pending = self._pending, {}
        for waiting in pending.values():
            waiting.lost = True
            waiting.done.set()
        if client is not None:
            with contextlib.suppress(OSError):
                client.disconnect()

    def _serve(self, client: Any) -> None:
        last_traffic = time.monotonic()
        enquired_at: float | None = None
        while not self._stopping.is_set():
            readable, _, _ = select.select([client._socket], [], [], _POLL_SECONDS)
            now = time.monotonic()
            if self._early:
                self._release_stale(now)
            if readable:
                pdu = client.read_pdu()
                last_traffic = now
                if pdu.command == "enquire_link_resp":
                    enquired_at = None
                    self.enquire_links_answered += 1
                elif pdu.command == "unbind":
                    self._write(client, "unbind_resp", sequence=pdu.sequence)
                    raise smpp_errors.ConnectionError("the SMSC unbound")
                else:
                    self._handle(client, pdu)
            elif enquired_at is not None and now - enquired_at > self._timeout:
                raise smpp_errors.ConnectionError("enquire_link went unanswered")
            elif enquired_at is None and now - last_traffic >= self._enquire_every:
                self._write(client, "enquire_link")
                enquired_at = now

    def _write(
        self, client: Any, command: str, *, sequence: int | None = None, **fields: Any
    ) -> Any:
        with self._write_lock:
            pdu = smpp.make_pdu(command, client=client, **fields)
            if sequence is not None:
                # A response echoes its request's sequence; smpplib ignores it as a keyword.
                pdu.sequence = sequence
            client.send_pdu(pdu)
            return pdu

    def _handle(self, client: Any, pdu: Any) -> None:
        if pdu.command in ("submit_sm_resp", "generic_nack"):
            with self._state_lock:
                waiting = self._pending.pop(pdu.sequence, None)
            if waiting is not None:
                waiting.status = int(pdu.status)
                raw_id = getattr(pdu, "message_id", None)
                waiting.message_id = _text(raw_id) or None
                if waiting.status == smpp_consts.SMPP_ESME_ROK and waiting.message_id:
                    # Known before the receipt can arrive, which may be the next PDU.
                    first = waiting.first_id or waiting.message_id
                    self._remember(waiting.key, first, [waiting.message_id])
                    self._release_early(waiting.message_id, waiting.key, first)
                waiting.done.set()
        elif pdu.command == "deliver_sm":
            status = smpp_consts.SMPP_ESME_ROK
            try:
                self._deliver(pdu)
            except Exception:
                # The application could not take it: ask the SMSC to deliver it again later.
                log.exception("smpp deliver_sm could not be handed on")
                status = 0x64  # ESME_RX_T_APPN: temporary application error
            self._write(client, "deliver_sm_resp", sequence=pdu.sequence, status=status)
        elif pdu.command == "enquire_link":
            self._write(client, "enquire_link_resp", sequence=pdu.sequence)

    # -- receipts and replies --------------------------------------------------------------

    def _deliver(self, pdu: Any) -> None:
        esm_class = int(pdu.esm_class or 0)
        short_message = bytes(pdu.short_message or b"") or bytes(
            getattr(pdu, "message_payload", None) or b""
        )
        if esm_class & ESM_CLASS_TYPE_MASK in (ESM_CLASS_RECEIPT, ESM_CLASS_INTERMEDIATE):
            update = self.receipt_update(
                short_message,
                receipted_message_id=_text(getattr(pdu, "receipted_message_id", None)),
                message_state=getattr(pdu, "message_state", None),
                network_error=getattr(pdu, "network_error_code", None),
            )
            if update is None:
                return
            with self._state_lock:
                racing = update.message_key is None and bool(self._pending)
                if racing:
                    # SMSCs may report before they answer the submit: hold the receipt until
                    # the submit_sm_resp names the id (or for one timeout at most).
                    self._early[update.raw["id"]] = (update, time.monotonic())
            if not racing:
                self._on_update(update)
            return
        if esm_class & ESM_CLASS_TYPE_MASK:
            return  # SME acknowledgements and the like: nothing cartback tracks
        reply = self._mo_reply(
            short_message,
            esm_class=esm_class,
            data_coding=int(pdu.data_coding or 0),
            source=_text(pdu.source_addr),
            source_ton=int(pdu.source_addr_ton or 0),
            destination=_text(pdu.destination_addr),
        )
        if reply is not None:
            self._on_reply(reply)

    def _release_early(self, message_id: str, key: str, first_id: str) -> None:
        forms = set(id_forms(message_id))
        with self._state_lock:
            held = [
                (held_id, update)
                for held_id, (update, _) in self._early.items()
                if forms & set(id_forms(held_id))
            ]
            for held_id, _ in held:
                del self._early[held_id]
        for _, update in held:
            self._hand_on(replace(update, message_key=key, provider_id=first_id))

    def _release_stale(self, now: float) -> None:
        with self._state_lock:
            stale = [
                (held_id, update)
                for held_id, (update, since) in self._early.items()
                if now - since > self._timeout
            ]
            for held_id, _ in stale:
                del self._early[held_id]
        for _, update in stale:
            self._hand_on(update)  # matched by provider id alone, if at all

    def _hand_on(self, update: DeliveryUpdate) -> None:
        # A held receipt was already acknowledged to the SMSC: nothing to refuse any more.
        try:
            self._on_update(update)
        except Exception:
            log.exception("smpp receipt could not be handed on")

    def receipt_update(
        self,
        text: bytes,
        *,
        receipted_message_id: str | None,
        message_state: int | None,
        network_error: bytes | None,
    ) -> DeliveryUpdate | None:
        receipt = read_receipt(text, receipted_message_id, message_state, network_error)
        if receipt is None or receipt.status is None:
            return None
        with self._state_lock:
            known = next(
                (self._ids[form] for form in id_forms(receipt.message_id) if form in self._ids),
                None,
            )
        key, provider_id = known if known else (None, receipt.message_id)
        return DeliveryUpdate(
            provider=self.name,
            status=receipt.status,
            provider_id=provider_id,
            message_key=key,
            at=receipt.at,
            error_code=receipt.error_code,
            error=f"stat:{receipt.stat}" if receipt.error_code else None,
            permanent=receipt.stat == "REJECTD",
            raw={"stat": receipt.stat, "id": receipt.message_id, "state": message_state},
        )

    def _mo_reply(
        self,
        short_message: bytes,
        *,
        esm_class: int,
        data_coding: int,
        source: str,
        source_ton: int,
        destination: str,
    ) -> InboundReply | None:
        data = split_udh(short_message, esm_class)
        text = decode_text(data.payload, data_coding)
        if data.reference is not None and data.total > 1:
            joined = self._join(source, data.reference, data.total, data.seq, text)
            if joined is None:
                return None
            text = joined
        sender = f"+{source}" if source_ton == 1 and source.isdigit() else source
        return InboundReply(
            provider=self.name,
            channel=Channel.SMS,
            sender=sender,
            text=text,
            to=destination or None,
            # SMPP gives an MO no id: its receive time tells two identical replies apart (the
            # same STOP sent twice, or STOP, START, STOP), which would otherwise be one reply.
            at=datetime.now(UTC),
            raw={"data_coding": data_coding, "esm_class": esm_class},
        )

    def _join(self, source: str, reference: int, total: int, seq: int, text: str) -> str | None:
        """Parts of a long MO, joined once all have arrived."""
        key = (source, reference)
        concat = self._concat.setdefault(key, _Concat(total))
        concat.parts[seq] = text
        if len(concat.parts) < concat.total:
            while len(self._concat) > 1000:
                self._concat.popitem(last=False)
            return None
        del self._concat[key]
        return "".join(concat.parts[n] for n in sorted(concat.parts))

    def drain(self, limit: int = 1000, wait: float = 0.0) -> list[Event]:
        """Receipts and replies received since the last call (when no callbacks were given)."""
        self.start()
        taken: list[Event] = []
        try:
            taken.append(self.events.get(timeout=wait) if wait > 0 else self.events.get_nowait())
            while len(taken) < limit:
                taken.append(self.events.get_nowait())
        except queue.Empty:
            pass
        return taken

    # -- sending ---------------------------------------------------------------------------

    def send(self, message: OutboundMessage) -> SendResult:
        deadline = time.monotonic() + self._timeout
        try:
            encoded = encode_text(message.body, message.key)
        except ValueError as error:
            return SendResult(SendStatus.REJECTED, error=str(error))
        self.start()
        if not self._bound.wait(self._timeout):
            return SendResult(SendStatus.REJECTED, error="not bound to the SMSC", retryable=True)
        sender = message.sender or self._sender or ""
        source_ton, source_npi = self._source_address_type(sender)
        ids: list[str] = []
        total = len(encoded.parts)
        for index, part in enumerate(encoded.parts):
            waiting = _Pending(message.key, ids[0] if ids else None)
            try:
                self._submit(
                    waiting,
                    source_addr=sender.lstrip("+"),
                    source_addr_ton=source_ton,
                    source_addr_npi=source_npi,
                    dest_addr_ton=1,
                    dest_addr_npi=1,
                    destination_addr=message.to.lstrip("+"),
                    short_message=part,
                    data_coding=encoded.data_coding,
                    esm_class=encoded.esm_class,
                    registered_delivery=1,
                )
            except (smpp_errors.ConnectionError, OSError):
                if index == 0:
                    return SendResult(
                        SendStatus.REJECTED, error="SMSC connection lost", retryable=True
                    )
                return self._partial(message.key, ids, total, "connection lost")
            answered = waiting.done.wait(max(0.0, deadline - time.monotonic()))
            if not answered or waiting.lost:
                # The submit went out; whether the SMSC took it is not known.
                with self._state_lock:
                    self._pending = {s: w for s, w in self._pending.items() if w is not waiting}
                return SendResult(SendStatus.UNKNOWN, error="no submit_sm_resp in time")
            if waiting.status != smpp_consts.SMPP_ESME_ROK:
                code = f"0x{waiting.status or 0:08x}"
                if index == 0:
                    return SendResult(
                        SendStatus.REJECTED,
                        error=f"submit_sm refused: {code}",
                        error_code=code,
                        retryable=waiting.status in _RETRYABLE_STATUS,
                    )
                return self._partial(message.key, ids, total, f"refused {code}")
            ids.append(waiting.message_id or "")
        return SendResult(SendStatus.ACCEPTED, provider_id=ids[0] or None, segments=total)

    def _submit(self, waiting: _Pending, **fields: Any) -> None:
        with self._write_lock:
            with self._state_lock:
                client = self._client
                if client is None:
                    raise smpp_errors.ConnectionError("not bound")
            pdu = smpp.make_pdu("submit_sm", client=client, **fields)
            with self._state_lock:
                self._pending[pdu.sequence] = waiting
            client.send_pdu(pdu)

    def _partial(self, key: str, ids: list[str], total: int, why: str) -> SendResult:
        # Earlier parts went out: sending again would repeat them, so this counts as sent.
        return SendResult(
            SendStatus.ACCEPTED,
            provider_id=ids[0] or None,
            segments=total,
            error=f"only {len(ids)} of {total} parts accepted: {why}",
        )

    def _remember(self, key: str, first_id: str, ids: list[str]) -> None:
        with self._state_lock:
            self._sent.setdefault(key, first_id)
            for part_id in ids:
                for form in id_forms(part_id):
                    self._ids[form] = (key, first_id)
            while len(self._ids) > _REMEMBERED_IDS:
                self._ids.popitem(last=False)
            while len(self._sent) > _REMEMBERED_IDS:
                self._sent.popitem(last=False)

    def _source_address_type(self, sender: str) -> tuple[int, int]:
        digits = sender.lstrip("+")
        if not sender or not digits.isdigit():
            ton, npi = 5, 0  # alphanumeric
        elif sender.startswith("+") or len(digits) > 8:
            ton, npi = 1, 1  # international number
        else:
            ton, npi = 3, 0  # short code
        return (
            ton if self._source_ton is None else self._source_ton,
            npi if self._source_npi is None else self._source_npi,
        )

    def lookup(self, key: str) -> LookupStatus | LookupResult:
        # SMPP's query_sm needs the SMSC's id; this process knows it only for what it sent.
        with self._state_lock:
            provider_id = self._sent.get(key)
        if provider_id is not None:
            return LookupResult(LookupStatus.SENT, provider_id)
        return LookupStatus.UNKNOWN

    def close(self) -> None:
        self._stopping.set()
        with self._state_lock:
            client = self._client
        if client is not None:
            with contextlib.suppress(smpp_errors.ConnectionError, smpp_errors.PDUError, OSError):
                self._write(client, "unbind")
        if self._thread.is_alive():
            self._thread.join(timeout=self._timeout + 1)
        self._drop(client)

    # -- HTTP callbacks: none, receipts and replies come on the bind -------------------------

    def verify(self, request: WebhookRequest) -> bool:
        return False

    def parse_status(self, request: WebhookRequest) -> list[DeliveryUpdate]:
        return []

    def parse_inbound(self, request: WebhookRequest) -> list[InboundReply]:
        return []


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.rstrip(b"\0").decode("latin-1")
    return str(value)


def _number(options: Mapping[str, str], name: str, default: float) -> float:
    raw = options.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"smpp: option {name} must be a number, not {raw!r}") from None
    if value <= 0:
        raise ValueError(f"smpp: option {name} must be positive")
    return value


def _optional_int(options: Mapping[str, str], name: str) -> int | None:
    raw = options.get(name)
    if raw in (None, ""):
        return None
    if not raw.isdigit():
        raise ValueError(f"smpp: option {name} must be a whole number, not {raw!r}")
    return int(raw)
