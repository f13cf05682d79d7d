"""Flow files: the shipped default flow, validation issues with exact lines, and content lookup."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import jinja2
import pytest

from cartback.core.flows import (
    Content,
    ContentOverride,
    FlowError,
    FlowIssue,
    VariantContent,
    default_flow_path,
    load_flow,
    parse_flow,
)
from cartback.core.model import Cart, CartLine, CartStatus, Channel
from cartback.core.yamlsrc import DuplicateKey, YamlSourceError, format_path, load_with_lines

MINIMAL = """\
name: t
abandon_after: 10m
steps:
  - {id: s1, at: 15m, channel: sms, body: hi}
"""


def issues_of(text: str) -> list[str]:
    with pytest.raises(FlowError) as caught:
        parse_flow(text, "f.yaml")
    return [str(issue) for issue in caught.value.issues]


# ---- the shipped default flow -------------------------------------------------------------------


def test_default_flow_sequence() -> None:
    flow = load_flow(default_flow_path())
    assert flow.name == "default"
    assert flow.abandon_after == timedelta(minutes=10)
    assert flow.exit_on == {"order_placed", "cart_emptied", "opted_out"}
    assert flow.holdout_percent == 0
    assert flow.variants == ()
    assert flow.enroll_when is None
    shape = [
        (step.id, step.at, step.channel, step.when.source if step.when else None)
        for step in flow.steps
    ]
    assert shape == [
        ("sms1", timedelta(minutes=15), Channel.SMS, "contact.sms_consent"),
        ("email1", timedelta(hours=1), Channel.EMAIL, "contact.email_consent"),
        ("sms2", timedelta(hours=8), Channel.SMS, "contact.sms_consent and not email1.opened"),
        ("email2", timedelta(hours=21), Channel.EMAIL, "contact.email_consent"),
        (
            "sms3",
            timedelta(hours=24),
            Channel.SMS,
            "contact.sms_consent and not email2.clicked and cart.value >= amounts.large_cart",
        ),
        ("email3", timedelta(hours=72), Channel.EMAIL, "contact.email_consent"),
    ]
    discount = flow.step("sms3").discount
    assert discount is not None
    assert (discount.code, discount.percent, discount.min_value, discount.expires_after) == (
        "COMEBACK10",
        Decimal(10),
        flow.amounts["large_cart"],
        timedelta(hours=48),
    )
    large = flow.amounts["large_cart"]
    assert (large.in_currency("USD"), large.in_currency("NOK")) == (Decimal(100), Decimal(1000))
    assert all(step.discount is None for step in flow.steps if step.id != "sms3")
    assert flow.step("sms1").content_for(None, "nb-NO").body.startswith("{{ brand }}: Hei")
    assert flow.source == str(default_flow_path())


# GSM 03.38 basic characters a short English/Norwegian text may use (no extension characters).
_GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_SAMPLE = {
    "brand": "Acme",
    "first_name": "Kari",
    "product": "Blue Shoes",
    "link": "",
    "discount_code": "COMEBACK10",
    "discount_text": "10% off",
}


def test_default_sms_bodies_are_short_gsm7_and_use_the_variables() -> None:
    flow = load_flow(default_flow_path())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    sms_steps = [step for step in flow.steps if step.channel is Channel.SMS]
    bodies = [(step, step.content.body) for step in sms_steps]
    bodies += [(step, locale.body or "") for step in sms_steps for locale in step.locales.values()]
    assert len(bodies) == 3 * 9  # three SMS steps, in English and eight more languages
    for step, body in bodies:
        rendered = env.from_string(body).render(**_SAMPLE)
        assert len(rendered) < 120, rendered
        assert set(rendered) <= _GSM_BASIC, rendered
        assert "STOP" not in body.upper()
        for name in ("brand", "link"):
            assert "{{ " + name in body
        if step.id == "sms3":
            assert "discount_code" in body and "discount_text" in body
            assert "COMEBACK10" in rendered
        else:
            assert "first_name" in body or "product" in body


def test_default_emails_render_their_items() -> None:
    flow = load_flow(default_flow_path())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    items = [{"title": "Blue Shoes", "quantity": 2, "price": "$50.00"}]
    context = {**_SAMPLE, "link": "https://x.test/l/1", "items": items, "cart_value": "$100.00"}
    for step in flow.steps:
        if step.channel is not Channel.EMAIL:
            continue
        assert step.content.subject
        text = env.from_string(step.content.body).render(**context)
        assert "Blue Shoes x 2" in text and "https://x.test/l/1" in text
        assert "unsubscribe" not in text.lower()


# ---- broken files: every issue with its exact file:line: field: message -------------------------

BROKEN = [
    pytest.param(
        "name: t\nabandon_after: 10m\nsteps:\n  - id: s1\n    at: 15m\n    chanel: sms\n"
        "    body: hi\n",
        ["f.yaml:6: steps[0].chanel: unknown key; did you mean channel?"],
        id="misspelled-key",
    ),
    pytest.param(
        "name: t\nsteps:\n  - id: x\n   at: 1m\n",
        [
            "f.yaml:4: yaml: expected <block end>, but found '<block mapping start>' "
            "(while parsing a block collection)"
        ],
        id="yaml-syntax",
    ),
    pytest.param(
        "- a\n- b\n",
        [
            "f.yaml:1: (top level): expected a mapping of flow settings "
            "(name, abandon_after, steps), got a list"
        ],
        id="top-level-list",
    ),
    pytest.param(
        "# nothing here\n",
        ["f.yaml:1: (top level): the file is empty; a flow needs name, abandon_after and steps"],
        id="empty",
    ),
    pytest.param(
        "name: t\nabandon_after: 10m\nname: u\nsteps:\n"
        "  - {id: a, at: 1m, channel: sms, body: x}\n",
        ["f.yaml:3: name: duplicate key (first set on line 1)"],
        id="duplicate-key",
    ),
    pytest.param(
        "name: t\nsteps:\n  - id: e\n    channel: email\n",
        [
            "f.yaml:1: abandon_after: is required",
            "f.yaml:3: steps[0].at: is required",
            "f.yaml:3: steps[0].body: is required",
            "f.yaml:3: steps[0].subject: is required for email steps",
        ],
        id="missing-fields",
    ),
    pytest.param(
        "name: t\nabandon_after: 1m\nsteps:\n"
        "  - {id: a, at: 2h, channel: sms, body: x}\n"
        "  - {id: b, at: 1h, channel: sms, body: x}\n",
        [
            "f.yaml:5: steps[1].at: 1h is earlier than the previous step (a at 2h); "
            "steps must be in time order"
        ],
        id="out-of-order",
    ),
    pytest.param(
        "name: t\nabandon_after: 1m\nsteps:\n"
        "  - {id: a, at: 1h, channel: sms, body: x}\n"
        "  - {id: a, at: 2h, channel: sms, body: y}\n",
        ["f.yaml:5: steps[1].id: duplicate step id a (steps[0], line 4)"],
        id="duplicate-step-id",
    ),
    pytest.param(
        "name: t\nabandon_after: 1m\nsteps:\n"
        "  - id: a\n    at: 1h\n    channel: sms\n    body: x\n    when: b.sent\n"
        "  - id: b\n    at: 2h\n    channel: sms\n    body: y\n    when: __import__('os')\n",
        [
            "f.yaml:8: steps[0].when: b.sent: step b does not come before this step",
            "f.yaml:13: steps[1].when: function calls cannot be used in conditions",
        ],
        id="bad-conditions",
    ),
    pytest.param(
        "name: t\nabandon_after: 1m\nenroll_when: a.sent\nsteps:\n"
        "  - {id: a, at: 2h, channel: sms, body: x}\n",
        ["f.yaml:3: enroll_when: a.sent: this condition cannot refer to steps"],
        id="enroll-when-step",
    ),
    pytest.param(
        "name: t\nabandon_after: 1m\nvariants:\n  - {name: a, weight: 1}\n"
        "  - {name: b, weight: -2}\nsteps:\n"
        "  - id: s\n    at: 1h\n    channel: sms\n    body: x\n"
        "    variant_overrides:\n      b: {body: y}\n      c: {body: z}\n",
        [
            "f.yaml:5: variants[1].weight: must be a positive whole number, got -2",
            "f.yaml:13: steps[0].variant_overrides.c: variant c is not declared (declared: a, b)",
        ],
        id="variants",
    ),
    pytest.param(
        "name: t\nabandon_after: 1m\nsteps:\n"
        "  - id: s\n    at: 1h\n    channel: sms\n    body: x\n"
        "    variant_overrides: {b: {body: y}}\n",
        [
            "f.yaml:8: steps[0].variant_overrides.b: variant b is not declared "
            "(the flow has no variants section)"
        ],
        id="override-without-variants",
    ),
    pytest.param(
        "name: t\nabandon_after: 1m\nholdout: 60%\nexit_on: [order_placed, order_paced]\n"
        "steps:\n  - {id: s, at: 1h, channel: sms, body: x}\n",
        [
            "f.yaml:3: holdout: 60% is out of range: use 0% to 50%",
            "f.yaml:4: exit_on[1]: 'order_paced' is not one of cart_emptied, opted_out, "
            "order_placed; did you mean order_placed?",
        ],
        id="holdout-and-exit-on",
    ),
    pytest.param(
        "name: t\nabandon_after: 1m\nsteps:\n"
        "  - id: s\n    at: 1h\n    channel: sms\n    body: x\n    discount:\n"
        "      code: A B\n      pool: p\n      percent: 0\n      amount: 5\n"
        "      min_value: -1\n      expires_after: 0s\n",
        [
            "f.yaml:8: steps[0].discount: set exactly one of code, pool or unique: true "
            "(found code and pool)",
            "f.yaml:8: steps[0].discount: set exactly one of percent or amount (found both)",
            "f.yaml:9: steps[0].discount.code: 'A B' is not valid: no spaces, at most 64",
            "f.yaml:11: steps[0].discount.percent: must be more than 0 and at most 100, got 0",
            "f.yaml:12: steps[0].discount.amount: 5 names no currency: give one per currency, "
            "like {USD: 5, EUR: ...}, or set the flow's base currency (currency: USD) at the top",
            "f.yaml:13: steps[0].discount.min_value: must be 0 or more, got -1",
            "f.yaml:14: steps[0].discount.expires_after: must be longer than 0s",
        ],
        id="discount",
    ),
    pytest.param(
        "name: t\nabandon_after: 1m\nsteps:\n"
        "  - id: s\n    at: 1h\n    channel: sms\n    body: x\n    subject: hi\n"
        "    max_segments: 11\n    locales:\n      no: {body: y}\n      nb: {html: z}\n",
        [
            "f.yaml:8: steps[0].subject: sms steps have no subject",
            "f.yaml:9: steps[0].max_segments: must be 1 to 10, got 11",
            "f.yaml:11: steps[0].locales.False: locale keys must be text, got true/false; "
            'quote it (YAML reads no, yes, on and off as true/false: write "no")',
            "f.yaml:12: steps[0].locales.nb.html: sms steps have no html",
        ],
        id="sms-content",
    ),
    pytest.param(
        "name: t\nabandon_after: 1m\nsteps:\n"
        "  - id: e\n    at: 1h\n    channel: email\n    subject: s\n    body: b\n"
        "    html: <p>b</p>\n    locales:\n      nb: {body: nb}\n",
        ["f.yaml:11: steps[0].locales.nb: overrides one of body/html but not html; set both"],
        id="html-without-body",
    ),
    pytest.param(
        "name: t\nabandon_after: 1m\nsteps:\n"
        "  - {id: if, at: 1h, channel: fax, body: x}\n"
        "  - {id: cart, at: 1, channel: sms, body: ''}\n",
        [
            "f.yaml:4: steps[0].id: if is a reserved word in conditions; pick another id",
            "f.yaml:4: steps[0].channel: 'fax' is not a channel: use sms or email",
            "f.yaml:5: steps[1].id: cart is a reserved word in conditions; pick another id",
            "f.yaml:5: steps[1].at: invalid duration '1': a number needs a unit (s, m, h, d, w)",
            "f.yaml:5: steps[1].body: must not be empty",
        ],
        id="ids-channel-duration",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_broken_files_report_exact_issues(text: str, expected: list[str]) -> None:
    assert issues_of(text) == expected


def test_many_issues_are_reported_at_once() -> None:
    text = """\
