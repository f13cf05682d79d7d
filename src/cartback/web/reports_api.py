"""GET /v1/reports/flows: the flow report (services.reports) for the key's store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from cartback.app import App
from cartback.core.model import Store
from cartback.reporting import SettingsError, end_of_window, window
from cartback.services.reports import flow_report
from cartback.web.problems import Problem, invalid

FlowName = Annotated[str | None, Query(max_length=64, description="Only this flow")]
Since = Annotated[str, Query(max_length=12, description="Window: 30d, 24h, 90m")]
Until = Annotated[str | None, Query(max_length=40, description="End (ISO 8601); default now")]


def _bad(field: str, message: str) -> Problem:
    return invalid(
        [{"field": field, "message": message}], title="Invalid request", slug="invalid-request"
    )


def reports_router(
    app: App, current_store: Callable[..., Store], responses: dict[int | str, dict[str, Any]]
) -> APIRouter:
    router = APIRouter(tags=["reports"])

    def report(store: Store, flow: str | None, since: str, until: str | None) -> dict[str, Any]:
        try:
            end = end_of_window(until, app.clock.now())
        except SettingsError as error:
            raise _bad("until", str(error).split(": ", 1)[-1]) from None
        try:
            start = window(since, end)
        except SettingsError as error:
            raise _bad("since", str(error).split(": ", 1)[-1]) from None
        with app.engine.connect() as conn:
            return flow_report(conn, store.id, since=start, until=end, flow=flow)

    @router.get(
        "/v1/reports/flows",
        summary="Per flow: totals, steps, variants, channels, opt-out alerts and experiments",
        responses=responses,
    )
    def flows(
        flow: FlowName = None,
        since: Since = "30d",
        until: Until = None,
        store: Store = Depends(current_store),
    ) -> dict[str, Any]:
        return report(store, flow, since, until)

    @router.get(
        "/v1/reports/flows/{flow_name}/steps",
        summary="One flow's per-step figures and opt-out alerts",
        responses=responses,
    )
    def flow_steps(
        flow_name: Annotated[str, Path(max_length=64)],
        since: Since = "30d",
        until: Until = None,
        store: Store = Depends(current_store),
    ) -> dict[str, Any]:
        result = report(store, flow_name, since, until)
        if not result["flows"]:
            raise Problem(
                404,
                "No such flow",
                f"no carts entered {flow_name!r} in this window",
                slug="not-found",
            )
        entry = result["flows"][0]
        return {
            "flow": flow_name,
            "since": result["since"],
            "until": result["until"],
            "currency": result["currency"],
            "steps": entry["steps"],
            "alerts": entry["alerts"],
        }

    return router
