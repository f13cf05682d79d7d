"""Load YAML into plain Python values while remembering the line each value came from.

Validators of user-written files (flows, configuration) need to say *where* a problem is. PyYAML's
`compose` keeps line marks on its nodes; this module walks that node tree itself, producing plain
values (dict, list, str, int, float, bool, None, date/datetime, bytes) plus a `Lines` map from value
paths to 1-based line numbers. Duplicate mapping keys are collected rather than silently dropped,
so a validator can report them next to its own findings.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# A path to a value: mapping keys and sequence indexes, e.g. ("steps", 2, "at").
Path = tuple[object, ...]

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# Aliases can expand a small file into a huge value ("billion laughs"); user files never need this.
DEFAULT_MAX_NODES = 100_000


@dataclass(frozen=True, slots=True)
class SourceIssue:
    """One problem in a file a person wrote, as `file:line: field: message`."""

    source: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.field}: {self.message}"


class YamlSourceError(ValueError):
    """The text is not YAML this loader accepts; `line` is 1-based."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class DuplicateKey:
    path: Path
    line: int
    first_line: int


@dataclass(frozen=True, slots=True)
class Lines:
    """Where each value of a loaded document starts. Mapping entries map to their key's line."""

    by_path: Mapping[Path, int] = field(default_factory=dict)
    duplicates: tuple[DuplicateKey, ...] = ()

    def line_of(self, path: Sequence[object]) -> int:
        """The line of `path`, else of its nearest recorded parent (where a missing key belongs)."""
        probe = tuple(path)
        while probe:
            line = self.by_path.get(probe)
            if line is not None:
                return line
            probe = probe[:-1]
        return self.by_path.get((), 1)


def format_path(path: Sequence[object]) -> str:
    """`("steps", 2, "at")` -> `steps[2].at`, the form users see in error messages."""
    text = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def load_with_lines(
    text: str, source: str = "<yaml>", *, max_nodes: int = DEFAULT_MAX_NODES
) -> tuple[object, Lines]:
    """Parse one YAML document (safe tags only). An empty document loads as None."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        raise YamlSourceError(source, _error_line(error), _error_message(error)) from error
    except yaml.YAMLError as error:
        raise YamlSourceError(source, 1, str(error)) from error
    if root is None:
        return None, Lines({(): 1})
    converter = _Converter(source, max_nodes)
    value = converter.convert(root, ())
    return value, Lines(converter.lines, tuple(converter.duplicates))


def _error_line(error: yaml.MarkedYAMLError) -> int:
    mark = error.problem_mark or error.context_mark
    return mark.line + 1 if mark is not None else 1


def _error_message(error: yaml.MarkedYAMLError) -> str:
    problem = error.problem or "invalid YAML"
    return f"{problem} ({error.context})" if error.context else problem


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _Converter:
    def __init__(self, source: str, max_nodes: int) -> None:
        self.source = source
        self.max_nodes = max_nodes
        self.lines: dict[Path, int] = {}
        self.duplicates: list[DuplicateKey] = []
        self.count = 0
        # Nodes being converted on the current path: meeting one again means a recursive alias.
        self.open_nodes: set[int] = set()
        self.scalars = SafeConstructor()

    def fail(self, node: Node, message: str) -> YamlSourceError:
        return YamlSourceError(self.source, _line(node), message)

    def convert(self, node: Node, path: Path) -> object:
        self.count += 1
        if self.count > self.max_nodes:
            raise self.fail(node, f"document too large (more than {self.max_nodes} values)")
        self.lines.setdefault(path, _line(node))
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        if id(node) in self.open_nodes:
            raise self.fail(node, "recursive alias: a value cannot contain itself")
        self.open_nodes.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                if node.tag != _SEQ_TAG:
                    raise self.fail(node, f"unsupported tag {node.tag!r} on a list")
                return [self.convert(item, (*path, index)) for index, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                if node.tag != _MAP_TAG:
                    raise self.fail(node, f"unsupported tag {node.tag!r} on a mapping")
                return self.mapping(node, path)
            raise self.fail(node, f"unsupported YAML node {type(node).__name__}")
        finally:
            self.open_nodes.discard(id(node))

    def scalar(self, node: ScalarNode) -> object:
        try:
            return self.scalars.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as error:
            raise self.fail(node, _error_message(error)) from error
        except (ValueError, TypeError) as error:
            # Explicit tags like `!!int abc` fail inside PyYAML with plain Python errors.
            raise self.fail(node, f"invalid value for tag {node.tag!r}: {error}") from error

    def mapping(self, node: MappingNode, path: Path) -> dict[object, object]:
        result: dict[object, object] = {}
        first_lines: dict[object, int] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                raise self.fail(
                    key_node, "mapping keys must be plain values, not lists or mappings"
                )
            key = self.scalar(key_node)
            key_line = _line(key_node)
            if key in first_lines:
                self.duplicates.append(DuplicateKey((*path, key), key_line, first_lines[key]))
                continue
            first_lines[key] = key_line
            self.lines[(*path, key)] = key_line
            result[key] = self.convert(value_node, (*path, key))
        # YAML merge keys (`<<: *base`): explicit keys win, then earlier merged mappings.
        for merge_node in merges:
            sources = merge_node.value if isinstance(merge_node, SequenceNode) else [merge_node]
            for source_node in sources:
                if not isinstance(source_node, MappingNode):
                    raise self.fail(source_node, "a merge key (<<) needs a mapping or list of them")
                merged = self.merged(source_node, path, explicit=first_lines.keys())
                for key, value in merged.items():
                    result.setdefault(key, value)
        return result

    def merged(
        self, node: MappingNode, path: Path, explicit: Collection[object]
    ) -> dict[object, object]:
        """Convert a merged mapping, keeping its line marks only for keys not set explicitly."""
        if id(node) in self.open_nodes:
            raise self.fail(node, "recursive alias: a value cannot contain itself")
        outer_lines, self.lines = self.lines, {}
        self.open_nodes.add(id(node))
        try:
            value = self.mapping(node, path)
        finally:
            self.open_nodes.discard(id(node))
            merged_lines, self.lines = self.lines, outer_lines
        for sub_path, line in merged_lines.items():
            if len(sub_path) > len(path) and sub_path[len(path)] not in explicit:
                self.lines.setdefault(sub_path, line)
        return value
