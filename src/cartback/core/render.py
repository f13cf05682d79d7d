"""Message rendering: sandboxed Jinja templates for SMS and email, with the brand prefix, the
opt-out text and the email footer guaranteed whatever the template says.

Templates come from the store owner; shop data (product titles, names) only ever enters a
template as a variable, so `{{ ''.__class__ }}` in a product title is printed as text. Template
source that reaches for Python internals raises `RenderError`.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

import babel
import babel.numbers
import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError

from cartback.core.locales import DEFAULT_LANGUAGE, LocaleTexts, language_of, texts_for
from cartback.core.model import Cart, Contact, Store
from cartback.core.sandbox import (
    MAX_OUTPUT_CHARS,
    LimitIssue,
    Sandbox,
    budget,
    parse_template,
    template_limit_issues,
)
from cartback.core.sms import SegmentInfo, fit_to_segments, normalize_lookalikes

MAX_RENDERED_CHARS = MAX_OUTPUT_CHARS
MAX_SUBJECT_CHARS = 200


class TemplateError(ValueError):
    """The template source does not compile (syntax error, unknown filter...)."""


class RenderError(ValueError):
    """The template compiled but rendering failed: unsafe access, bad operation, empty result."""


TEXT_ENV = Sandbox(autoescape=False, undefined=jinja2.ChainableUndefined)
HTML_ENV = Sandbox(autoescape=True, undefined=jinja2.ChainableUndefined)


@functools.lru_cache(maxsize=256)
def compile_template(source: str, *, html: bool = False) -> jinja2.Template:
    """Compile template source once; `html=True` autoescapes every variable."""
    if not isinstance(source, str):
        raise TypeError(f"template source must be str, not {type(source).__name__}")
    env = HTML_ENV if html else TEXT_ENV
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as error:
        raise TemplateError(f"template error on line {error.lineno}: {error.message}") from error


@dataclass(frozen=True, slots=True)
class ItemView:
    title: str
    quantity: int
    price: str  # unit price, formatted for the locale


@dataclass(frozen=True, slots=True)
class Discount:
    """A discount to offer: a code with either a percentage or a fixed amount off."""

    code: str
    percent: Decimal | None = None
    amount: Decimal | None = None

    def __post_init__(self) -> None:
        if not self.code.strip():
            raise ValueError("a discount needs a code")
        if (self.percent is None) == (self.amount is None):
            raise ValueError("a discount has either a percent or an amount, not both or neither")
        if self.percent is not None and not Decimal(0) < self.percent <= Decimal(100):
            raise ValueError(f"discount percent must be in (0, 100], got {self.percent}")
        if self.amount is not None and not (self.amount.is_finite() and self.amount > 0):
            raise ValueError(f"discount amount must be positive, got {self.amount}")


@dataclass(frozen=True, slots=True)
class MessageContext:
    """Everything a template may show; each field is a template variable of the same name."""

    brand: str
    first_name: str
    last_name: str
    product: str
    items: tuple[ItemView, ...]
    cart_value: str
    cart_value_raw: Decimal
    currency: str
    locale: str
    link: str
    discount_code: str | None
    discount_text: str | None
    unsubscribe_url: str | None
    postal_address: str | None
    store_name: str

    def variables(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


@functools.lru_cache(maxsize=1024)
def resolve_locale(tag: str | None) -> babel.Locale:
    """A babel Locale for a tag like "nb-NO" or "de_AT"; its language, then English, when the
    tag is unknown or malformed. Never raises. Cached: every message asks, for a few tags."""
    candidates = []
    if tag and tag.strip():
        cleaned = tag.strip().replace("-", "_")
        candidates = [cleaned, language_of(cleaned)]
    for candidate in [*candidates, DEFAULT_LANGUAGE]:
        try:
            return babel.Locale.parse(candidate)
        except (ValueError, TypeError, babel.UnknownLocaleError):
            continue
    return babel.Locale(DEFAULT_LANGUAGE)


def _currency_code(cart: Cart, store: Store) -> str:
    for candidate in (cart.currency, store.currency):
        code = (candidate or "").strip().upper()
        if len(code) == 3 and code.isascii() and code.isalpha():
            return code
    raise ValueError(
        f"no valid currency code: cart has {cart.currency!r}, store {store.currency!r}"
    )


def format_money(value: Decimal, currency: str, locale: babel.Locale) -> str:
    if not value.is_finite():
        raise ValueError(f"cannot format a non-finite amount {value}")
    return _format_money(value, currency, str(locale))


@functools.lru_cache(maxsize=4096)
def _format_money(value: Decimal, currency: str, locale: str) -> str:
    # Babel's formatting dominates rendering time; prices repeat across carts, so cache it.
    return babel.numbers.format_currency(value, currency, locale=_babel_locale(locale))


@functools.lru_cache(maxsize=1024)
def _babel_locale(name: str) -> babel.Locale:
    # Given a name, babel parses it into a Locale on every call; a Locale object it uses as is.
    return babel.Locale.parse(name)


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _discount_text(discount: Discount, currency: str, locale: babel.Locale) -> str:
    if discount.percent is not None:
        value = babel.numbers.format_percent(
            discount.percent / 100, locale=locale, decimal_quantization=False
        )
    else:
        assert discount.amount is not None  # guaranteed by Discount.__post_init__
        value = format_money(discount.amount, currency, locale)
    return texts_for(str(locale)).discount.format(value=value)


def build_context(
    store: Store,
    cart: Cart,
    contact: Contact | None,
    *,
    link: str,
    locale: str | None,
    discount: Discount | None = None,
    unsubscribe_url: str | None = None,
) -> MessageContext:
    """The template variables for one message. `locale=None` falls back to the contact's locale,
    then the store's default."""
    brand = _one_line(store.brand) or _one_line(store.name)
    if not brand:
        raise ValueError(f"store {store.id} has neither a brand nor a name to sign messages with")
    chosen = locale or (contact.locale if contact else None) or store.default_locale
    babel_locale = resolve_locale(chosen)
    currency = _currency_code(cart, store)
    items = tuple(
        ItemView(
            _one_line(line.title), line.quantity, format_money(line.price, currency, babel_locale)
        )
        for line in cart.lines
    )
    return MessageContext(
        brand=brand,
        first_name=_one_line(contact.first_name if contact else None),
        last_name=_one_line(contact.last_name if contact else None),
        product=items[0].title if items else "",
        items=items,
        cart_value=format_money(cart.value, currency, babel_locale),
        cart_value_raw=cart.value,
        currency=currency,
        locale=str(babel_locale),
        link=link.strip(),
        discount_code=discount.code.strip() if discount else None,
        discount_text=_discount_text(discount, currency, babel_locale) if discount else None,
        unsubscribe_url=(unsubscribe_url or "").strip() or None,
        postal_address=(store.postal_address or "").strip() or None,
        store_name=_one_line(store.name),
    )


