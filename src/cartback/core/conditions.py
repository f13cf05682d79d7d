"""The condition language of flow files (`when`, `enroll_when`): small, typed and safe.

A condition is parsed with `ast.parse(..., mode="eval")` and then translated, node by node, from a
whitelist into a private tree that this module interprets. Nothing is ever handed to `eval` or
`compile`: a construct outside the whitelist is a `ConditionError` naming it.

Names are checked at parse time against a fixed vocabulary, and comparisons are type-checked
(a number is never compared with a string), so a typo fails `flows check` instead of silently
skipping messages. In a flow, `cart.value` is money: it is compared with an amount the flow
states per currency (`amounts.large_cart`) or with a plain number in the flow's base currency,
never with a bare number whose currency nobody said (see core.money). At run time evaluation
never raises: missing facts are None, and any comparison involving None (or values of the wrong
kind) is false.
"""

from __future__ import annotations

import ast
import difflib
import keyword
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import Enum
from operator import attrgetter

from cartback.core.model import Cart, CartLine, Contact, StepOutcome
from cartback.core.money import Amount, Rates

MAX_LENGTH = 500


class ConditionError(ValueError):
    """A condition that cannot be accepted; the message says why, in the user's terms."""


class Kind(Enum):
    NUMBER = "a number"
    TEXT = "text"
    BOOL = "true/false"
    TAGS = "a tag list"
    MONEY = "money"


CART_FIELDS: Mapping[str, Kind] = {
    "value": Kind.NUMBER,
    "currency": Kind.TEXT,
    "item_count": Kind.NUMBER,
    "tags": Kind.TAGS,
    "skus": Kind.TAGS,
    "has_excluded_products": Kind.BOOL,
    "only_excluded_products": Kind.BOOL,
}
CONTACT_FIELDS: Mapping[str, Kind] = {
    "sms_consent": Kind.BOOL,
    "email_consent": Kind.BOOL,
    "has_phone": Kind.BOOL,
    "has_email": Kind.BOOL,
    "returning": Kind.BOOL,
    "new": Kind.BOOL,
    "country": Kind.TEXT,
    "region": Kind.TEXT,
    "locale": Kind.TEXT,
    "tags": Kind.TAGS,
    "orders_count": Kind.NUMBER,
    "abandoned_count": Kind.NUMBER,
}
STEP_FIELDS: tuple[str, ...] = ("sent", "delivered", "opened", "clicked", "skipped")
# Outcomes that come from the shopper or the network after the send, not from the decision.
ENGAGEMENT_FIELDS: frozenset[str] = frozenset({"delivered", "opened", "clicked"})
# Top-level fact names; a step id may not take one of these (or a Python keyword).
RESERVED_NAMES = frozenset({"cart", "contact", "variant", "amounts", "true", "false"})
# Where build_facts puts the store's exchange rates; no condition can name it.
RATES_FACT = "_rates"


@dataclass(frozen=True, slots=True)
class MoneyTerms:
    """What money means in one flow's conditions: its base currency (a plain number is in it)
    and its named amounts. `plain_allowed` reads a plain number without a base currency as in
    the cart's own currency: only for flow versions stored before amounts had currencies."""

    base: str | None = None
    amounts: Mapping[str, Amount] = field(default_factory=dict)
    plain_allowed: bool = False
    # Names declared under `amounts` whose entry has an error of its own (reported there).
    broken: frozenset[str] = frozenset()


def is_reserved_name(name: str) -> bool:
    return name in RESERVED_NAMES or keyword.iskeyword(name)


# ---- the private tree -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Literal:
    value: Decimal | str | bool


@dataclass(frozen=True, slots=True)
class _Fact:
    path: tuple[str, ...]
    is_step: bool


@dataclass(frozen=True, slots=True)
class _Money:
    amount: Amount


@dataclass(frozen=True, slots=True)
class _Choices:
    values: tuple[Decimal | str | bool, ...]


@dataclass(frozen=True, slots=True)
class _Not:
    operand: _Expr


@dataclass(frozen=True, slots=True)
class _BoolOp:
    is_and: bool
    operands: tuple[_Expr, ...]


