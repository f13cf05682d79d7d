"""The Jinja sandbox templates run in, and the limits that keep one template from hanging a
worker or filling its memory.

Two layers, because a flow file is checked once but rendered for every cart:

- `template_limit_issues` reads a template's syntax tree (no rendering): constant `range()`
  sizes, loop nesting and the iterations a nest of constant ranges multiplies to. `flows check`
  and every flow load report these, so such a flow never reaches a worker.
- At render time each render runs under a `budget` (time, loop iterations, characters
  produced): the sandbox's `range` is capped, every loop iteration, every `{{ }}` output and every
  captured block is charged, and operations that would build a huge string in one step (repeat,
  padding widths, `replace`) are refused before they allocate it. Exceeding any of them raises
  `LimitExceeded`, a `SecurityError`, which `render` turns into a `RenderError`.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

# Static limits, checked by `flows check`.
MAX_RANGE = 1_000  # items in one range(); also the runtime cap
MAX_LOOP_DEPTH = 2  # {% for %} nested inside {% for %}, and no deeper
MAX_STATIC_ITERATIONS = 10_000  # a nest of constant ranges, multiplied out

# Runtime limits, per render.
MAX_OUTPUT_CHARS = 100_000  # the rendered text itself
MAX_PRODUCED_CHARS = 1_000_000  # every output, macro result and captured block along the way
MAX_ITERATIONS = 100_000  # loop iterations, all loops together
RENDER_SECONDS = 1.0  # wall-clock time of one render

_MAX_EXPONENT = 100
_LOOP_GUARD = "_cartback_loop_guard"
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_FORMAT_METHODS = frozenset({"format", "format_map"})
# A width or precision in a %-format ("%99999d") or a {}-format spec ("{:>99999}").
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\d*)(?:\.(\d*))?")
_BRACE_SPEC = re.compile(r"\{[^{}]*:([^{}]*)\}")
_DIGITS = re.compile(r"\d+")


class LimitExceeded(SecurityError):
    """A render went past one of its limits; the message names which."""


class TimeLimitExceeded(LimitExceeded):
    """A render went past its wall-clock time. Unlike the other limits this one depends on the
    machine as well as on the template and its data: a long garbage collection or a busy CPU
    can stop a render that otherwise takes a millisecond."""


def timed_out(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is a render stopped by the clock."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, TimeLimitExceeded):
            return True
        cause = cause.__cause__
    return False


class RenderInterrupted(BaseException):
    """The process is shutting down: the render stops at once. A BaseException so that no
    `except Exception` on the way out records it as the cart's failure; the transaction
    around it rolls back and the step is rendered again after the restart."""


# ---- runtime budget ---------------------------------------------------------------------------


@dataclass(slots=True)
class Budget:
    deadline: float
    seconds: float
    stopping: threading.Event | None = None
    iterations: int = 0
    produced: int = 0

    def check_time(self) -> None:
        if self.stopping is not None and self.stopping.is_set():
            raise RenderInterrupted("rendering stopped: the process is shutting down")
        if time.monotonic() > self.deadline:
            raise TimeLimitExceeded(f"rendering took longer than {self.seconds:g} s")

    def iterate(self) -> None:
        self.iterations += 1
        if self.iterations > MAX_ITERATIONS:
            raise LimitExceeded(f"loops ran more than {MAX_ITERATIONS} iterations")
        self.check_time()

    def produce(self, chars: int) -> None:
        self.produced += chars
        if self.produced > MAX_PRODUCED_CHARS:
            raise LimitExceeded(f"the template produced more than {MAX_PRODUCED_CHARS} characters")
        self.check_time()


_BUDGET: ContextVar[Budget | None] = ContextVar("cartback_render_budget", default=None)
_STOPPING: ContextVar[threading.Event | None] = ContextVar("cartback_stopping", default=None)


@contextmanager
def budget(seconds: float | None = None) -> Iterator[Budget]:
    """Charge everything rendered inside the block to one fresh budget."""
    seconds = RENDER_SECONDS if seconds is None else seconds
    current = Budget(time.monotonic() + seconds, seconds, stopping=_STOPPING.get())
    token = _BUDGET.set(current)
    try:
        yield current
    finally:
        _BUDGET.reset(token)


def interrupt_renders_on(stopping: threading.Event) -> None:
    """From now on, renders on this thread raise RenderInterrupted once `stopping` is set."""
    _STOPPING.set(stopping)


def _charge_output(chars: int) -> None:
    current = _BUDGET.get()
    if current is not None:
        current.produce(chars)


# ---- size checks for single operations --------------------------------------------------------


def _too_big(size: int) -> bool:
    return size > MAX_OUTPUT_CHARS


def _refuse(what: str) -> LimitExceeded:
    return LimitExceeded(f"{what} would exceed the rendered size limit ({MAX_OUTPUT_CHARS})")


def _check_int_args(what: str, args: Iterable[Any]) -> None:
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and _too_big(abs(arg)):
            raise _refuse(what)


def _check_format_string(fmt: str) -> None:
    """Refuse %-style and {}-style widths or precisions larger than the output limit."""
    specs = [part for match in _PERCENT_SPEC.finditer(fmt) for part in match.groups() if part]
    specs += [digits for match in _BRACE_SPEC.finditer(fmt) for digits in _DIGITS.findall(match[1])]
    if any(_too_big(int(spec)) for spec in specs):
        raise _refuse("a format width")


def _check_replace(text: str, old: str, new: str) -> None:
    if len(new) > len(old) and _too_big(len(text) + text.count(old) * (len(new) - len(old))):
        raise _refuse("replace")


def _check_method_call(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    # The sandbox hands out str.format wrapped; the bound method is underneath.
    method = getattr(method, "__wrapped__", method)
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(method, "__name__", "")
    if name in _PADDING_METHODS:
        _check_int_args(name, (*args, *kwargs.values()))
    elif name in _FORMAT_METHODS:
        _check_format_string(owner)
        _check_int_args(name, (*args, *kwargs.values()))
    elif name == "replace" and len(args) >= 2 and isinstance(args[1], str):
        _check_replace(owner, str(args[0]), args[1])


def _guard_filters(filters: dict[str, Callable[..., Any]]) -> None:
    """Wrap the built-in filters that can build a large string from a small template."""
    original = dict(filters)

    def replace_filter(eval_ctx: Any, s: Any, old: str, new: str, count: int | None = None) -> Any:
        _check_replace(str(s), str(old), str(new))
        return original["replace"](eval_ctx, s, old, new, count)

    def center(value: str, width: int = 80) -> str:
        _check_int_args("center", (width,))
        return str(original["center"](value, width))

    def indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
        size = width if isinstance(width, int) else len(width)
        if _too_big(len(str(s)) + (str(s).count("\n") + 1) * size):
            raise _refuse("indent")
        return str(original["indent"](s, width, first, blank))

    def format_filter(value: str, *args: Any, **kwargs: Any) -> str:
        _check_format_string(str(value))
        _check_int_args("format", (*args, *kwargs.values()))
        return str(original["format"](value, *args, **kwargs))

    guarded: dict[str, Callable[..., Any]] = {
        "replace": replace_filter,
        "center": center,
        "indent": indent,
        "format": format_filter,
    }
    for name, wrapper in guarded.items():
        # Keeps the original's name and its pass_eval_context marker.
        filters[name] = functools.update_wrapper(wrapper, original[name])


# ---- the sandbox ------------------------------------------------------------------------------


def capped_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise LimitExceeded(f"range() of {len(numbers)} items; at most {MAX_RANGE}")
    return numbers


class CappedNamespace(Namespace):
    """`namespace()` whose attributes cannot grow past the size limit, loop after loop."""

    def __setitem__(self, name: str, value: Any) -> None:
        if isinstance(value, str | list | tuple) and _too_big(len(value)):
            raise _refuse(f"namespace attribute {name!r}")
        super().__setitem__(name, value)


def _loop_guard(iterable: Iterable[Any]) -> Iterator[Any]:
    """Wrapped around every {% for %} iterable: each iteration is charged to the budget."""
    current = _BUDGET.get()
    for item in iterable:
        if current is not None:
            current.iterate()
        yield item


def _finalize(value: Any) -> Any:
    _charge_output(len(value) if isinstance(value, str) else len(str(value)))
    return value


def _counted_concat(parts: Iterable[str]) -> str:
    """Joins macro results and captured blocks; charges their size before building them."""
    pieces = parts if isinstance(parts, list) else list(parts)
    _charge_output(sum(len(piece) for piece in pieces))
    return "".join(pieces)


class _GuardLoops(NodeTransformer):
    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _LOOP_GUARD, [], [], None, None, lineno=node.lineno)
        return node


class Sandbox(ImmutableSandboxedEnvironment):
    """Immutable sandbox that fails loudly: an unsafe attribute raises instead of rendering
    as an empty undefined, operators cannot build huge values, and each render is charged to
    the current `budget`."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    concat = staticmethod(_counted_concat)

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_finalize, **options)
        self.globals["range"] = capped_range
        self.globals["namespace"] = CappedNamespace
        self.filters[_LOOP_GUARD] = _loop_guard
        _guard_filters(self.filters)

    def _generate(
        self,
        source: nodes.Template,
        name: str | None,
        filename: str | None,
        defer_init: bool = False,
    ) -> str:
        _GuardLoops().visit(source)
        return super()._generate(source, name, filename, defer_init)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > _MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is larger than {_MAX_EXPONENT}")
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and isinstance(count, int)
                    and _too_big(len(sequence) * count)
                ):
                    raise _refuse("repetition")
        sized = (str, list, tuple)
        if (
            operator == "+"
            and isinstance(left, sized)
            and isinstance(right, sized)
            and _too_big(len(left) + len(right))
        ):
            raise _refuse("joining")
        if operator == "%" and isinstance(left, str):
            _check_format_string(left)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _check_method_call(obj, args, kwargs)
        return super().call(context, obj, *args, **kwargs)


