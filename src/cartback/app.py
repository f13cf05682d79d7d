"""The application container: one engine, one flow registry, the channels and the clock."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from cartback.config import Settings
from cartback.core.flows import Flow
from cartback.ports import Clock, SystemClock
from cartback.services.flows import FlowRegistry
from cartback.store.db import make_engine

SHIPPED_FLOWS = Path(__file__).with_name("flows")


@dataclass
class App:
    settings: Settings
    engine: Engine
    registry: FlowRegistry
    clock: Clock

    def close(self) -> None:
        self.engine.dispose()


def flow_files(settings: Settings) -> list[Path]:
    """Shipped flows first; a file of the same name in the flows directory replaces it."""
    files = {path.stem: path for path in sorted(SHIPPED_FLOWS.glob("*.yaml"))}
    if settings.flows_dir is not None:
        files.update({path.stem: path for path in sorted(settings.flows_dir.glob("*.yaml"))})
    return list(files.values())


def pool_size(settings: Settings) -> int:
    """A connection for every request the web server takes at once (web_concurrency; the
    thread pool that runs their database work is sized to match), and a few for the inbox
    writer, the worker's threads and /metrics."""
    return settings.web_concurrency + 8


def build_app(settings: Settings, clock: Clock | None = None) -> App:
    if settings.database_url.startswith("sqlite:///") and not settings.database_url.endswith(
        ":memory:"
    ):
        Path(settings.database_url.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )
    engine = make_engine(
        settings.database_url,
        connect_timeout=settings.database_connect_timeout_seconds,
        statement_timeout=settings.database_statement_timeout_seconds,
        pool_size=pool_size(settings),
    )
    clock = clock or SystemClock()
    registry = FlowRegistry(engine)
    return App(settings=settings, engine=engine, registry=registry, clock=clock)


def register_flows(app: App) -> list[Flow]:
    now = app.clock.now()
    return [app.registry.register_file(path, now) for path in flow_files(app.settings)]