name: Bad Name
abandon_after: soon
holdout: true
steps:
  - id: s1
    at: 1h
    channel: sms
    body: hi
  - id: s2
    at: 30m
    channel: email
    body: x
    when: cart.vaule > 1
"""
    issues = issues_of(text)
    assert issues == [
        "f.yaml:1: name: 'Bad Name' is not valid: use a-z, 0-9, _ and -",
        "f.yaml:2: abandon_after: invalid duration 'soon': use forms like 30s, 15m, 1h30m, 2d",
        "f.yaml:3: holdout: expected a percentage like 10%, got True",
        "f.yaml:9: steps[1].subject: is required for email steps",
        "f.yaml:13: steps[1].when: unknown name cart.vaule (did you mean cart.value?)",
    ]


def test_flow_error_structure() -> None:
    with pytest.raises(FlowError) as caught:
        parse_flow("name: t\n", "x.yaml")
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.issues[0] == FlowIssue("x.yaml", 1, "abandon_after", "is required")
    assert str(error) == "x.yaml:1: abandon_after: is required\nx.yaml:1: steps: is required"


# ---- valid variations ---------------------------------------------------------------------------


def _cart(value: str, currency: str) -> Cart:
    line = CartLine(title="Coat", quantity=1, price=Decimal(value))
    return Cart(
        id=1,
        store_id=1,
        token="c1",
        contact_id=1,
        lines=(line,),
        value=Decimal(value),
        currency=currency,
        restore_url=None,
        status=CartStatus.OPEN,
        updated_at=datetime(2026, 6, 1, tzinfo=UTC),
    )


def test_full_shape_parses() -> None:
    text = """\
