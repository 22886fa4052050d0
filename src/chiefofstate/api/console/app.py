"""The console's requests: who may make them, which page answers, and how a failure reads on the page.

Every page is rendered on the server with autoescaping Jinja2 templates; scripts and styles come from
the package (static/), and the Content-Security-Policy allows nothing else, so nothing a user typed or
an event carries can run in the operator's browser. A failure is shown as a sentence on the page with
the HTTP status of its gRPC code (api/http_errors.py); an unexpected one is logged, never shown."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import jinja2

from chiefofstate.api.console import pages
from chiefofstate.api.console.paging import query_values, whole_number
from chiefofstate.api.console.parts import ConsoleParts
from chiefofstate.api.console.sessions import COOKIE, ConsoleSessions, same_origin
from chiefofstate.api.http_errors import http_status
from chiefofstate.api.management import Reply, Request
from chiefofstate.api.readside_manager import perform
from chiefofstate.core.auth import Verdict
from chiefofstate.core.errors import CosError, InvalidArgument

log = logging.getLogger("chiefofstate.console")

PREFIX = "/admin/"
_HTML = "text/html; charset=utf-8"
_SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
TAIL_PAGE_LIMIT = 200


def _console_path(path: str) -> str:
    """Where to go after signing in: a page of this console, never another site."""
    if not path.startswith(PREFIX) or "//" in path or "\\" in path:
        return PREFIX
    return path


def _status_line(code: int) -> str:
    return f"{code} {HTTPStatus(code).phrase}"


def load_assets() -> tuple[jinja2.Environment, dict[str, tuple[bytes, str]]]:
    """The templates, compiled, and the static files, read: once, at start (off the event loop)."""
    package = resources.files("chiefofstate.api.console")
    templates = {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in package.joinpath("templates").iterdir()
        if entry.name.endswith(".html")
    }
    environment = jinja2.Environment(
        loader=jinja2.DictLoader(templates),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    for name in templates:
        environment.get_template(name)
    static = {}
    for entry in package.joinpath("static").iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if suffix in _STATIC_TYPES:
            static[entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    return environment, static


Handler = Callable[[Request, Mapping[str, str]], Awaitable[Reply]]


class Console:
    def __init__(
        self,
        parts: ConsoleParts,
        sessions: ConsoleSessions,
        templates: jinja2.Environment,
        static: Mapping[str, tuple[bytes, str]],
    ) -> None:
        self._parts = parts
        self._sessions = sessions
        self._templates = templates
        self._static = static
        self._pages: dict[tuple[str, str], Handler] = {
            ("GET", ""): self._overview,
            ("GET", "read-sides"): self._read_sides,
            ("GET", "read-sides/confirm"): self._confirm,
            ("POST", "read-sides/act"): self._act,
            ("GET", "entities"): self._entity,
            ("GET", "journal"): self._journal,
            ("GET", "tail"): self._tail,
            ("GET", "tail/events"): self._tail_events,
            ("GET", "cluster"): self._cluster,
        }

    async def __call__(self, request: Request) -> Reply:
        name = request.path[len(PREFIX) :]
        if name.startswith("static/") and request.method == "GET":
            return self._static_file(name[len("static/") :])
        if name == "login":
            try:
                return await self._login(request)
            except CosError as error:  # a query or form that cannot be read
                return self._page("error.html", {"message": str(error)}, http_status(error.code))
        if name == "logout" and request.method == "POST":
            # The browser forgets its cookie (a copy taken elsewhere lasts until it expires).
            return self._redirect(f"{PREFIX}login", clear_cookie=True)
        handler = self._pages.get((request.method, name))
        if handler is None:
            known = any(path == name for _, path in self._pages)
            if known:
                return self._page("error.html", {"message": f"{request.method} is not allowed here"}, 405)
            return self._page("error.html", {"message": f"no console page at {request.path}"}, 404)
        verdict, _ = self._sessions.verdict(request.headers)
        if verdict is Verdict.UNAUTHENTICATED:
            if request.method == "GET" and "authorization" not in request.headers:
                return self._redirect(f"{PREFIX}login?{urlencode({'next': request.path})}")
            return self._page("error.html", {"message": "sign in with an admin token first"}, 401)
        if verdict is Verdict.PERMISSION_DENIED:
            return self._page("error.html", {"message": "the console needs a token with the admin role"}, 403)
        # A browser adds cookies (and, without tokens, nothing is needed at all) to a form another site
        # sends it to post here; it never adds an authorization header, so only a request without one
        # must show it comes from this console's own page.
        scripted = "authorization" in request.headers
        if request.method == "POST" and not scripted and not same_origin(request.headers):
            return self._page(
                "error.html", {"message": "refused: the form was not sent from this console's own page"}, 403
            )
        try:
            values = query_values(request.query)
            if request.method == "POST":
                values.update(query_values(request.body.decode("utf-8", "replace")))
            return await handler(request, values)
        except CosError as error:
            return self._page("error.html", {"message": str(error)}, http_status(error.code))
        except Exception:
            log.exception("console: %s %s failed", request.method, request.path)
            return self._page(
                "error.html", {"message": "the page failed on the server; its log says why"}, 500
            )

    # ----------------------------------------------------------------------------- rendering

    def _page(self, template: str, context: Mapping[str, Any], status: int = 200) -> Reply:
        body = self._templates.get_template(template).render(
            {**context, "prefix": PREFIX, "signed_in": self._sessions.required}
        )
        return Reply(_status_line(status), body.encode("utf-8"), _HTML, _SECURITY_HEADERS)

    def _redirect(self, location: str, *, cookie: str | None = None, clear_cookie: bool = False) -> Reply:
        headers = [("Location", location), *_SECURITY_HEADERS]
        if cookie is not None:
            headers.append(
                ("Set-Cookie", f"{COOKIE}={cookie}; Path={PREFIX}; HttpOnly; SameSite=Strict; Max-Age=43200")
            )
        if clear_cookie:
            headers.append(("Set-Cookie", f"{COOKIE}=; Path={PREFIX}; HttpOnly; SameSite=Strict; Max-Age=0"))
        return Reply("303 See Other", b"", _HTML, tuple(headers))

    def _static_file(self, name: str) -> Reply:
        found = self._static.get(name)
        if found is None:
            return Reply("404 Not Found", b"not found\n")
        body, content_type = found
        return Reply("200 OK", body, content_type, (("Cache-Control", "max-age=3600"),))

    # ----------------------------------------------------------------------------- sign-in

    async def _login(self, request: Request) -> Reply:
        target = _console_path(query_values(request.query).get("next", PREFIX))
        if request.method == "GET":
            return self._page("login.html", {"next": target, "message": ""})
        if request.method != "POST":
            return self._page("error.html", {"message": f"{request.method} is not allowed here"}, 405)
        if not same_origin(request.headers):
            return self._page(
                "login.html", {"next": target, "message": "refused: sign in from this page"}, 403
            )
        form = query_values(request.body.decode("utf-8", "replace"))
        verdict, session = self._sessions.login(form.get("token", ""))
        if verdict is Verdict.UNAUTHENTICATED:
            return self._page("login.html", {"next": target, "message": "that token is not known"}, 401)
        if verdict is Verdict.PERMISSION_DENIED:
            return self._page(
                "login.html", {"next": target, "message": "that token does not have the admin role"}, 403
            )
        return self._redirect(_console_path(form.get("next", target)), cookie=session)

    # ----------------------------------------------------------------------------- pages

    async def _overview(self, request: Request, values: Mapping[str, str]) -> Reply:
        return self._page("overview.html", {"nav": "overview", **await pages.overview(self._parts)})

    async def _read_sides(self, request: Request, values: Mapping[str, str]) -> Reply:
        context = await pages.read_sides(self._parts)
        return self._page(
            "read_sides.html", {"nav": "read-sides", "notice": values.get("notice", ""), **context}
        )

    async def _confirm(self, request: Request, values: Mapping[str, str]) -> Reply:
        context = await pages.confirmation(self._parts, values)
        return self._page("confirm.html", {"nav": "read-sides", **context})

    async def _act(self, request: Request, values: Mapping[str, str]) -> Reply:
        operations = self._parts.read_sides
        if operations is None:
            raise InvalidArgument("read sides are not enabled on this node (COS_READ_SIDE_ENABLED)")
        operation, read_side_id, shard = pages.operation_request(values, self._parts.facts.num_shards)
        await pages.confirmation(self._parts, values)  # the same refusals as the confirmation page
        token = self._sessions.token_of(request.headers)
        caller = (("authorization", f"Bearer {token}"),) if token else ()
        skipped = await perform(operations, operation, read_side_id, shard, caller)
        notice = pages.done_message(operation, read_side_id, shard, skipped)
        return self._redirect(f"{PREFIX}read-sides?{urlencode({'notice': notice})}")

    async def _entity(self, request: Request, values: Mapping[str, str]) -> Reply:
        try:
            context = await pages.entity(self._parts, values)
        except CosError as error:  # shown under the form, which keeps what was typed
            status = http_status(error.code)
            return self._page(
                "entity.html",
                {"nav": "entities", "asked": False, "id": values.get("id", ""), "message": str(error)},
                status,
            )
        return self._page(
            "entity.html",
            {"nav": "entities", "message": "", **context, "quoted_id": quote(values.get("id", ""), safe="")},
        )

    async def _journal(self, request: Request, values: Mapping[str, str]) -> Reply:
        context = await pages.journal(self._parts, values)
        return self._page("journal.html", {"nav": "journal", **context})

    async def _tail(self, request: Request, values: Mapping[str, str]) -> Reply:
        tail = self._parts.tail
        return self._page(
            "tail.html",
            {
                "nav": "tail",
                "enabled": tail is not None,
                "entity": values.get("entity", ""),
                "type": values.get("type", ""),
            },
        )

    async def _tail_events(self, request: Request, values: Mapping[str, str]) -> Reply:
        tail = self._parts.tail
        if tail is None:
            raise InvalidArgument("the live tail needs COS_SUBSCRIPTION_ENABLED=true")
        since = whole_number(values, "since", 0)
        events = await tail.poll(since, values.get("entity", ""), values.get("type", ""), TAIL_PAGE_LIMIT)
        latest = max([since, *(event.committed_ms for event in events)])
        return self._page("tail_rows.html", {"events": events, "latest": latest})

    async def _cluster(self, request: Request, values: Mapping[str, str]) -> Reply:
        return self._page("cluster.html", {"nav": "cluster", **await pages.cluster(self._parts)})
