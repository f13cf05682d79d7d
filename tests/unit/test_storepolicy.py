"""A store's policy file: checked with file:line errors; it can tighten rules, never loosen."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cartback.core.conditions import ProductExclusions
from cartback.core.flows import parse_flow, with_exclusions
from cartback.core.policy import Cap
from cartback.core.storepolicy import (
    StorePolicyError,
    parse_store_policy_text,
    store_exclusions,
    store_policy,
)

GOOD = """\
sms_cooldown: 4h
sms_cap: {count: 2, window: 24h}
email_cap: null
rules:
  - name: us.quiet_hours
    window: {mon-sun: "09:00-20:00"}
"""


def test_a_good_policy_becomes_the_store_policy() -> None:
    settings = parse_store_policy_text(GOOD, "policy.yaml")
    policy = store_policy(settings, "America/New_York")
    assert policy.sms_cooldown == timedelta(hours=4)
    assert policy.sms_cap == Cap(2, timedelta(hours=24))
    assert policy.email_cap is None
    assert policy.default_zone == "America/New_York"
    assert policy.rule_overrides[0]["name"] == "us.quiet_hours"


def test_no_settings_means_the_defaults() -> None:
    policy = store_policy({}, "UTC")
    assert policy.sms_cooldown == timedelta(hours=2)
    assert policy.sms_cap == Cap(3, timedelta(hours=24))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sms_coldown: 2h\n", "policy.yaml:1: sms_coldown: unknown setting"),
        ("sms_cooldown: soon\n", "policy.yaml:1: sms_cooldown: invalid duration"),
        ("sms_cap: {count: 0, window: 24h}\n", "policy.yaml:1: sms_cap.count: must be a whole"),
        ("sms_cap: {count: 2}\n", "policy.yaml:1: sms_cap.window: is required"),
        (
            "rules:\n  - name: us.quiet_hours\n    window: {mon-sun: '07:00-22:00'}\n",
            "policy.yaml:2: rules[0]: store override of us.quiet_hours would loosen it",
        ),
        (
            "rules:\n  - name: us.quiet_hour\n    window: {mon-sun: '09:00-20:00'}\n",
            "policy.yaml:2: rules[0]: store override us.quiet_hour: no shipped rule",
        ),
        ("sms_cap: [1\n", "policy.yaml:2: yaml: expected"),
        (
            "discount_exclusions:\n  skus: GIFT-50\n",
            "policy.yaml:2: discount_exclusions.skus: expected a list of text",
        ),
        (
            "discount_exclusions:\n  sku: [GIFT-50]\n",
            "policy.yaml:2: discount_exclusions.sku: unknown key",
        ),
        ("discount_exclusions: [GIFT-50]\n", "policy.yaml:1: discount_exclusions: expected a"),
    ],
)
def test_bad_policies_name_file_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(StorePolicyError) as caught:
        parse_store_policy_text(text, "policy.yaml")
    assert str(caught.value.issues[0]).startswith(expected), str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(StorePolicyError) as caught:
        parse_store_policy_text("sms_cooldown: x\nemail_cooldown: y\nfoo: 1\n", "p.yaml")
    assert [issue.line for issue in caught.value.issues] == [1, 2, 3]


def test_the_stores_discount_exclusions_join_each_flows_own() -> None:
    settings = parse_store_policy_text(
        "discount_exclusions:\n  skus: [GIFT-50, ' SALE-1 ']\n  tags: [clearance]\n",
        "policy.yaml",
    )
    extra = store_exclusions(settings)
    assert extra == ProductExclusions(
        skus=frozenset({"GIFT-50", "SALE-1"}), tags=frozenset({"clearance"})
    )
    flow = parse_flow(
        """\
name: t
abandon_after: 10m
discount_exclusions: {tags: [no-discount]}
steps:
  - {id: a, at: 1h, channel: email, subject: s, body: one}
  - id: b
    at: 2h
    channel: sms
    body: "{{ discount_code }}"
    discount: {code: SAVE10, percent: 10}
""",
        "t.yaml",
    )
    merged = with_exclusions(flow, extra)
    both = ProductExclusions(
        skus=frozenset({"GIFT-50", "SALE-1"}), tags=frozenset({"clearance", "no-discount"})
    )
    assert merged.exclusions == both
    discount = merged.steps[1].discount
    assert discount is not None and discount.exclusions == both
    # A store without exclusions leaves the flow as it is.
    assert with_exclusions(flow, store_exclusions({})) is flow