name: full-flow_2
description: Everything at once.
abandon_after: 1h30m
enroll_when: contact.has_phone or contact.has_email
exit_on: [order_placed]
holdout: 12.5%
variants:
  - {name: a, weight: 70}
  - {name: b, weight: 30}
steps:
  - id: sms1
    at: 0
    channel: sms
    max_segments: 2
    body: "{{ brand }}: hi"
    discount: {unique: true, amount: 4.99, min_value: "50.50"}
  - id: mail
    at: 2h
    channel: email
    when: variant == 'b' and not sms1.clicked
    subject: s
    body: b
    html: <p>b</p>
    discount: {pool: spring-codes, percent: 15}
currency: EUR
"""
    flow = parse_flow(text, "full.yaml")
    assert flow.holdout_percent == Decimal("12.5")
    assert flow.exit_on == {"order_placed"}
    assert [(v.name, v.weight) for v in flow.variants] == [("a", 70), ("b", 30)]
    assert flow.abandon_after == timedelta(hours=1, minutes=30)
    sms1, mail = flow.steps
    assert sms1.max_segments == 2 and mail.max_segments == 1
    assert sms1.discount is not None and sms1.discount.unique
    assert sms1.discount.amount_for("EUR") == Decimal("4.99")
    assert sms1.discount.applies_to(_cart("50.50", "EUR"))
    assert not sms1.discount.applies_to(_cart("50.49", "EUR"))
    # The plain numbers are euros: a krone cart has no figure to meet.
    assert not sms1.discount.applies_to(_cart("5000", "NOK"))
    assert mail.discount is not None and mail.discount.pool == "spring-codes"
    assert mail.when is not None and mail.when.step_refs == {"sms1"}
    assert (sms1.line, mail.line) == (11, 17)
    assert flow.index_of("mail") == 1 and flow.step("mail") is mail
    with pytest.raises(KeyError, match="no step 'nope'"):
        flow.step("nope")
    assert hash(flow) == hash(parse_flow(text, "full.yaml"))


@pytest.mark.parametrize(
    ("holdout", "expected"), [("0", 0), ("10%", 10), ("'7.5 %'", Decimal("7.5")), ("50", 50)]
)
def test_holdout_forms(holdout: str, expected: Decimal) -> None:
    flow = parse_flow(MINIMAL + f"holdout: {holdout}\n")
    assert flow.holdout_percent == expected


def test_version_is_a_hash_of_the_text() -> None:
    first = parse_flow(MINIMAL)
    assert re.fullmatch(r"[0-9a-f]{12}", first.version)
    assert parse_flow(MINIMAL).version == first.version
    assert parse_flow(MINIMAL + "# a comment\n").version != first.version
    assert parse_flow(MINIMAL.replace("hi", "hello")).version != first.version


def test_load_flow_reads_files(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    assert load_flow(path).source == str(path)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: t\n", encoding="utf-8")
    with pytest.raises(FlowError, match=re.escape(f"{broken}:1: abandon_after: is required")):
        load_flow(str(broken))
    with pytest.raises(FlowError, match=r"missing\.yaml:1: \(file\): cannot read"):
        load_flow(tmp_path / "missing.yaml")


# ---- content_for --------------------------------------------------------------------------------

CONTENT_FLOW = """\
name: t
abandon_after: 1m
variants: [{name: a, weight: 1}, {name: b, weight: 1}]
steps:
  - id: e
    at: 1h
    channel: email
    subject: S
    body: B
    locales:
      nb: {subject: S-nb}
      nb-NO: {subject: S-nbNO, body: B-nbNO}
      sv: {body: B-sv}
    variant_overrides:
      b:
        subject: S-b
        locales:
          nb: {body: B-b-nb}
