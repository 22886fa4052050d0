"""The HTTP API's own description: an OpenAPI document that lists exactly what the server answers,
and Swagger UI at /docs served from the installed `swagger-ui-bundle-v2` package, so the page works
on a machine without internet access (docs/operations.md, "HTTP API documentation").

FastAPI would advertise a 422 `HTTPValidationError` for every route with a parameter, a body the
server never sends (a bad request is 400 with `{"error", "code"}`, decision D5), and would load Swagger
UI's script and styles from a CDN.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

DOCS_ROUTE = "/docs"
ASSETS_ROUTE = "/docs/assets"

# A real command for the bank example (examples/chiefofstate_examples/bank): the base64 of the
# serialized Any packing bank.v1.OpenAccount{owner: "Vi", initial_balance: 1000}; a unit test decodes it.
EXAMPLE_COMMAND = "Cid0eXBlLmdvb2dsZWFwaXMuY29tL2JhbmsudjEuT3BlbkFjY291bnQSBwoCVmkQ6Ac="
# The state the bank answers after it and a deposit of 250: bank.v1.BankAccount{account_id: "acct-1",
# owner: "Vi", balance: 1250}.
EXAMPLE_STATE = "Cid0eXBlLmdvb2dsZWFwaXMuY29tL2JhbmsudjEuQmFua0FjY291bnQSDwoGYWNjdC0xEgJWaRjiCQ=="

_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
_PLAIN_TEXT = {"text/plain": {"schema": {"type": "string"}}}


def connection_responses() -> dict[int | str, dict[str, Any]]:
    """What the connection layer answers before a route runs (api/http_limits.py), as plain text."""
    return {
        408: {"description": "the request head or body did not arrive in time", "content": _PLAIN_TEXT},
    }


def _finish(document: dict[str, Any]) -> dict[str, Any]:
    for path in document.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in _VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    document.setdefault("components", {})["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "only when the node has COS_AUTH_TOKENS_FILE (docs/operations.md, Security)",
        }
    }
    # Either a token, or nothing when the node has no tokens file.
    document["security"] = [{"bearer": []}, {}]
    return document


def install(app: FastAPI) -> None:
    """Replaces FastAPI's /docs and OpenAPI generation; `app` must be made with docs_url=None."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _finish(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    from swagger_ui_bundle import swagger_ui_path

    app.mount(ASSETS_ROUTE, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui-assets")

    @app.get(DOCS_ROUTE, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} — API",
            swagger_js_url=f"{root}{ASSETS_ROUTE}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_ROUTE}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_ROUTE}/favicon-32x32.png",
        )