@dataclass(frozen=True, slots=True)
class _Compare:
    left: _Expr
    # (operator, right operand) pairs; `a < b <= c` holds when every pair holds.
    links: tuple[tuple[str, _Expr | _Choices], ...]


_Expr = _Literal | _Fact | _Money | _Not | _BoolOp | _Compare


@dataclass(frozen=True)
class Condition:
    source: str
    _tree: _Expr = field(repr=False, compare=False)
    _step_refs: frozenset[str] = field(repr=False, compare=False)
    _step_reads: frozenset[tuple[str, str]] = field(default=frozenset(), repr=False, compare=False)
    _amounts: tuple[Amount, ...] = field(default=(), repr=False, compare=False)

    @property
    def step_refs(self) -> frozenset[str]:
        """The step ids this condition reads (`sms1.sent` -> "sms1")."""
        return self._step_refs

    @property
    def step_reads(self) -> frozenset[tuple[str, str]]:
        """(step id, field) pairs this condition reads (`email1.opened` -> ("email1", "opened"))."""
        return self._step_reads

    @property
    def amounts(self) -> tuple[Amount, ...]:
        """The amounts of money this condition compares the cart's value with."""
        return self._amounts

    def evaluate(self, facts: Mapping[str, object]) -> bool:
        """True or false for these facts (see `build_facts`); never raises on odd facts."""
        return _truthy(_evaluate(self._tree, facts))

    def facts_read(self, facts: Mapping[str, object]) -> dict[str, object]:
        """The value of each fact the condition reads, by its dotted name, in reading order
        (`{"contact.sms_consent": True, "email1.opened": False}`): what decided its branch."""
        return {".".join(fact.path): _lookup(fact, facts) for fact in _facts_in(self._tree)}


def parse_condition(
    source: str,
    known_steps: Collection[str],
    *,
    all_steps: Collection[str] = (),
    steps_allowed: bool = True,
    money: MoneyTerms | None = None,
) -> Condition:
    """Parse and check `source`. `known_steps` are the ids it may read (steps earlier in the flow);
    `all_steps`, when given, lets the error for a later step say so instead of "unknown".
    `steps_allowed=False` is for conditions checked before any step runs (enroll_when).
    `money`: the flow's currency terms; flows always give them. Without them `cart.value` is a
    plain number, compared as one."""
    if not isinstance(source, str):
        raise ConditionError(f"a condition must be text, got {type(source).__name__}")
    text = source.strip()
    if not text:
        raise ConditionError("the condition is empty")
    if len(text) > MAX_LENGTH:
        raise ConditionError(f"the condition is longer than {MAX_LENGTH} characters")
    try:
        module = ast.parse(text, mode="eval")
    except SyntaxError as error:
        where = f" at column {error.offset}" if error.offset else ""
        raise ConditionError(f"syntax error{where}: {error.msg}") from None
    except (ValueError, MemoryError, RecursionError) as error:
        raise ConditionError(f"cannot parse the condition: {error}") from None
    translator = _Translator(
        text, known_steps if steps_allowed else (), all_steps, steps_allowed, money
    )
    tree = translator.expression(module.body)
    return Condition(
        source=text,
        _tree=tree,
        _step_refs=frozenset(translator.step_refs),
        _step_reads=frozenset(translator.step_reads),
        _amounts=tuple(dict.fromkeys(translator.amounts)),
    )


@dataclass(frozen=True, slots=True)
class ProductExclusions:
    """Products a flow's discounts do not cover (gift cards, sale items): lines by SKU or
    product id, whole carts by tag."""

    skus: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()

    def _line(self, line: CartLine) -> bool:
        return line.sku in self.skus or line.product_id in self.skus

    def _tagged(self, cart: Cart) -> bool:
        return not self.tags.isdisjoint(cart.tags)

    def any_in(self, cart: Cart) -> bool:
        return self._tagged(cart) or any(self._line(line) for line in cart.lines)

    def all_of(self, cart: Cart) -> bool:
        """True for a cart with lines that are all excluded (or that carries an excluded tag)."""
        if not cart.lines:
            return False
        return self._tagged(cart) or all(self._line(line) for line in cart.lines)

    def union(self, other: ProductExclusions) -> ProductExclusions:
        """Both lists: the flow's exclusions and the store's apply together."""
        return ProductExclusions(skus=self.skus | other.skus, tags=self.tags | other.tags)