"""


@pytest.mark.parametrize(
    ("variant", "locale", "expected"),
    [
        (None, None, ("B", "S")),
        (None, "de", ("B", "S")),
        (None, "nb", ("B", "S-nb")),
        (None, "nb-SE", ("B", "S-nb")),  # no exact match: the language entry
        (None, "nb-NO", ("B-nbNO", "S-nbNO")),  # exact match wins over the language
        (None, "NB_no", ("B-nbNO", "S-nbNO")),  # case and _ vs - do not matter
        (None, "sv-FI", ("B-sv", "S")),  # unset fields fall back to the default
        ("a", "sv", ("B-sv", "S")),  # a variant without overrides
        ("b", None, ("B", "S-b")),
        ("b", "sv", ("B-sv", "S-b")),  # variant subject, then the locale's body
        ("b", "nb", ("B-b-nb", "S-b")),  # the variant's own locale comes first
        ("b", "nb-NO", ("B-b-nb", "S-b")),
        ("zz", "nb", ("B", "S-nb")),  # an unknown variant is ignored
    ],
)
def test_content_for_fallback_order(
    variant: str | None, locale: str | None, expected: tuple[str, str]
) -> None:
    step = parse_flow(CONTENT_FLOW).step("e")
    content = step.content_for(variant, locale)
    assert (content.body, content.subject) == expected
    assert content.html is None


def test_parsed_overrides_keep_only_what_they_set() -> None:
    step = parse_flow(CONTENT_FLOW).step("e")
    assert step.content == Content(body="B", subject="S")
    assert step.locales["nb"] == ContentOverride(subject="S-nb")
    assert step.variant_overrides["b"] == VariantContent(
        ContentOverride(subject="S-b"), {"nb": ContentOverride(body="B-b-nb")}
    )


# ---- the line-tracking YAML loader the flow parser is built on ----------------------------------


def test_yaml_loader_tracks_lines_merges_and_duplicates() -> None:
    text = "base: &b\n  x: 1\n  y: 2\nm:\n  <<: *b\n  y: 3\nm: again\nlist:\n  - a\n  - {k: v}\n"
    value, lines = load_with_lines(text, "c.yaml")
    assert value == {"base": {"x": 1, "y": 2}, "m": {"x": 1, "y": 3}, "list": ["a", {"k": "v"}]}
    assert lines.line_of(("m", "y")) == 6  # the explicit key, not the merged one
    assert lines.line_of(("m", "x")) == 2  # where the merged value is written
    assert lines.line_of(("list", 1, "k")) == 10
    assert lines.line_of(("list", 1, "missing", "deeper")) == 10  # nearest recorded parent
    assert lines.duplicates == (DuplicateKey(("m",), 7, 4),)
    assert format_path(("steps", 2, "discount", "percent")) == "steps[2].discount.percent"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &x [*x]\n", "c.yaml:1: recursive alias: a value cannot contain itself"),
        ("a: !!python/object:os.system x\n", "c.yaml:1: could not determine a constructor"),
        ("a: 1\n---\nb: 2\n", "c.yaml:2: but found another document"),
        ("a:\n  ? [1]\n  : 2\n", "c.yaml:2: mapping keys must be plain values"),
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
                for p, c in zip("abcdef", "bcdefg", strict=True)
            )
            + "h: [*g, *g]\n",
            # Reported at the anchored value being expanded: aliases keep no position of their own.
            "c.yaml:1: document too large (more than 100000 values)",
        ),
    ],
)
def test_yaml_loader_refuses_unsafe_or_odd_documents(text: str, message: str) -> None:
    with pytest.raises(YamlSourceError) as caught:
        load_with_lines(text, "c.yaml")
    assert str(caught.value).startswith(message)


# ---- grace ----------------------------------------------------------------------------------


def test_grace_is_optional_and_read_as_a_duration() -> None:
    assert parse_flow(MINIMAL).grace is None
    assert parse_flow(MINIMAL + "grace: 2h\n").grace == timedelta(hours=2)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("30s", "f.yaml:5: grace: 30s is too short: a step must be allowed at least 1m"),
        ("soon", "f.yaml:5: grace: invalid duration 'soon'"),
        ("[1h]", "f.yaml:5: grace: expected a duration like 15m, got a list"),
    ],
)
def test_a_bad_grace_names_its_line(value: str, message: str) -> None:
    issues = issues_of(MINIMAL + f"grace: {value}\n")
    assert len(issues) == 1 and issues[0].startswith(message), issues


TIMED = """\
name: timed
abandon_after: 10m
steps:
  - id: email1
    at: 1h
    channel: email
    subject: s
    body: b
  - id: sms1
    at: {sms_at}
    channel: sms
    when: {when}
    body: "{{{{ brand }}}}: hi"