def check_template(source: str, *, html: bool = False) -> list[LimitIssue]:
    """Everything wrong with template source that can be known without rendering it: syntax,
    unknown filters, and loops or ranges past the sandbox's limits. Lines are the template's."""
    try:
        compile_template(source, html=html)
        tree = parse_template(source)
    except TemplateError as error:
        cause = error.__cause__
        line = cause.lineno if isinstance(cause, jinja2.TemplateSyntaxError) else 1
        message = cause.message if isinstance(cause, jinja2.TemplateSyntaxError) else str(error)
        return [LimitIssue(line or 1, f"template error: {message}")]
    return template_limit_issues(tree)


# A plain template, cut into its text and the names it prints: (text, is_name) pairs.
PlainParts = tuple[tuple[str, bool], ...]


@functools.lru_cache(maxsize=256)
def plain_parts(source: str) -> PlainParts | None:
    """The parts of a text template that only prints variables by name (`Hi {{ first_name }}`),
    or None when it has any logic: tags, filters, attributes, literals. Most message templates
    are plain, and joining their parts is twenty times cheaper than running them through Jinja;
    anything else stays with Jinja. The text comes from Jinja's own parse, so whitespace
    control and the dropped trailing newline are as Jinja renders them."""
    compile_template(source)  # the same errors as the Jinja path, raised the same way
    parts: list[tuple[str, bool]] = []
    for node in TEXT_ENV.parse(source).body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                parts.append((child.data, False))
            elif isinstance(child, nodes.Name) and child.ctx == "load":
                parts.append((child.name, True))
            else:
                return None
    return tuple(parts)


def _substitute(parts: PlainParts, variables: Mapping[str, Any]) -> str | None:
    """A plain template's text, printed as Jinja prints it (str() of each value); None when a
    name is not among the variables (Jinja would look it up among its globals) or the text
    nears the output cap, whose error Jinja's path words."""
    pieces = []
    for text, is_name in parts:
        if not is_name:
            pieces.append(text)
        elif text in variables:
            pieces.append(str(variables[text]))
        else:
            return None
    rendered = "".join(pieces)
    return rendered if len(rendered) <= MAX_RENDERED_CHARS // 2 else None


def render_text(source: str, variables: Mapping[str, Any]) -> str:
    """A text (not HTML) template rendered: plain templates by substitution, others by Jinja."""
    parts = plain_parts(source)
    if parts is not None:
        rendered = _substitute(parts, variables)
        if rendered is not None:
            return rendered
    return _render(compile_template(source), variables)


