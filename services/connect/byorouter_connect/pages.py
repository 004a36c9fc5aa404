"""Rendering Connect's pages: the Jinja2 templates, the providers' form metadata, error pages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.responses import HTMLResponse

from byorouter_common.contracts.keystore import ProviderName

_templates = Environment(
    loader=PackageLoader("byorouter_connect", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class ProviderForm:
    """How one provider appears in the forms: its name, which fields it has, what it needs."""

    provider: ProviderName
    title: str
    # Text of the provider's Test button (the browser tests find buttons by it).
    test_label: str
    key_required: bool
    base_url_required: bool
    has_model: bool
    key_hint: str
    base_url_hint: str
    model_hint: str = ""


PROVIDER_FORMS: Final = (
    ProviderForm(
        "openai",
        "OpenAI",
        "Test OpenAI key",
        key_required=True,
        base_url_required=False,
        has_model=False,
        key_hint="Starts with sk-. Create one at platform.openai.com, under API keys.",
        base_url_hint="Only for OpenAI-compatible proxies. Leave empty for api.openai.com.",
    ),
    ProviderForm(
        "anthropic",
        "Anthropic",
        "Test Anthropic key",
        key_required=True,
        base_url_required=False,
        has_model=False,
        key_hint="Starts with sk-ant-. Create one at console.anthropic.com.",
        base_url_hint="Leave empty for api.anthropic.com.",
    ),
    ProviderForm(
        "openrouter",
        "OpenRouter",
        "Test OpenRouter key",
        key_required=True,
        base_url_required=False,
        has_model=True,
        key_hint="Starts with sk-or-. Create one at openrouter.ai, under Keys.",
        base_url_hint="Leave empty for openrouter.ai.",
        model_hint="Test your key to choose from OpenRouter's models, or type a model id.",
    ),
    ProviderForm(
        "selfhosted",
        "Self-hosted (OpenAI-compatible)",
        "Test self-hosted server",
        key_required=False,
        base_url_required=True,
        has_model=True,
        key_hint="Only if your server asks for one.",
        base_url_hint="The server's OpenAI-compatible API, e.g. https://gpu.example.net/v1.",
        model_hint="Optional: the model your server should use by default.",
    ),
)
FORMS_BY_PROVIDER: Final[dict[str, ProviderForm]] = {form.provider: form for form in PROVIDER_FORMS}


def title_of(provider: str) -> str:
    form = FORMS_BY_PROVIDER.get(provider)
    return form.title if form is not None else provider


def render(
    template: str,
    status: int = 200,
    *,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    html = _templates.get_template(template).render(title_of=title_of, **context)
    return HTMLResponse(html, status_code=status, headers=headers)


class PageError(Exception):
    """A failure shown to the person as a page of its own (never a redirect anywhere)."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


def error_page(error: PageError) -> HTMLResponse:
    return render(
        "error.html",
        error.status,
        page_title=error.title,
        heading=error.title,
        message=error.message,
    )
