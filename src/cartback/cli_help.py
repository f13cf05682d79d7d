"""How `--help` names values: PATH, TEXT, INTEGER, FLOW, as a person reads them.

typer (pinned in pyproject.toml) labels each value with its Python type (`<bool>`,
`<list[str]>`) and wraps required arguments in braces (`{FLOW}`). This module relabels them
once, for every command: flags get no label, a value gets a word, arguments are upper case.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperOption

_WORDS = {
    "str": "TEXT",
    "list[str]": "TEXT",
    "int": "INTEGER",
    "list[int]": "INTEGER",
    "float": "NUMBER",
    "path": "PATH",
    "list[path]": "PATH",
    "file": "PATH",
    "directory": "DIRECTORY",
    "datetime": "DATETIME",
}


def value_word(typer_label: str | None) -> str | None:
    """`<list[str]>` -> `TEXT`; a choice `<a|b>` -> `[a|b]`."""
    if typer_label is None:
        return None
    label = typer_label.strip("<>")
    if label in _WORDS:
        return _WORDS[label]
    if "|" in label:
        return f"[{label}]"
    return label.upper()


def _option_type(self: TyperOption, ctx: Any) -> str | None:
    if self.metavar is not None:
        return self.metavar
    if self.is_flag:
        return None
    return value_word(self.display_type(ctx))


def _argument_type(self: TyperArgument, ctx: Any) -> str | None:
    # The argument's own name (FLOW, STORE) already says what it is.
    return None


def _argument_name(self: TyperArgument) -> str:
    return (self.metavar or self.name or "").upper()


def _argument_usage(self: TyperArgument) -> str:
    name = _argument_name(self) + ("" if self.nargs == 1 else "...")
    return name if self.required else f"[{name}]"


def install() -> None:
    # setattr: these are typer's own methods and property, replaced for every command at once.
    setattr(TyperOption, "display_type_rich", _option_type)  # noqa: B010
    setattr(TyperArgument, "display_type_rich", _argument_type)  # noqa: B010
    setattr(TyperArgument, "display_name_raw", property(_argument_name))  # noqa: B010
    setattr(TyperArgument, "_usage_display_name", _argument_usage)  # noqa: B010