def _render(template: jinja2.Template, variables: Mapping[str, Any]) -> str:
    """Render under a fresh budget, stopping as soon as the text passes the output cap: a
    template that would print gigabytes fails after the first hundred thousand characters."""
    chunks: list[str] = []
    size = 0
    try:
        with budget() as limits:
            for chunk in template.generate(variables):
                size += len(chunk)
                if size > MAX_RENDERED_CHARS:
                    raise RenderError(
                        f"rendered text is longer than {MAX_RENDERED_CHARS} characters"
                    )
                limits.check_time()
                chunks.append(chunk)
    except SecurityError as error:
        raise RenderError(f"template blocked by the sandbox: {error}") from error
    except (
        jinja2.TemplateError,
        ArithmeticError,
        TypeError,
        ValueError,
        LookupError,
        AttributeError,
        RecursionError,
    ) as error:
        if isinstance(error, RenderError):
            raise
        raise RenderError(f"template failed to render: {type(error).__name__}: {error}") from error
    return "".join(chunks)


# --- SMS -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RenderedSms:
    text: str
    info: SegmentInfo
    fits: bool
    reason: str | None
    product_shortened: bool
    normalized: bool


def tidy_sms_text(text: str) -> str:
    """One space for each run of horizontal whitespace (including odd Unicode spaces, which SMS
    does not need), no spaces at line ends, at most one blank line, no blank edges."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    tidied = "\n".join(re.sub(r"[^\S\n]+", " ", line).strip() for line in lines)
    return re.sub(r"\n{3,}", "\n\n", tidied).strip()


def ensure_brand_prefix(text: str, brand: str) -> str:
    """Prefix "{brand}: " unless the text already opens with the brand as a whole word."""
    opening, rest = text[: len(brand)], text[len(brand) :]
    if opening.casefold() == brand.casefold() and not rest[:1].isalnum():
        return text
    return f"{brand}: {text}"


def has_opt_out(text: str, texts: LocaleTexts) -> bool:
    return any(re.search(rf"\b{re.escape(word)}\b", text) for word in texts.stop_words)


def ensure_opt_out(text: str, texts: LocaleTexts) -> str:
    return text if has_opt_out(text, texts) else f"{text}\n{texts.opt_out_footer}"


def render_sms(body_source: str, ctx: MessageContext, *, max_segments: int) -> RenderedSms:
    """Render an SMS body with the brand prefix and the localised opt-out text guaranteed,
    then fit it into `max_segments`: look-alikes normalised, then the product name spelled in
    GSM-7 (emoji dropped), shortened, or replaced by the locale's word for "your items"."""
    texts = texts_for(ctx.locale)
    variables = ctx.variables()

    def compose(product: str) -> str:
        body = tidy_sms_text(render_text(body_source, {**variables, "product": product}))
        if not body:
            raise RenderError("the SMS body renders empty")
        return ensure_opt_out(ensure_brand_prefix(body, ctx.brand), texts)

    fit = fit_to_segments(compose, ctx.product, max_segments, texts.product_fallback)
    return RenderedSms(
        text=fit.text,
        info=fit.info,
        fits=fit.fits,
        reason=fit.reason,
        product_shortened=fit.product_shortened,
        normalized=fit.normalized,
    )


def help_reply(brand: str, locale: str | None, support_contact: str | None) -> str:
    """The HELP answer: brand, support contact, frequency, rates and STOP instructions."""
    texts = texts_for(locale)
    contact = _one_line(support_contact)
    contact_part = texts.help_contact.format(contact=contact) if contact else ""
    return normalize_lookalikes(f"{_require_brand(brand)}: {contact_part}{texts.help_body}")


def opt_out_confirmation(brand: str, locale: str | None) -> str:
    """The one message sent after an opt-out: no marketing, only how to come back."""
    text = texts_for(locale).opt_out_confirmation.format(brand=_require_brand(brand))
    return normalize_lookalikes(text)


def opt_in_confirmation(brand: str, locale: str | None) -> str:
    text = texts_for(locale).opt_in_confirmation.format(brand=_require_brand(brand))
    return normalize_lookalikes(text)


def _require_brand(brand: str) -> str:
    cleaned = _one_line(brand)
    if not cleaned:
        raise ValueError("a brand name is required: every SMS must name its sender")
    return cleaned


# --- Email -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


_URL = re.compile(r"https?://[^\s<>\"']+")
_URL_TRAILING = ".,;:!?)]}'\""


