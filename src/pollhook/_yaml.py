"""YAML loading that remembers where each key and list item came from.

Config errors must name the line, so mappings and lists are loaded into
dict/list subclasses that carry the line numbers of their keys and items.

libyaml's parser (when PyYAML was built with it) is ~6x faster than the pure
Python scanner, but words its errors differently and accepts a few things
PyYAML refuses (tabs after a value, some control characters). So the fast
loader only ever returns a result: on any failure, or on text it might read
differently, the pure loader reads the file again and decides, with its own
messages. The constructors are the same Python code for both.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import CollectionNode

from .errors import ConfigError

if TYPE_CHECKING:
    _AnyLoader: TypeAlias = yaml.SafeLoader | yaml.CSafeLoader


class LineMap(dict[Any, Any]):
    """A mapping that knows its own line and the line of each key."""

    line: int = 0
    key_lines: dict[Any, int]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.key_lines = {}


class LineList(list[Any]):
    """A list that knows its own line and the line of each item."""

    line: int = 0
    item_lines: list[int]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines = [0] * len(self)


class _Loader(yaml.SafeLoader):
    """The reference loader: its result and its error messages are the contract."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A type tag that does not fit its value (`interval: !!int`) names its line.

        PyYAML's constructors fail on those with bare IndexError, ValueError or
        (an empty !!timestamp) AttributeError.
        """
        try:
            return super().construct_object(node, deep)
        except (ValueError, IndexError, TypeError, OverflowError, AttributeError):
            if not isinstance(node, yaml.ScalarNode):  # our own mapping/list code: a bug
                raise
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise ConfigError(
                f"line {node.start_mark.line + 1}: {one_line(repr(node.value))} is not a valid {tag}"
            ) from None


# Text the fast path leaves to the pure loader, where libyaml reads differently: characters
# PyYAML's reader refuses, tabs (libyaml takes `a: b\tc`, PyYAML does not), the rarer line
# breaks (line numbers), the non-specific tag `!` (libyaml makes `a: !` a '', PyYAML None)
# and a comment glued to a block scalar header (`a: |#c`, refused by PyYAML).
_PURE_ONLY = re.compile(
    "[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]"
    r"|!(?:<!>)?(?:[\s,\[\]{}]|\Z)|[|>][-+0-9]*#"
)
_FAST_MAX_DEPTH = 50  # deeper nesting goes to the pure loader, whose recursion limit words it


class _Diverges(Exception):
    """libyaml may have read the text differently: the pure loader reads it again."""


def one_line(text: str) -> str:
    """Error messages are one line: escape any line break a value smuggles in."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _mapping(loader: _AnyLoader, node: yaml.MappingNode) -> LineMap:
    explicit = sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)
    merged = len(node.value) - explicit  # `<<:` pairs come first and may be overridden
    result = LineMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    written: set[Any] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise ConfigError(f"line {line}: mapping keys must be plain words")
        if key in written:
            raise ConfigError(f"line {line}: duplicate key {one_line(repr(key))}")
        if index >= merged:
            written.add(key)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _sequence(loader: _AnyLoader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


def _int(loader: _AnyLoader, node: yaml.ScalarNode) -> int:
    """PyYAML's int, but a number past Python's 4300-digit limit is a config error."""
    try:
        value: int = SafeConstructor.construct_yaml_int(loader, node)
    except ValueError:
        line = node.start_mark.line + 1
        raise ConfigError(f"line {line}: number of {len(node.value)} digits is too long") from None
    return value


def _depth_limited(construct: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def limited(loader: Any, node: Any) -> Any:
        if loader.depth >= _FAST_MAX_DEPTH:
            raise _Diverges
        loader.depth += 1
        try:
            return construct(loader, node)
        finally:
            loader.depth -= 1

    return limited


_MAPPING_TAG = yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG
_SEQUENCE_TAG = yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG
_Loader.add_constructor(_MAPPING_TAG, _mapping)
_Loader.add_constructor(_SEQUENCE_TAG, _sequence)
_Loader.add_constructor("tag:yaml.org,2002:int", _int)


def _fast_loader() -> type[Any] | None:
    """libyaml's parser under the same constructors, depth-limited; None without libyaml."""
    if not yaml.__with_libyaml__:
        return None

    class FastLoader(yaml.CSafeLoader):
        depth = 0

    FastLoader.add_constructor(_MAPPING_TAG, _depth_limited(_mapping))
    FastLoader.add_constructor(_SEQUENCE_TAG, _depth_limited(_sequence))
    FastLoader.add_constructor("tag:yaml.org,2002:int", _int)
    return FastLoader


_FastLoader = _fast_loader()


def _load_fast(loader_class: type[Any], text: str) -> Any:
    """`yaml.load` with libyaml, refusing what PyYAML would have read differently."""
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if "?" in text and _question_mark_in_flow(node, text):
            raise _Diverges
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _question_mark_in_flow(root: yaml.Node, text: str) -> bool:
    """A '?' inside [] or {}: PyYAML reads it as a key indicator even in `[a?b]`, libyaml not."""
    marks = [match.start() for match in re.finditer(r"\?", text)]
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if not isinstance(node, CollectionNode) or id(node) in seen:
            continue
        seen.add(id(node))
        if node.flow_style:  # everything inside is flow too: check the span, not the children
            first = bisect.bisect_left(marks, node.start_mark.index)
            if first < len(marks) and marks[first] < node.end_mark.index:
                return True
        elif isinstance(node, yaml.MappingNode):
            stack.extend(child for pair in node.value for child in pair)
        else:
            stack.extend(node.value)
    return False


def load_yaml(path: Path) -> Any:
    """Parse `path`, turning every read or syntax problem into a one-line ConfigError."""
    text = _read(path)
    if _FastLoader is not None and not _PURE_ONLY.search(text):
        try:
            return _load_fast(_FastLoader, text)
        except Exception:  # any failure: the pure loader below words it
            pass
    try:
        return yaml.load(text, Loader=_Loader)
    except ConfigError as exc:
        raise ConfigError(f"{path}, {exc}") from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{path}, {_syntax_message(exc, text)}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(
            f"{path}, line {line}: YAML syntax error: {one_line(exc.reason)} (#x{exc.character:04x})"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {one_line(str(exc))}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{path}: cannot read config file: {reason}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x})"
        ) from None