NO_EXCLUSIONS = ProductExclusions()


def build_facts(
    cart: Cart,
    contact: Contact | None,
    variant: str | None,
    history: Mapping[str, StepOutcome],
    exclusions: ProductExclusions = NO_EXCLUSIONS,
    rates: Rates | None = None,
) -> dict[str, object]:
    """The facts a condition sees. Without a contact every contact fact is missing (so false).
    `rates`, the store's exchange rates, let an amount stated in other currencies be compared."""
    facts: dict[str, object] = {
        step_id: dict(zip(STEP_FIELDS, _read_step_fields(outcome), strict=True))
        for step_id, outcome in history.items()
    }
    facts["cart"] = _cart_facts(cart, exclusions)
    facts["contact"] = {} if contact is None else _contact_facts(contact)
    facts["variant"] = variant
    if rates is not None:
        facts[RATES_FACT] = rates
    return facts


_read_step_fields = attrgetter(*STEP_FIELDS)


# The last cart's and contact's facts, kept with the (frozen) objects they were read from: the
# timer and the backtest evaluate several conditions of one cart in a row. Conditions only read
# these dicts.
_last_cart: tuple[Cart | None, ProductExclusions | None, dict[str, object]] = (None, None, {})
_last_contact: tuple[Contact | None, dict[str, object]] = (None, {})


def _cart_facts(cart: Cart, exclusions: ProductExclusions) -> dict[str, object]:
    global _last_cart
    if cart is _last_cart[0] and exclusions is _last_cart[1]:
        return _last_cart[2]
    facts: dict[str, object] = {
        "value": cart.value,
        "currency": cart.currency,
        "item_count": Decimal(cart.item_count),
        "tags": tuple(cart.tags),
        "skus": tuple(line.sku for line in cart.lines if line.sku),
        "has_excluded_products": exclusions.any_in(cart),
        "only_excluded_products": exclusions.all_of(cart),
    }
    _last_cart = (cart, exclusions, facts)
    return facts


def _contact_facts(contact: Contact) -> dict[str, object]:
    global _last_contact
    if contact is _last_contact[0]:
        return _last_contact[1]
    facts = _read_contact_facts(contact)
    _last_contact = (contact, facts)
    return facts


def _read_contact_facts(contact: Contact) -> dict[str, object]:
    return {
        "sms_consent": contact.sms_marketing,
        "email_consent": contact.email_marketing,
        "has_phone": bool(contact.phone),
        "has_email": bool(contact.email),
        "returning": contact.orders_count > 0,
        "new": contact.orders_count == 0,
        "country": contact.country,
        "region": contact.region,
        "locale": contact.locale,
        "tags": tuple(contact.tags),
        "orders_count": Decimal(contact.orders_count),
        "abandoned_count": Decimal(contact.abandoned_count),
    }


# ---- parsing ----------------------------------------------------------------------------------

_COMPARE_OPS: Mapping[type[ast.cmpop], str] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}
_ORDERING = frozenset({"<", "<=", ">", ">="})
_MEMBERSHIP = frozenset({"in", "not in"})
_BOOL_NAMES = {"true": True, "false": False}

_FORBIDDEN: Mapping[type[ast.AST], str] = {
    ast.Call: "function calls",
    ast.Subscript: "subscripts ([...])",
    ast.Lambda: "lambda",
    ast.BinOp: "arithmetic",
    ast.IfExp: "if/else expressions",
    ast.JoinedStr: "f-strings",
    ast.FormattedValue: "f-strings",
    ast.NamedExpr: "assignment expressions (:=)",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.Dict: "dict literals",
    ast.Set: "set literals (use a list: [a, b])",
    ast.Starred: "starred expressions",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slices",
}


