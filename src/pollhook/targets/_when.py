"""`when:` filters: a JMESPath expression over the event envelope, truthy to deliver.

Truthiness is JMESPath's own: `false`, `null`, `""`, `[]` and `{}` are false,
everything else (0 included) is true, so `data.changes[?path=='/price']`
means "the price changed". The expression is compiled and its function
names and argument counts checked when the config loads (jmespath itself only
finds those when it runs); a runtime error, such as a function given the
wrong type for one event, counts as false for that event and is logged once
per expression and message.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.functions
import jmespath.parser

from ..errors import TargetConfigError

log = logging.getLogger("pollhook.targets")
_FUNCTIONS = jmespath.functions.Functions().FUNCTION_TABLE
_WARNED_MAX = 256
_warned: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class When:
    """A compiled `when:` expression."""

    expression: str
    parsed: jmespath.parser.ParsedResult = field(repr=False, compare=False)

    def matches(self, event: Mapping[str, Any]) -> bool:
        try:
            return truthy(self.parsed.search(event))
        except (jmespath.exceptions.JMESPathError, RecursionError) as exc:
            _warn_once(self.expression, str(exc).splitlines()[0] if str(exc) else repr(exc))
            return False


def compile_when(expression: Any) -> When:
    """Compile a `when:` value, or TargetConfigError saying what is wrong with it."""
    if not isinstance(expression, str) or not expression.strip():
        raise TargetConfigError("'when' must be a JMESPath expression", key="when")
    try:
        parsed = jmespath.compile(expression)
    except jmespath.exceptions.IncompleteExpressionError:
        problem: str | None = "incomplete expression"
    except jmespath.exceptions.LexerError as exc:
        problem = f"{exc.message} at column {exc.lexer_position}"
    except jmespath.exceptions.ParseError as exc:
        problem = f"{exc.msg} at column {exc.lex_position}"
    except (jmespath.exceptions.JMESPathError, RecursionError) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else "nested too deeply"
    else:
        problem = _unknown_function(parsed.parsed)
    if problem:
        raise TargetConfigError(f"'when': bad JMESPath {expression!r}: {problem}", key="when")
    return When(expression, parsed)


def truthy(value: Any) -> bool:
    """JMESPath's truth: only false, null and empty strings, lists and objects are false."""
    return not (value is None or value is False or value in ("", [], {}))


def _unknown_function(node: Any) -> str | None:
    """Unknown names and wrong argument counts, which jmespath reports only when run."""
    stack = [node]
    while stack:
        current = stack.pop()
        if not isinstance(current, dict):
            continue
        if current.get("type") == "function_expression":
            name, given = current["value"], len(current["children"])
            if name not in _FUNCTIONS:
                close = difflib.get_close_matches(name, sorted(_FUNCTIONS), n=1, cutoff=0.6)
                return f"unknown function {name}()" + (
                    f" (did you mean {close[0]}()?)" if close else ""
                )
            signature = _FUNCTIONS[name]["signature"]
            variadic = bool(signature) and signature[-1].get("variadic", False)
            if given < len(signature) or (given > len(signature) and not variadic):
                return f"{name}() takes {len(signature)} argument(s), got {given}"
        stack.extend(current.get("children", ()))
    return None


def _warn_once(expression: str, problem: str) -> None:
    if (expression, problem) in _warned or len(_warned) >= _WARNED_MAX:
        return
    _warned.add((expression, problem))
    log.warning("when %r failed (%s): such events are not delivered", expression, problem)