"""


def test_condition_on_a_step_planned_at_the_same_time_is_an_error_with_its_line() -> None:
    text = TIMED.format(sms_at="1h", when="not email1.opened")
    with pytest.raises(FlowError) as caught:
        parse_flow(text, "timed.yaml")
    [issue] = caught.value.issues
    assert (issue.source, issue.line, issue.field) == ("timed.yaml", 12, "steps[1].when")
    assert "email1.opened cannot be true yet" in issue.message


def test_condition_on_a_step_planned_shortly_before_is_a_warning() -> None:
    text = TIMED.format(sms_at="1h30m", when="not email1.clicked")
    flow = parse_flow(text, "timed.yaml")
    [warning] = flow.warnings
    assert (warning.line, warning.field) == (12, "steps[1].when")
    assert "only 30m after email1" in warning.message
    assert parse_flow(text, "timed.yaml", min_condition_gap=timedelta(minutes=30)).warnings == ()
    assert parse_flow(TIMED.format(sms_at="3h", when="email1.delivered"), "t").warnings == ()


def test_sent_and_skipped_are_known_at_once_so_timing_does_not_apply() -> None:
    flow = parse_flow(TIMED.format(sms_at="1h", when="not email1.sent"), "timed.yaml")
    assert flow.warnings == ()


def test_stored_versions_are_loaded_without_the_timing_check() -> None:
    text = TIMED.format(sms_at="1h", when="not email1.opened")
    assert parse_flow(text, "stored", check_templates=False).steps[1].id == "sms1"


def test_shipped_flows_conditions_can_be_true_and_false() -> None:
    flow = load_flow(default_flow_path())
    assert flow.warnings == ()
    for step in flow.steps:
        for read_id, _outcome in step.when.step_reads if step.when else ():
            assert step.at - flow.step(read_id).at >= timedelta(hours=1)


def test_discount_exclusions_reach_every_discount_and_bad_ones_name_their_line() -> None:
    text = """\