def _render_subject(source: str, ctx: MessageContext) -> str:
    subject = _one_line(render_text(source, ctx.variables()))
    if not subject:
        raise RenderError("the email subject renders empty")
    if len(subject) <= MAX_SUBJECT_CHARS:
        return subject
    head = subject[: MAX_SUBJECT_CHARS - 1]
    space = head.rfind(" ")
    if space > MAX_SUBJECT_CHARS // 2:
        head = head[:space]
    return head.rstrip(" ,;:-") + "…"


def tidy_email_text(text: str) -> str:
    """No trailing spaces, at most one blank line in a row, no blank edges. Indentation stays."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    tidied = "\n".join(line.rstrip() for line in lines)
    return re.sub(r"\n{3,}", "\n\n", tidied).strip("\n")


def _footer_lines(body: str, ctx: MessageContext) -> list[str]:
    """The footer lines the body does not already carry: postal address, unsubscribe link."""
    lines = []
    if ctx.postal_address and ctx.postal_address not in body:
        lines.append(ctx.postal_address)
    if ctx.unsubscribe_url and ctx.unsubscribe_url not in body:
        lines.append(texts_for(ctx.locale).unsubscribe_line.format(url=ctx.unsubscribe_url))
    return lines


def linkify(text: str) -> str:
    """Escape plain text for HTML, making http(s) URLs clickable."""
    parts = []
    position = 0
    for match in _URL.finditer(text):
        url = match.group().rstrip(_URL_TRAILING)
        parts.append(html.escape(text[position : match.start()]))
        escaped = html.escape(url)
        parts.append(f'<a href="{escaped}" style="color:#1a56db">{escaped}</a>')
        position = match.start() + len(url)
    parts.append(html.escape(text[position:]))
    return "".join(parts)


def _paragraphs(text: str) -> str:
    blocks = [block for block in re.split(r"\n\s*\n", text) if block.strip()]
    return "\n".join(
        '<p style="margin:0 0 16px">'
        + "<br>\n".join(linkify(line) for line in block.split("\n"))
        + "</p>"
        for block in blocks
    )


def _html_footer(lines: list[str]) -> str:
    inner = "<br>\n".join(linkify(line) for text in lines for line in text.split("\n"))
    return f'<p style="margin:24px 0 0;font-size:12px;line-height:1.4;color:#6b7280">{inner}</p>'


def _html_document(subject: str, language: str, content: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="{html.escape(language)}">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(subject)}</title>\n</head>\n"
        '<body style="margin:0;padding:0;background:#f4f4f5">\n'
        '<div style="max-width:600px;margin:0 auto;padding:24px 16px;background:#ffffff;'
        "font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;"
        'font-size:16px;line-height:1.5;color:#111827">\n'
        f"{content}\n</div>\n</body>\n</html>\n"
    )


def _with_html_footer(document: str, ctx: MessageContext) -> str:
    # The template's own footer counts if it shows the values, raw or HTML-escaped.
    lines = []
    if ctx.postal_address and not _mentions(document, ctx.postal_address):
        lines.append(ctx.postal_address)
    if ctx.unsubscribe_url and not _mentions(document, ctx.unsubscribe_url):
        lines.append(texts_for(ctx.locale).unsubscribe_line.format(url=ctx.unsubscribe_url))
    if not lines:
        return document
    footer = _html_footer(lines)
    body_end = document.lower().rfind("</body>")
    if body_end == -1:
        return f"{document}\n{footer}"
    return f"{document[:body_end]}{footer}\n{document[body_end:]}"


def _mentions(document: str, value: str) -> bool:
    return value in document or html.escape(value) in document


def render_email(
    subject_source: str, text_source: str, html_source: str | None, ctx: MessageContext
) -> RenderedEmail:
    """Subject, plain text and HTML of one email, each with the postal address and unsubscribe
    link guaranteed. Without an HTML template the HTML is built from the text body."""
    subject = _render_subject(subject_source, ctx)
    body = tidy_email_text(render_text(text_source, ctx.variables()))
    if not body.strip():
        raise RenderError("the email text body renders empty")
    footer = _footer_lines(body, ctx)
    text = body + ("\n\n" + "\n".join(footer) if footer else "")
    language = language_of(ctx.locale) or DEFAULT_LANGUAGE
    if html_source is None:
        content = _paragraphs(body) + (f"\n{_html_footer(footer)}" if footer else "")
        document = _html_document(subject, language, content)
    else:
        document = _render(compile_template(html_source, html=True), ctx.variables())
        if not document.strip():
            raise RenderError("the HTML template renders empty")
        document = _with_html_footer(document, ctx)
    return RenderedEmail(subject=subject, text=text, html=document)
