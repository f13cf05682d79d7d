"""The worker: fire due timers and drain the outbox, in batches, until told to stop."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from cartback.app import App
from cartback.channels.registry import build_channels
from cartback.core.model import Channel
from cartback.services.dispatch import Dispatcher
from cartback.services.tick import tick

log = logging.getLogger("cartback.worker")


@dataclass
class Worker:
    app: App
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Run the timer and the dispatcher on two threads until `stop` is set."""
        settings = self.app.settings
        dispatcher = Dispatcher(
            self.app.engine,
            build_channels(settings),
            lease=timedelta(seconds=settings.lease_seconds),
            send_timeout=timedelta(seconds=settings.send_timeout_seconds),
            concurrency=settings.dispatch_concurrency,
            rates={Channel.SMS: settings.sms_rate, Channel.EMAIL: settings.email_rate},
            clock=self.app.clock.now,
        )
        threads = [
            threading.Thread(target=self._timer_loop, name="timer", daemon=True),
            threading.Thread(
                target=self._dispatch_loop, args=(dispatcher,), name="dispatch", daemon=True
            ),
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.5)
        finally:
            self.stop.set()
            dispatcher.close()

    def _timer_loop(self) -> None:
        settings = self.app.settings
        while not self.stop.is_set():
            try:
                stats = tick(
                    self.app.engine,
                    self.app.registry,
                    self.app.clock.now(),
                    limit=settings.worker_batch,
                    base_url=settings.base_url,
                )
            except Exception:
                # A database hiccup must not end the worker; the rows are still due next time.
                log.exception("timer batch failed; retrying")
                self.stop.wait(settings.worker_poll_seconds * 4)
                continue
            if stats.claimed < settings.worker_batch:
                self.stop.wait(settings.worker_poll_seconds)

    def _dispatch_loop(self, dispatcher: Dispatcher) -> None:
        settings = self.app.settings
        while not self.stop.is_set():
            try:
                stats = dispatcher.run_once(self.app.clock.now(), settings.dispatch_batch)
            except Exception:
                log.exception("dispatch batch failed; retrying")
                self.stop.wait(settings.worker_poll_seconds * 4)
                continue
            if stats.claimed < settings.dispatch_batch:
                self.stop.wait(settings.worker_poll_seconds)