def _operator_symbol(node: ast.AST) -> str:
    if isinstance(node, ast.BinOp):
        symbols = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Mod: "%"}
        return f" ({symbols.get(type(node.op), type(node.op).__name__)})"
    return ""


class _Translator:
    def __init__(
        self,
        text: str,
        known_steps: Collection[str],
        all_steps: Collection[str],
        steps_allowed: bool,
        money: MoneyTerms | None = None,
    ) -> None:
        self.text = text
        self.money = money
        self.amounts: list[Amount] = []
        self.steps_allowed = steps_allowed
        self.known_steps = frozenset(known_steps)
        self.all_steps = frozenset(all_steps)
        self.step_refs: set[str] = set()
        self.step_reads: set[tuple[str, str]] = set()

    def expression(self, node: ast.expr) -> _Expr:
        if isinstance(node, ast.BoolOp):
            is_and = isinstance(node.op, ast.And)
            return _BoolOp(is_and, tuple(self.expression(value) for value in node.values))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return _Not(self.expression(node.operand))
        if isinstance(node, ast.Compare):
            return self.comparison(node)
        if isinstance(node, ast.List | ast.Tuple):
            raise ConditionError("a list is only allowed on the right of `in` / `not in`")
        return self.operand(node)

    def operand(self, node: ast.expr) -> _Literal | _Fact | _Money:
        if isinstance(node, ast.Constant) or (
            isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd)
        ):
            return _Literal(self.literal(node))
        if isinstance(node, ast.Name) and node.id in _BOOL_NAMES:
            return _Literal(_BOOL_NAMES[node.id])
        if isinstance(node, ast.Name | ast.Attribute):
            return self.fact(node)
        if isinstance(node, ast.Compare | ast.BoolOp) or (
            isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)
        ):
            raise ConditionError(
                "compare a name with a value; and/or/not and comparisons cannot be compared"
            )
        raise ConditionError(f"{self.construct(node)} cannot be used in conditions")

    def construct(self, node: ast.AST) -> str:
        name = _FORBIDDEN.get(type(node))
        if name is not None:
            return name + _operator_symbol(node)
        if isinstance(node, ast.UnaryOp):
            return "unary operators (~)"
        if isinstance(node, ast.List | ast.Tuple):
            return "lists outside `in`"
        return f"{type(node).__name__} expressions"

    def literal(self, node: ast.expr) -> Decimal | str | bool:
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.operand, ast.Constant) or not _is_number(node.operand.value):
                raise ConditionError("arithmetic (unary -) cannot be used in conditions")
            magnitude = self.literal(node.operand)
            assert isinstance(magnitude, Decimal)
            return -magnitude if isinstance(node.op, ast.USub) else magnitude
        assert isinstance(node, ast.Constant)
        value = node.value
        if isinstance(value, bool | str):
            return value
        if value is None:
            raise ConditionError(
                "None is not supported: a missing value already makes comparisons false"
            )
        if isinstance(value, int | float):
            # Parse the literal's own text so that 0.1 is exactly Decimal("0.1").
            segment = ast.get_source_segment(self.text, node) or repr(value)
            try:
                number = Decimal(segment.replace("_", ""))
            except InvalidOperation:
                raise ConditionError(f"unsupported number literal {segment}") from None
            if not number.is_finite():
                raise ConditionError(f"number {segment} is out of range")
            return number
        raise ConditionError(f"{type(value).__name__} literals cannot be used in conditions")

    def fact(self, node: ast.Name | ast.Attribute) -> _Fact | _Money:
        parts: list[str] = []
        current: ast.expr = node
        while isinstance(current, ast.Attribute):
            parts.insert(0, current.attr)
            current = current.value
        if not isinstance(current, ast.Name):
            raise ConditionError("attribute access is only allowed on names, like cart.value")
        parts.insert(0, current.id)
        for part in parts:
            if part.startswith("_"):
                raise ConditionError(f"names starting with an underscore ({part}) are not allowed")
        dotted = ".".join(parts)
        if dotted == "variant":
            return _Fact(("variant",), is_step=False)
        if len(parts) == 2 and parts[0] == "cart" and parts[1] in CART_FIELDS:
            return _Fact(tuple(parts), is_step=False)
        if len(parts) == 2 and parts[0] == "contact" and parts[1] in CONTACT_FIELDS:
            return _Fact(tuple(parts), is_step=False)
        if parts[0] == "amounts" and self.money is not None:
            return self.named_amount(parts, dotted)
        if len(parts) == 2 and parts[1] in STEP_FIELDS:
            return self.step_fact(node, parts[0], dotted)
        if len(parts) == 1 and (parts[0] in self.known_steps or parts[0] in self.all_steps):
            raise ConditionError(f"use {dotted}.sent, .delivered, .opened, .clicked or .skipped")
        raise ConditionError(f"unknown name {dotted}{self.suggestion(dotted)}")

    def named_amount(self, parts: list[str], dotted: str) -> _Money:
        assert self.money is not None
        named = self.money.amounts
        if len(parts) == 2 and parts[1] in named:
            return self.money_node(named[parts[1]])
        if len(parts) == 2 and parts[1] in self.money.broken:
            raise ConditionError(f"{dotted} cannot be used until its entry under amounts is fixed")
        if not named:
            raise ConditionError(f"unknown name {dotted}: the flow declares no amounts")
        hint = _close(parts[-1], named)
        raise ConditionError(
            f"unknown name {dotted}; the flow's amounts: {', '.join(sorted(named))}{hint}"
        )

    def money_node(self, amount: Amount) -> _Money:
        self.amounts.append(amount)
        return _Money(amount)

    def plain_amount(self, value: Decimal) -> _Money:
        """A number compared with `cart.value`: an amount in the flow's base currency."""
        assert self.money is not None
        if self.money.base is not None:
            figures = {self.money.base: value}
            return self.money_node(Amount.of(figures, label=f"the condition's {value}"))
        if self.money.plain_allowed:
            return self.money_node(Amount(bare=value, label=f"the condition's {value}"))
        raise ConditionError(
            f"cart.value is money, and {value} names no currency: compare it with one of the "
            "flow's amounts (cart.value >= amounts.large_cart, with amounts: {large_cart: "
            "{USD: 100, EUR: 90}}), or set the flow's base currency (currency: USD)"
        )

    def step_fact(self, node: ast.AST, step_id: str, dotted: str) -> _Fact:
        if step_id in self.known_steps:
            self.step_refs.add(step_id)
            self.step_reads.add((step_id, dotted.split(".")[1]))
            return _Fact((step_id, dotted.split(".")[1]), is_step=True)
        if not self.steps_allowed and (step_id in self.all_steps or not self.all_steps):
            raise ConditionError(f"{dotted}: this condition cannot refer to steps")
        if step_id in self.all_steps:
            raise ConditionError(f"{dotted}: step {step_id} does not come before this step")
        raise ConditionError(f"unknown name {dotted}{self.suggestion(dotted)}")

    def suggestion(self, dotted: str) -> str:
        vocabulary = ["variant"]
        vocabulary += [f"cart.{name}" for name in CART_FIELDS]
        vocabulary += [f"contact.{name}" for name in CONTACT_FIELDS]
        if self.money is not None:
            vocabulary += [f"amounts.{name}" for name in self.money.amounts]
        vocabulary += [
            f"{step}.{name}" for step in sorted(self.known_steps) for name in STEP_FIELDS
        ]
        matches = difflib.get_close_matches(dotted, vocabulary, n=1)
        return f" (did you mean {matches[0]}?)" if matches else ""

    def comparison(self, node: ast.Compare) -> _Compare:
        operands: list[_Expr | _Choices] = [self.operand(node.left)]
        ops: list[str] = []
        for op_node, right_node in zip(node.ops, node.comparators, strict=True):
            op = _COMPARE_OPS.get(type(op_node))
            if op is None:
                raise ConditionError("`is` / `is not` are not supported; use == or !=")
            if op in _MEMBERSHIP and isinstance(right_node, ast.List | ast.Tuple):
                operands.append(_Choices(tuple(self.choice(item) for item in right_node.elts)))
            else:
                operands.append(self.operand(right_node))
            ops.append(op)
        operands = self.money_operands(operands)
        first = operands[0]
        assert not isinstance(first, _Choices)
        links: list[tuple[str, _Expr | _Choices]] = []
        previous: _Expr = first
        for index, (op, right) in enumerate(zip(ops, operands[1:], strict=True)):
            self.check_types(previous, op, right)
            links.append((op, right))
            if isinstance(right, _Choices):
                if index < len(ops) - 1:
                    raise ConditionError("a list must end the comparison")
            else:
                previous = right
        return _Compare(first, tuple(links))

    def money_operands(self, operands: list[_Expr | _Choices]) -> list[_Expr | _Choices]:
        """In a comparison with money, plain numbers are amounts in the flow's base currency."""
        if self.money is None:
            return operands
        if not any(
            not isinstance(item, _Choices) and self.kind(item) is Kind.MONEY for item in operands
        ):
            return operands
        if any(isinstance(item, _Choices) for item in operands):
            raise ConditionError("compare money with <, <=, >, >=, == or !=, not with a list")
        return [
            self.plain_amount(item.value)
            if isinstance(item, _Literal) and isinstance(item.value, Decimal)
            else item
            for item in operands
        ]

    def choice(self, node: ast.expr) -> Decimal | str | bool:
        if isinstance(node, ast.Constant | ast.UnaryOp):
            return self.literal(node)
        if isinstance(node, ast.Name) and node.id in _BOOL_NAMES:
            return _BOOL_NAMES[node.id]
        raise ConditionError("a list after `in` may contain only literal values")

    def check_types(self, left: _Expr, op: str, right: _Expr | _Choices) -> None:
        left_kind = self.kind(left)
        if op in _MEMBERSHIP:
            if isinstance(right, _Choices):
                if left_kind is Kind.TAGS:
                    raise ConditionError('use `"tag" in contact.tags`, not a tag list in a list')
                for value in right.values:
                    if _literal_kind(value) is not left_kind:
                        raise self.mismatch(left_kind, op, _literal_kind(value))
                return
            if self.kind(right) is not Kind.TAGS:
                raise ConditionError(f"`{op}` needs a list [..] or a tags name on its right")
            if left_kind is not Kind.TEXT:
                raise ConditionError(f"tags are text: `{op}` a tag list needs text on its left")
            return
        assert not isinstance(right, _Choices)
        right_kind = self.kind(right)
        if Kind.TAGS in (left_kind, right_kind):
            raise ConditionError(f'tags cannot be compared with `{op}`; use "tag" in ...tags')
        if left_kind is not right_kind:
            raise self.mismatch(left_kind, op, right_kind)
        if op in _ORDERING and left_kind not in (Kind.NUMBER, Kind.MONEY):
            raise ConditionError(f"`{op}` compares numbers, not {left_kind.value}")

    def mismatch(self, left: Kind, op: str, right: Kind) -> ConditionError:
        return ConditionError(f"cannot compare {left.value} with {right.value} using `{op}`")

    def kind(self, expr: _Expr) -> Kind:
        if isinstance(expr, _Literal):
            return _literal_kind(expr.value)
        if isinstance(expr, _Money):
            return Kind.MONEY
        if isinstance(expr, _Fact):
            if expr.is_step:
                return Kind.BOOL
            if expr.path == ("variant",):
                return Kind.TEXT
            if expr.path == ("cart", "value") and self.money is not None:
                return Kind.MONEY
            fields = CART_FIELDS if expr.path[0] == "cart" else CONTACT_FIELDS
            return fields[expr.path[1]]
        return Kind.BOOL


