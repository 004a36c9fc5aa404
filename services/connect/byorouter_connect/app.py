"""Connect's wiring: its HTTP app (consent and manage pages, assets, probes) and `SERVICE`."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from byorouter_common.access import AccessMiddleware
from byorouter_common.health import health_router
from byorouter_common.service import Service, ServiceRuntime
from byorouter_connect import consent, manage
from byorouter_connect.limits import ProviderTestLimits, TooManyTests, too_many_tests
from byorouter_connect.pages import PageError, error_page, render
from byorouter_connect.security import FormRefused, SecurityHeadersMiddleware
from byorouter_connect.settings import ConnectSettings

_STATIC = Path(__file__).with_name("static")


async def _on_page_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    return error_page(exc)


async def _on_form_refused(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, FormRefused)
    return error_page(PageError(exc.status, "This form could not be read", exc.message))


async def _on_validation_error(_: Request, __: Exception) -> Response:
    # Never FastAPI's default 422 body: it echoes the rejected input, which may be a key.
    return error_page(PageError(400, "Something is missing", "This request could not be read."))


async def _on_http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_page(PageError(405, "Not here", "This page does not accept that request."))
    return error_page(PageError(exc.status_code, "Page not found", "There is no page here."))


def create_app(runtime: ServiceRuntime[ConnectSettings]) -> FastAPI:
    settings = runtime.settings
    app = FastAPI(title="BYORouter Connect", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.provider_test_limits = ProviderTestLimits(settings)
    app.add_exception_handler(PageError, _on_page_error)
    app.add_exception_handler(FormRefused, _on_form_refused)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_exception)
    app.add_exception_handler(TooManyTests, too_many_tests)

    # Ready means the bus answers: without it no page can reach keystore.
    app.include_router(health_router(lambda: runtime.bus))

    @app.get("/")
    async def landing() -> Response:
        return render("landing.html", page_title="BYORouter Connect")

    app.include_router(consent.router)
    app.include_router(manage.router)
    app.mount("/static", StaticFiles(directory=_STATIC), name="static")
    app.add_middleware(SecurityHeadersMiddleware)
    # Outermost: every request is counted and gets its access line, refusals included.
    app.add_middleware(AccessMiddleware)
    return app


async def register(runtime: ServiceRuntime[ConnectSettings]) -> None:
    settings = runtime.settings
    runtime.serve_http(create_app(runtime), host=settings.host, port=settings.port)


SERVICE = Service("connect", "Connect UI and authorization flow for BYORouter.", register)