name: excl
abandon_after: 10m
discount_exclusions:
  skus: [GIFT-50]
  tags: [no-discount]
steps:
  - id: sms1
    at: 1h
    channel: sms
    body: "{{ brand }}: hi"
    discount: {code: SAVE, percent: 10}
"""
    flow = parse_flow(text, "excl.yaml")
    discount = flow.steps[0].discount
    assert discount is not None
    assert discount.exclusions.skus == {"GIFT-50"} and flow.exclusions.tags == {"no-discount"}
    with pytest.raises(FlowError) as caught:
        parse_flow(text.replace("skus: [GIFT-50]", "skus: GIFT-50"), "excl.yaml")
    [issue] = caught.value.issues
    assert (issue.line, issue.field) == (4, "discount_exclusions.skus")


# ---- languages --------------------------------------------------------------------------------

PARTIAL = """\
name: partial
language: en
abandon_after: 10m
steps:
  - id: sms1
    at: 15m
    channel: sms
    body: "{{ brand }}: hi {{ link }}"
    locales:
      nb: {body: "{{ brand }}: hei {{ link }}"}
      da: {body: "{{ brand }}: hej {{ link }}"}
  - id: email1
    at: 1h
    channel: email
    subject: s
    body: b
    locales:
      nb: {subject: s-nb}
  - id: sms2
    at: 8h
    channel: sms
    body: "{{ brand }}: again {{ link }}"