def _close(word: str, choices: Collection[str]) -> str:
    matches = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean amounts.{matches[0]}?)" if matches else ""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _literal_kind(value: Decimal | str | bool) -> Kind:
    if isinstance(value, bool):
        return Kind.BOOL
    if isinstance(value, str):
        return Kind.TEXT
    return Kind.NUMBER


# ---- evaluation -------------------------------------------------------------------------------


def _evaluate(expr: _Expr, facts: Mapping[str, object]) -> object:
    if isinstance(expr, _Literal):
        return expr.value
    if isinstance(expr, _Fact):
        return _lookup(expr, facts)
    if isinstance(expr, _Money):
        return _money_value(expr.amount, facts)
    if isinstance(expr, _Not):
        return not _truthy(_evaluate(expr.operand, facts))
    if isinstance(expr, _BoolOp):
        if expr.is_and:
            return all(_truthy(_evaluate(operand, facts)) for operand in expr.operands)
        return any(_truthy(_evaluate(operand, facts)) for operand in expr.operands)
    left = _evaluate(expr.left, facts)
    for op, right_expr in expr.links:
        if isinstance(right_expr, _Choices):
            if not _member(left, op, right_expr.values):
                return False
            continue
        right = _evaluate(right_expr, facts)
        if not _holds(left, op, right):
            return False
        left = right
    return True


