"""A local SMSC for SMPP tests: the `smpp34` server in a thread, behind a TCP tap.

The simulator accepts any bind, answers every `submit_sm` with a fresh message id and, for
submits that ask for a receipt, sends one back as `deliver_sm` (`esm_class` 0x04, the
`receipted_message_id` and `message_state` TLVs and the usual `id:… stat:… err:…` text):
destinations ending in 0 get `stat:UNDELIV err:001`, all others `stat:DELIVRD err:000`.
`send_mo` pushes an MO `deliver_sm` to the bound ESME.

`PduTap` sits between the ESME and the simulator: it forwards bytes, counts the PDUs each
side sends by command id (so a test sees `enquire_link`s), and `sever()` drops every
connection, as an SMSC restart or a network cut would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import smpp34

from tests.support.procs import free_port

ENQUIRE_LINK = 0x00000015
ENQUIRE_LINK_RESP = 0x80000015
BIND_TRANSCEIVER = 0x00000009
TLV_RECEIPTED_MESSAGE_ID = 0x001E
TLV_MESSAGE_STATE = 0x0427
ESME_RINVDSTADR = 0x0000000B
ESME_RTHROTTLED = 0x00000058

T = TypeVar("T")


RECEIPT_DELAY_SECONDS = 0.2


@dataclass(frozen=True)
class Submitted:
    message_id: str
    source_addr: str
    source_addr_ton: int
    destination_addr: str
    data_coding: int
    esm_class: int
    registered_delivery: int
    short_message: bytes


@dataclass
class SmscSimulator:
    port: int = field(default_factory=free_port)
    submitted: list[Submitted] = field(default_factory=list)
    receipts_sent: int = 0
    receipt_answers: list[int] = field(default_factory=list)  # deliver_sm_resp statuses
    # Faults: `silent` leaves submits unanswered; `reject_with` refuses them with a status.
    silent: bool = False
    reject_with: int | None = None
    receipt_first: bool = False
    held: list[Any] = field(default_factory=list)
    _esmes: dict[str, Any] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: Any = None
    _counter: int = 0
    _task: asyncio.Task[None] | None = None
    _receipts: set[asyncio.Future[None]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start_server())
            self._task = self._loop.create_task(self._serve())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="smsc-sim", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the SMSC simulator did not start")

    async def _start_server(self) -> None:
        self._server = smpp34.Server("127.0.0.1", self.port, system_id="SIM")
        await self._server.start()

    async def _serve(self) -> None:
        while True:
            try:
                event = await self._server.next()
            except (asyncio.CancelledError, RuntimeError):
                return
            if isinstance(event, smpp34.Esme):
                with self._lock:
                    self._esmes[event.session_id] = event
            elif isinstance(event, smpp34.Unbound):
                with self._lock:
                    self._esmes.pop(event.session_id, None)
            elif isinstance(event, smpp34.SubmitSmEvent):
                self._on_submit(event)

    def _on_submit(self, event: Any) -> None:
        if self.silent:
            self.held.append(event)  # never answered while held
            return
        if self.reject_with is not None:
            event.reject(self.reject_with)
            return
        with self._lock:
            self._counter += 1
            message_id = f"{0x5A000 + self._counter:x}"
            self.submitted.append(
                Submitted(
                    message_id=message_id,
                    source_addr=event.source_addr,
                    source_addr_ton=event.source_addr_ton,
                    destination_addr=event.destination_addr,
                    data_coding=event.data_coding,
                    esm_class=event.esm_class,
                    registered_delivery=event.registered_delivery,
                    short_message=bytes(event.short_message),
                )
            )
            esme = self._esmes.get(event.session_id)
        if self.receipt_first and esme is not None:
            # Some SMSCs report before they answer the submit.
            async def report_then_answer() -> None:
                await self._receipt(esme, event, message_id)
                event.accept(message_id)

            self._keep(asyncio.ensure_future(report_then_answer()))
            return
        event.accept(message_id)
        if event.registered_delivery & 0x01 and esme is not None:
            self._keep(asyncio.ensure_future(self._receipt_later(esme, event, message_id)))

    async def _receipt_later(self, esme: Any, event: Any, message_id: str) -> None:
        # A real SMSC reports after the handset answers, never in the same instant as the
        # submit_sm_resp: Kannel drops a receipt that overtakes its own record of the submit.
        # (`receipt_first` tests the overtaking case on purpose.)
        await asyncio.sleep(RECEIPT_DELAY_SECONDS)
        await self._receipt(esme, event, message_id)

    def _keep(self, task: asyncio.Future[None]) -> None:
        self._receipts.add(task)  # held until done, or the loop may drop it
        task.add_done_callback(self._receipts.discard)

    async def _receipt(self, esme: Any, event: Any, message_id: str) -> None:
        failed = event.destination_addr.endswith("0")
        stat, err, state = ("UNDELIV", "001", 5) if failed else ("DELIVRD", "000", 2)
        dlvrd = "000" if failed else "001"
        text = (
            f"id:{message_id} sub:001 dlvrd:{dlvrd} submit date:2601011200 "
            f"done date:2601011201 stat:{stat} err:{err} text:"
        ).encode()
        answer = await esme.deliver_sm(
            event.source_addr,
            text,
            source_addr=event.destination_addr,
            esm_class=0x04,
            tlvs=[
                smpp34.Tlv(TLV_RECEIPTED_MESSAGE_ID, message_id.encode() + b"\0"),
                smpp34.Tlv(TLV_MESSAGE_STATE, bytes([state])),
            ],
        )
        with self._lock:
            self.receipts_sent += 1
            self.receipt_answers.append(answer.command_status)

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=10)

    def bound_sessions(self) -> int:
        with self._lock:
            return len(self._esmes)

    def _single_session(self, timeout: float = 10.0) -> Any:
        """The one bound ESME, once the server has seen its bind and every earlier unbind."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._esmes) == 1:
                    return next(iter(self._esmes.values()))
            time.sleep(0.02)
        raise AssertionError(f"expected one bound ESME, have {len(self._esmes)}")

    def send_mo(
        self,
        sender: str,
        receiver: str,
        payload: bytes,
        *,
        data_coding: int = 0,
        esm_class: int = 0,
    ) -> None:
        esme = self._single_session()

        async def deliver() -> None:
            await esme.deliver_sm(
                receiver,
                payload,
                source_addr=sender,
                source_addr_ton=1,
                source_addr_npi=1,
                data_coding=data_coding,
                esm_class=esm_class,
            )

        self._call(deliver())

    def stop(self) -> None:
        if self._loop is None or self._server is None:
            return

        async def shut() -> None:
            if self._task is not None:
                self._task.cancel()
            await self._server.stop()

        with contextlib.suppress(Exception):
            self._call(shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()


@dataclass
class PduTap:
    """A TCP relay that counts PDUs by command id and can cut every connection."""

    upstream_port: int
    port: int = field(default_factory=free_port)
    from_esme: Counter[int] = field(default_factory=Counter)
    from_smsc: Counter[int] = field(default_factory=Counter)
    connections: int = 0
    _sockets: list[socket.socket] = field(default_factory=list)
    _listener: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(8)
        self._listener = listener
        threading.Thread(target=self._accept, name="pdu-tap", daemon=True).start()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed:
            try:
                esme, _ = self._listener.accept()
            except OSError:
                return
            smsc = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self.connections += 1
                self._sockets.extend((esme, smsc))
            for source, target, counter in (
                (esme, smsc, self.from_esme),
                (smsc, esme, self.from_smsc),
            ):
                threading.Thread(
                    target=self._pump, args=(source, target, counter), daemon=True
                ).start()

    def _pump(self, source: socket.socket, target: socket.socket, counter: Counter[int]) -> None:
        buffer = b""
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= 8:
                    length, command_id = struct.unpack(">LL", buffer[:8])
                    if len(buffer) < length:
                        break
                    with self._lock:
                        counter[command_id] += 1
                    buffer = buffer[length:]
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def count(self, counter: Counter[int], command_id: int) -> int:
        with self._lock:
            return counter[command_id]

    def sever(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.close()
        self.sever()