"""


def test_a_locale_that_covers_only_some_steps_is_a_warning_with_its_line() -> None:
    flow = parse_flow(PARTIAL, "partial.yaml")
    assert [str(warning) for warning in flow.warnings] == [
        "partial.yaml:17: steps[1].locales: email1 has no wording for da (another step has "
        "it): those shoppers get this step in en",
        "partial.yaml:18: steps[1].locales.nb: sets no body: nb shoppers get the body in en",
        "partial.yaml:19: steps[2]: sms2 has no wording for da, nb (other steps have them): "
        "those shoppers get this step in en",
    ]
    assert flow.language == "en" and all(step.language == "en" for step in flow.steps)


def test_a_flow_without_a_language_falls_back_to_the_stores() -> None:
    flow = parse_flow(PARTIAL.replace("language: en\n", ""), "partial.yaml")
    assert flow.language is None
    assert flow.warnings[0].message.endswith("get this step in the store's default language")
    assert flow.step("sms1").offered_locales("de") == ("de", "nb", "da")


def test_a_flow_whose_locales_cover_every_step_has_no_warning() -> None:
    text = PARTIAL.replace(
        "nb: {subject: s-nb}",
        "nb: {subject: s-nb, body: b-nb}\n      da: {subject: s-da, body: b-da}",
    )
    text += '    locales:\n      NB: {body: "{{ brand }}: igjen {{ link }}"}\n      da: {body: x}\n'
    assert parse_flow(text, "full.yaml").warnings == ()


def test_a_bad_language_is_an_error_with_its_line() -> None:
    with pytest.raises(FlowError) as caught:
        parse_flow(PARTIAL.replace("language: en", "language: english please"), "bad.yaml")
    assert [str(issue) for issue in caught.value.issues] == [
        "bad.yaml:2: language: 'english please' is not valid: use a language like en or nb"
    ]


def test_step_offers_its_own_language_first_then_its_locales() -> None:
    flow = parse_flow(CONTENT_FLOW)
    assert flow.step("e").offered_locales("de") == ("de", "nb", "nb-NO", "sv")