def _facts_in(expr: _Expr | _Choices) -> list[_Fact]:
    if isinstance(expr, _Fact):
        return [expr]
    if isinstance(expr, _Not):
        return _facts_in(expr.operand)
    if isinstance(expr, _BoolOp):
        return [fact for operand in expr.operands for fact in _facts_in(operand)]
    if isinstance(expr, _Compare):
        found = _facts_in(expr.left)
        for _op, right in expr.links:
            found.extend(_facts_in(right))
        return found
    return []


def _lookup(fact: _Fact, facts: Mapping[str, object]) -> object:
    head, *rest = fact.path
    value = facts.get(head)
    for name in rest:
        value = value.get(name) if isinstance(value, Mapping) else None
    if fact.is_step:
        # A step that has not run yet (or an odd fact) counts as all-false.
        return value is True
    return _normalise(value)


def _money_value(amount: Amount, facts: Mapping[str, object]) -> Decimal | None:
    """The amount in the cart's currency; None (so every comparison false) when it has none."""
    cart = facts.get("cart")
    currency = cart.get("currency") if isinstance(cart, Mapping) else None
    if not isinstance(currency, str):
        return amount.bare
    rates = facts.get(RATES_FACT)
    return amount.in_currency(currency, rates if isinstance(rates, Rates) else None)


