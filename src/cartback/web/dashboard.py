"""The store owner's dashboard: server-rendered pages behind a login, and the offline /docs."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Route

from cartback.app import App
from cartback.services import dashboard_auth as auth
from cartback.services import dashboard_views as views
from cartback.services.flows import UnknownFlow
from cartback.store import tables as t

SESSION_COOKIE = "cartback_session"
LOGIN_CSRF_COOKIE = "cartback_login_csrf"
PREFIX = "/dashboard"
SWAGGER_PREFIX = "/static/swagger"
# Every dashboard answer is per user: never cached, never framed, never leaking its URL.
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
}
_T = TypeVar("_T")


def _templates() -> Environment:
    env = Environment(
        loader=PackageLoader("cartback.web", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["money"] = lambda value: f"{value:,.2f}"
    env.filters["percent"] = lambda value: f"{value * 100:.2f} %"
    env.filters["when"] = lambda value: value.strftime("%Y-%m-%d %H:%M") if value else ""
    return env


def install(api: FastAPI, app: App) -> None:
    """Add the dashboard's routes and static files, and serve /docs from packaged assets."""
    api.include_router(dashboard_router(app))
    api.mount(
        f"{PREFIX}/static",
        StaticFiles(directory=Path(str(files("cartback.web") / "static"))),
        name="dashboard-static",
    )
    _serve_docs_offline(api)


def _serve_docs_offline(api: FastAPI) -> None:
    """FastAPI's /docs loads Swagger UI from a CDN, blank without internet: swap in a page
    whose script, stylesheet and icon are files of this package (web/swagger, Swagger UI 5,
    which reads the OpenAPI 3.1 that FastAPI writes)."""
    if not api.docs_url or not api.openapi_url:
        return
    replaced = {api.docs_url, api.redoc_url}
    api.router.routes[:] = [r for r in api.router.routes if not _path_in(r, replaced)]
    api.mount(
        SWAGGER_PREFIX,
        StaticFiles(directory=Path(str(files("cartback.web") / "swagger"))),
        name="swagger-static",
    )
    openapi_url = api.openapi_url
    title = f"{api.title} - Swagger UI"

    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=title,
            swagger_js_url=f"{root}{SWAGGER_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{SWAGGER_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{root}{SWAGGER_PREFIX}/favicon-32x32.png",
            oauth2_redirect_url=api.swagger_ui_oauth2_redirect_url,
        )

    api.add_api_route(api.docs_url, docs, include_in_schema=False, methods=["GET"])