# ---- static checks ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LimitIssue:
    line: int  # 1-based, within the template
    message: str


_CHECK_ENV = Sandbox()


def template_limit_issues(tree: nodes.Template) -> list[LimitIssue]:
    """Constant range() sizes, loop nesting and multiplied-out constant loops of a parsed
    template; non-constant ranges are left to the runtime cap."""
    issues: list[LimitIssue] = []
    for call in tree.find_all(nodes.Call):
        size = _constant_range_size(call)
        if size is not None and size > MAX_RANGE:
            line = call.lineno
            issues.append(LimitIssue(line, f"range() of {size} items; at most {MAX_RANGE}"))
    _walk_loops(tree, depth=0, product=1, issues=issues)
    return sorted(issues, key=lambda issue: issue.line)


def parse_template(source: str) -> nodes.Template:
    return _CHECK_ENV.parse(source)


def _walk_loops(node: nodes.Node, depth: int, product: int, issues: list[LimitIssue]) -> None:
    for child in node.iter_child_nodes():
        if not isinstance(child, nodes.For):
            _walk_loops(child, depth, product, issues)
            continue
        inner_depth = depth + 1
        size = _constant_range_size(child.iter) if isinstance(child.iter, nodes.Call) else None
        if size is not None and size > MAX_RANGE:
            size = None  # reported as a range of its own
        inner_product = product * size if size is not None else product
        if inner_depth > MAX_LOOP_DEPTH:
            issues.append(
                LimitIssue(
                    child.lineno, f"loops nested {inner_depth} deep; at most {MAX_LOOP_DEPTH}"
                )
            )
        elif inner_product > MAX_STATIC_ITERATIONS and product <= MAX_STATIC_ITERATIONS:
            issues.append(
                LimitIssue(
                    child.lineno,
                    f"nested loops run {inner_product} times; at most {MAX_STATIC_ITERATIONS}",
                )
            )
        # An over-deep loop is reported once, not once per level below it.
        if inner_depth <= MAX_LOOP_DEPTH:
            _walk_loops(child, inner_depth, inner_product, issues)


def _constant_range_size(call: nodes.Call) -> int | None:
    if not (isinstance(call.node, nodes.Name) and call.node.name == "range"):
        return None
    if call.kwargs or call.dyn_args or call.dyn_kwargs or not 1 <= len(call.args) <= 3:
        return None
    values = []
    for arg in call.args:
        try:
            value = arg.as_const(nodes.EvalContext(_CHECK_ENV))
        except (nodes.Impossible, ArithmeticError, TypeError, ValueError):
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        values.append(value)
    try:
        numbers = range(*values)
    except ValueError:  # a step of 0
        return None
    try:
        return len(numbers)
    except OverflowError:  # more items than a machine integer holds
        return abs(numbers.stop - numbers.start) // abs(numbers.step)