def _normalise(value: object) -> object:
    """Facts as the comparisons expect them: numbers as Decimal, tag lists as tuples."""
    if isinstance(value, bool | str | Decimal) or value is None:
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, list | tuple | frozenset | set):
        return tuple(item for item in value if isinstance(item, str))
    return None


def _same_kind(left: object, right: object) -> bool:
    def kind(value: object) -> type | None:
        for candidate in (bool, str, Decimal, tuple):
            if isinstance(value, candidate):
                return candidate
        return None

    left_kind = kind(left)
    return left_kind is not None and left_kind is kind(right)


def _holds(left: object, op: str, right: object) -> bool:
    if op in _MEMBERSHIP:
        if not isinstance(right, tuple) or not isinstance(left, str):
            return False
        return (left in right) == (op == "in")
    if not _same_kind(left, right) or isinstance(left, tuple):
        return False
    try:
        if op == "==":
            return bool(left == right)
        if op == "!=":
            return bool(left != right)
        if not isinstance(left, Decimal) or not isinstance(right, Decimal):
            return False
        if op == "<":
            return left < right
        if op == "<=":
            return left <= right
        if op == ">":
            return left > right
        return left >= right
    except (InvalidOperation, TypeError):
        # NaN facts cannot be ordered; a condition never raises at send time.
        return False


def _member(left: object, op: str, choices: tuple[Decimal | str | bool, ...]) -> bool:
    matches = [choice for choice in choices if _same_kind(left, choice)]
    if not matches:
        # None or a fact of an unexpected kind: the comparison is false either way round.
        return False
    try:
        found = any(left == choice for choice in matches)
    except InvalidOperation:
        return False
    return found == (op == "in")


def _truthy(value: object) -> bool:
    if isinstance(value, Decimal):
        return not value.is_zero()
    return bool(value)