def _path_in(route: BaseRoute, paths: set[str | None]) -> bool:
    return isinstance(route, Route) and route.path in paths


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form, first value of each field (no multipart: the forms here are tiny)."""
    body = (await request.body()).decode("utf-8", "replace")
    return {key: values[0] for key, values in parse_qs(body, keep_blank_values=True).items()}


def dashboard_router(app: App) -> APIRouter:
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    templates = _templates()
    secure = app.settings.base_url.startswith("https://")

    def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = templates.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers=_HEADERS)

    def db(work: Callable[..., _T], *args: Any) -> _T:
        with app.engine.begin() as conn:
            return work(conn, *args)

    def read(work: Callable[..., _T], *args: Any) -> _T:
        with app.engine.connect() as conn:
            return work(conn, *args)

    async def in_db(work: Callable[..., _T], *args: Any) -> _T:
        return await run_in_threadpool(db, work, *args)

    async def current(request: Request) -> auth.Session | None:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        return await in_db(auth.session, token, app.clock.now())

    def to_login() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/login", status_code=303, headers=_HEADERS)

    def store_row(conn: Any, store_id: int) -> Any:
        s = t.stores.c
        return conn.execute(select(s.id, s.slug, s.name, s.flow_name).where(s.id == store_id)).one()

    async def page(
        request: Request, name: str, build: Callable[[Any, auth.Session, Any], dict[str, Any]]
    ) -> Response:
        user = await current(request)
        if user is None:
            return to_login()

        def work(conn: Any) -> dict[str, Any]:
            store = store_row(conn, user.store_id)
            return {"store": store, **build(conn, user, store)}

        context = await run_in_threadpool(read, work)
        status = int(context.pop("status", 200))
        return render(name, status=status, user=user, csrf=user.csrf_token, **context)

    @router.get("/login")
    async def login_form(request: Request) -> Response:
        if await current(request) is not None:
            return RedirectResponse(PREFIX, status_code=303)
        return _login_page(render, secure)

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await _form(request)
        if not auth.csrf_ok(request.cookies.get(LOGIN_CSRF_COOKIE, ""), form.get("csrf")) or (
            not request.cookies.get(LOGIN_CSRF_COOKIE)
        ):
            return render("refused.html", status=403)
        result = await in_db(
            auth.login, form.get("email", ""), form.get("password", ""), app.clock.now()
        )
        if result.token is None:
            message = "Wrong email or password."
            if result.locked_until is not None:
                message = (
                    f"Too many failed logins: try again after {result.locked_until:%H:%M:%S} UTC."
                )
            return _login_page(render, secure, error=message, status=401)
        response = RedirectResponse(PREFIX, status_code=303, headers=_HEADERS)
        response.set_cookie(
            SESSION_COOKIE,
            result.token,
            max_age=int(auth.SESSION_LIFETIME.total_seconds()),
            path=PREFIX,
            httponly=True,
            samesite="lax",
            secure=secure,
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE, path=PREFIX)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        user = await current(request)
        if user is None:
            return to_login()
        form = await _form(request)
        if not auth.csrf_ok(user.csrf_token, form.get("csrf")):
            return render("refused.html", status=403)
        await in_db(auth.logout, request.cookies.get(SESSION_COOKIE, ""))
        response = to_login()
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    @router.get("")
    async def overview(request: Request) -> Response:
        now = app.clock.now()
        return await page(
            request,
            "overview.html",
            lambda conn, user, _store: {"o": views.overview(conn, user.store_id, now)},
        )

    @router.get("/flows/{name}")
    async def flow(request: Request, name: str) -> Response:
        now = app.clock.now()
        try:
            # Before the page's own connection: the registry may read the flow from the store.
            definition = await run_in_threadpool(app.registry.current, name)
        except UnknownFlow:
            definition = None

        def build(conn: Any, user: auth.Session, _store: Any) -> dict[str, Any]:
            if definition is None:
                return {"status": 404, "missing": name}
            return {"f": views.flow_page(conn, user.store_id, definition, now)}

        return await page(request, "flow.html", build)

    async def searched(request: Request) -> tuple[auth.Session | None, str | None]:
        """The search text of a POSTed search form; None when its CSRF token is wrong.
        Searches are POSTed so a phone or email never sits in a URL (logs, history)."""
        user = await current(request)
        if user is None:
            return None, None
        form = await _form(request)
        if not auth.csrf_ok(user.csrf_token, form.get("csrf")):
            return user, None
        return user, form.get("q", "")[:320]

    @router.get("/messages")
    async def messages_form(request: Request) -> Response:
        return await page(request, "messages.html", lambda *_: {"q": "", "found": None})

    @router.post("/messages")
    async def messages(request: Request) -> Response:
        user, q = await searched(request)
        if user is None:
            return to_login()
        if q is None:
            return render("refused.html", status=403)

        def build(conn: Any, user: auth.Session, _store: Any) -> dict[str, Any]:
            found = views.message_log(conn, user.store_id, q) if q.strip() else None
            return {"q": q, "found": found}

        return await page(request, "messages.html", build)

    @router.get("/carts/{token}")
    async def cart(request: Request, token: str) -> Response:
        def build(conn: Any, user: auth.Session, _store: Any) -> dict[str, Any]:
            timeline = views.cart_timeline(conn, user.store_id, token)
            return {"token": token, "c": timeline, "status": 200 if timeline else 404}

        return await page(request, "cart.html", build)

    def consent_page(q: str, queued: str) -> Callable[..., dict[str, Any]]:
        def build(conn: Any, user: auth.Session, _store: Any) -> dict[str, Any]:
            found = views.consent_lookup(conn, user.store_id, q) if q.strip() else None
            return {
                "q": q,
                "found": found,
                "tests": views.test_contacts(conn, user.store_id),
                "queued": queued,
            }

        return build

    @router.get("/consent")
    async def consent_form(request: Request, queued: str = "") -> Response:
        return await page(request, "consent.html", consent_page("", queued[:20]))

    @router.post("/consent")
    async def consent(request: Request) -> Response:
        user, q = await searched(request)
        if user is None:
            return to_login()
        if q is None:
            return render("refused.html", status=403)
        return await page(request, "consent.html", consent_page(q, ""))

    @router.post("/test-send")
    async def test_send(request: Request) -> Response:
        user = await current(request)
        if user is None:
            return to_login()
        form = await _form(request)
        if not auth.csrf_ok(user.csrf_token, form.get("csrf")):
            return render("refused.html", status=403)
        raw = form.get("test_contact", "")
        contact_id = int(raw) if raw.isdigit() and len(raw) < 12 else 0

        def work(conn: Any) -> int | None:
            store = store_row(conn, user.store_id)
            return views.queue_test_send(
                conn, user.store_id, contact_id, store.name, app.clock.now()
            )

        queued = await in_db(work)
        if queued is None:
            return render("refused.html", status=422, reason="not one of the store's test contacts")
        return RedirectResponse(
            f"{PREFIX}/consent?queued={quote(str(queued))}", status_code=303, headers=_HEADERS
        )

    return router


def _login_page(
    render: Callable[..., HTMLResponse], secure: bool, error: str | None = None, status: int = 200
) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = render("login.html", status=status, csrf=token, error=error)
    # Double-submit: the form's hidden field must match this cookie, which another site's page
    # can neither read nor set.
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=3600,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    return response