# PyYAML names tokens by their punctuation; say what they are instead.
_TOKENS = {
    "found '?'": "found another key (check the indentation)",
    "found '-'": "found a list item '-' (check the indentation)",
    "<block end>": "the end of the block",
    "<block mapping start>": "a mapping",
    "<block sequence start>": "a list",
    "'<stream end>'": "the end of the file",
}


def _syntax_message(exc: yaml.MarkedYAMLError, text: str) -> str:
    """`line N: YAML syntax error: problem (context at line M)`, pointing at the likely culprit."""
    problem_line = exc.problem_mark.line + 1 if exc.problem_mark else None
    context_line = exc.context_mark.line + 1 if exc.context_mark else None
    line = problem_line or context_line
    if exc.context and "simple key" in exc.context:  # a missing ':' is noticed one line late
        line = context_line or line
    culprit = _culprit(exc, text)
    hint = found = ""
    if culprit is not None and culprit[0] != line:
        line, hint = culprit[0], f"{culprit[1]}: "
        found = f" at line {problem_line}" if problem_line and problem_line != line else ""
    message = (exc.problem or exc.context or "invalid YAML") + (found if exc.problem else "")
    if exc.context and exc.problem:
        at = f" at line {context_line}" if context_line and context_line != line else ""
        if exc.problem.startswith("but "):  # "expected X, but found Y" reads as one phrase
            message = f"{exc.context}{at}, {exc.problem}{found}"
        else:
            message = f"{message} ({exc.context}{at})"
    for token, words in _TOKENS.items():
        message = message.replace(token, words)
    where = f"line {line}: " if line else ""
    return one_line(f"{where}YAML syntax error: {hint}{message}")


def _culprit(exc: yaml.MarkedYAMLError, text: str) -> tuple[int, str] | None:
    """The line of a mistake that PyYAML notices only on a later line, and what it likely is.

    An unclosed quote or bracket runs on until something cannot fit (a later
    `key:`, another quote, the end of the file), and a key missing its ':'
    runs into the next line's text; the error then names that later line.
    """
    problem, context, what = exc.problem_mark, exc.context or "", exc.problem or ""
    if problem is None or "simple key" in context:  # `_syntax_message` has that one right
        return None
    if exc.context_mark is not None and exc.context_mark.line < problem.line:
        if "quoted scalar" in context and "unexpected" in what:
            return exc.context_mark.line + 1, "a quote opened here is not closed"
        if "flow sequence" in context or "flow mapping" in context:
            bracket = "[" if "sequence" in context else "{"
            return exc.context_mark.line + 1, f"'{bracket}' opened here is not closed"
    tokens = _tokens_before(text, problem.index)
    scalars = [(i, t) for i, t in enumerate(tokens) if isinstance(t, yaml.ScalarToken)]
    if scalars:
        index, last = scalars[-1]
        first_line, multi_line = last.start_mark.line + 1, last.end_mark.line > last.start_mark.line
        if multi_line and last.style in ("'", '"') and last.end_mark.line <= problem.line:
            return first_line, "the quote opened here closes only on a later line"
        after_value = index > 0 and isinstance(tokens[index - 1], yaml.ValueToken)
        if multi_line and last.style is None and not after_value and "mapping values" in what:
            return first_line, "missing ':' after the key here?"
    if "<stream end>" in what and tokens:  # the file ended early: name its last text
        return tokens[-1].end_mark.line + 1, "unfinished at the end of the file"
    return None


def _tokens_before(text: str, index: int) -> list[yaml.Token]:
    """The tokens PyYAML's scanner reads before `index` (it stops at its own errors)."""
    tokens: list[yaml.Token] = []
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if token.start_mark.index >= index or isinstance(token, yaml.StreamEndToken):
                break
            if not isinstance(token, yaml.StreamStartToken):
                tokens.append(token)
    except yaml.YAMLError:
        pass
    return tokens


def show(value: Any, limit: int = 60) -> str:
    """repr() of an offending value, cut short so a message stays readable."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def kind(value: Any) -> str:
    """What a config value is, for messages: "a mapping", "a list", "str 'x'"."""
    if isinstance(value, LineMap):
        return "a mapping"
    if isinstance(value, LineList):
        return "a list"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {show(value)}"
