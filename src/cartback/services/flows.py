"""Flow versions: every version an enrollment started on stays loadable, so a changed flow file
never changes the sequence of carts already in it."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, select

from cartback.core.flows import Flow, load_flow, parse_flow
from cartback.store.tables import flow_versions


class UnknownFlow(LookupError):
    pass


class FlowRegistry:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._by_version: dict[tuple[str, str], Flow] = {}
        self._current: dict[str, Flow] = {}
        self._lock = threading.Lock()

    def register_text(self, text: str, source_name: str, now: datetime) -> Flow:
        """Parse, record this version (once) and make it the one new enrollments use."""
        flow = parse_flow(text, source_name)
        with self._engine.begin() as conn:
            exists = conn.execute(
                select(flow_versions.c.id).where(
                    flow_versions.c.name == flow.name, flow_versions.c.version == flow.version
                )
            ).first()
            if exists is None:
                conn.execute(
                    flow_versions.insert().values(
                        name=flow.name,
                        version=flow.version,
                        source_name=flow.source,
                        source=text,
                        created_at=now,
                    )
                )
        with self._lock:
            self._by_version[(flow.name, flow.version)] = flow
            self._current[flow.name] = flow
        return flow

    def register_file(self, path: Path, now: datetime) -> Flow:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            load_flow(path)  # raises the FlowError that names the file and the reason
            raise
        return self.register_text(text, str(path), now)

    def current(self, name: str, conn: Connection | None = None) -> Flow:
        """The version new enrollments use. `conn`: read through this connection (inside a
        transaction that holds SQLite's write lock, another connection would wait for it)."""
        with self._lock:
            flow = self._current.get(name)
        if flow is not None:
            return flow
        query = (
            select(flow_versions.c.version)
            .where(flow_versions.c.name == name)
            .order_by(flow_versions.c.id.desc())
            .limit(1)
        )
        if conn is None:
            with self._engine.connect() as own:
                row = own.execute(query).first()
        else:
            row = conn.execute(query).first()
        if row is None:
            raise UnknownFlow(f"no flow named {name!r} is registered")
        flow = self.get(name, row.version, conn)
        with self._lock:
            self._current.setdefault(name, flow)
        return flow

    def get(self, name: str, version: str, conn: Connection | None = None) -> Flow:
        key = (name, version)
        with self._lock:
            flow = self._by_version.get(key)
        if flow is not None:
            return flow
        query = select(flow_versions.c.source, flow_versions.c.source_name).where(
            flow_versions.c.name == name, flow_versions.c.version == version
        )
        if conn is None:
            with self._engine.connect() as own:
                row = own.execute(query).first()
        else:
            row = conn.execute(query).first()
        if row is None:
            raise UnknownFlow(f"flow {name!r} version {version} is not registered")
        # A stored version was accepted when it was registered; checks added since must not
        # strand the carts already on it (the sandbox's runtime limits still apply).
        flow = parse_flow(row.source, row.source_name, check_templates=False)
        with self._lock:
            self._by_version[key] = flow
        return flow
