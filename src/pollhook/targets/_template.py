"""Jinja2 templates for `text:` and `format: template`, in Jinja's sandbox.

Templates are configuration, written by the operator; the event data they
render comes from upstreams nobody on the operator's side controls. So:

- They run in `ImmutableSandboxedEnvironment` (no Python internals, no
  mutation), with `StrictUndefined`: a misspelt field is an error, not "".
- In a JSON body every `{{ ... }}` must end with the `json` filter. The check
  is made when the template is compiled (a configuration error naming the
  line) and again on every value at render time (`finalize`), so
  `"text": "{{ event.data.key }}"` can never inject JSON; the rendered body
  must then parse as JSON.
- In a `text:` line each value goes through the preset's escaping (Slack's
  `&`, `<`, `>`), while what the operator wrote literally is left alone.
- Output is capped (TEMPLATE_MAX_BYTES), checked as the template streams, and
  `*` and `**` refuse results over the cap (a data-supplied count cannot make
  a gigabyte string).

A template that does not parse raises TargetConfigError with the template's
own line; anything that fails while rendering raises RenderError, which the
delivery worker records as a failed attempt. jinja2 is imported on first
use: commands that load a config without templates do not pay for it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import RenderError, TargetConfigError
from ._text import more_suffix

if TYPE_CHECKING:
    from jinja2 import Template
    from jinja2.nodes import Node
    from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_MAX_BYTES = 256 * 1024
METHODS = ("POST", "PUT", "PATCH")
Escape = Callable[[str], str]
_CONTENT_TYPE_RE = re.compile(r"^[\w.+-]+/[\w.+-]+\s*(;.*)?$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_RESERVED_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding", "host"})


class JsonText(str):
    """Output of the `json` filter: the only value a JSON body lets through."""

    __slots__ = ()


def is_json_type(content_type: str) -> bool:
    """`application/json`, `application/problem+json`, ... (parameters ignored)."""
    subtype = content_type.split(";")[0].strip().lower().rpartition("/")[2]
    return subtype == "json" or subtype.endswith("+json")


@dataclass(frozen=True)
class Compiled:
    """One compiled template and what its output must satisfy (equal if its source is)."""

    source: str
    template: Template = field(repr=False, compare=False)
    json_body: bool = False

    def render(
        self,
        context: Mapping[str, Any],
        cap: int = TEMPLATE_MAX_BYTES,
        cut: bool = False,
        shown: Callable[[str], int] = len,
    ) -> str:
        """The output, or RenderError. Past `cap` bytes that is an error, or with `cut`
        (a `text:` line) the first `cap` characters and "… (N more characters)", N
        counted with `shown` (a preset's own count).

        Output is checked as it streams: nothing grows without bound first.
        """
        out: list[str] = []
        size = hidden = 0
        try:
            for chunk in self.template.generate(context):
                room = cap - size
                size += len(chunk)  # characters: never more than bytes, so a cheap early stop
                if size > cap and not cut:
                    raise RenderError(f"output over the {_size(cap)} limit")
                if room >= len(chunk):
                    out.append(chunk)
                else:
                    out.append(chunk[: max(room, 0)])
                    hidden += shown(chunk[max(room, 0) :])
        except RenderError:
            raise
        except Exception as exc:  # undefined value, sandbox, filter error: a failed attempt
            raise RenderError(_describe(exc)) from None
        text = "".join(out)
        if hidden:
            return text + more_suffix(hidden)
        if not cut and len(text.encode("utf-8", "surrogatepass")) > cap:
            raise RenderError(f"output over the {_size(cap)} limit")
        if self.json_body:
            _check_json(text)
        return text


def compile_text(source: Any, escape: Escape | None, key: str = "text") -> Compiled:
    """A template whose output is text: `text:` lines, header values, non-JSON bodies.

    `escape` is applied to every value the template prints (a preset's own
    escaping), never to the template's literal text.
    """
    return _compile(_source(source, key), _environment(escape), key, json_body=False)


def compile_json(source: Any, key: str = "template.body") -> Compiled:
    """A template whose output is a JSON body: values only through `| json`."""
    text = _source(source, key)
    env = _environment(None, json_body=True)
    return _compile(text, env, key, json_body=True)


def _source(source: Any, key: str) -> str:
    if not isinstance(source, str) or not source.strip():
        raise TargetConfigError(f"'{key}' must be a non-empty template string", key=key)
    return source


def _compile(
    source: str, env: ImmutableSandboxedEnvironment, key: str, json_body: bool
) -> Compiled:
    from jinja2 import TemplateSyntaxError

    try:
        tree = env.parse(source)
        if json_body:
            _require_json_filter(tree, key)
        template = env.from_string(tree)
    except TemplateSyntaxError as exc:
        raise TargetConfigError(
            f"template syntax error: {exc.message}", key=key, line=exc.lineno
        ) from None
    return Compiled(source, template, json_body)


def _require_json_filter(tree: Node, key: str) -> None:
    """Every printed expression of a JSON body ends in `| json` (or picks between such)."""
    from jinja2 import nodes

    for output in tree.find_all(nodes.Output):
        for child in output.nodes:
            if not isinstance(child, nodes.TemplateData) and not _json_expr(child):
                raise TargetConfigError(
                    "in a JSON body every {{ ... }} must end with '| json' (e.g."
                    ' {"text": {{ event.data.key | json }}}), so no value can change'
                    " the JSON around it",
                    key=key,
                    line=child.lineno,
                )


def _json_expr(node: Node) -> bool:
    from jinja2 import nodes

    if isinstance(node, nodes.Filter):
        return node.name == "json"
    if isinstance(node, nodes.CondExpr):
        return node.expr2 is not None and _json_expr(node.expr1) and _json_expr(node.expr2)
    return False


@functools.cache
def _environment(escape: Escape | None, json_body: bool = False) -> ImmutableSandboxedEnvironment:
    """One sandbox per output kind; compiled templates keep a reference to theirs."""
    from jinja2 import StrictUndefined, Undefined

    def finalize(value: Any) -> Any:
        if isinstance(value, Undefined):
            value._fail_with_undefined_error()
        if json_body:
            if not isinstance(value, JsonText):
                raise RenderError("a value in a JSON body must go through '| json'")
            return value
        text = as_text(value)
        return escape(text) if escape is not None else text

    env = _sandbox_class()(
        undefined=StrictUndefined,
        finalize=finalize,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["json"] = to_json
    return env


@functools.cache
def _sandbox_class() -> type[ImmutableSandboxedEnvironment]:
    """Jinja's immutable sandbox with `*` and `**` bounded (made on first use: lazy import)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*" and (_too_long(left, right) or _too_long(right, left)):
                raise RenderError(
                    f"'*' would make a value over the {_size(TEMPLATE_MAX_BYTES)} limit"
                )
            if operator == "**" and isinstance(right, int) and abs(right) > 1000:
                raise RenderError("'**' with an exponent over 1000")
            return super().call_binop(context, operator, left, right)

    return Sandbox


def _too_long(sequence: Any, times: Any) -> bool:
    return (
        isinstance(sequence, str | list | tuple)
        and isinstance(times, int)
        and len(sequence) * times > TEMPLATE_MAX_BYTES
    )


def to_json(value: Any) -> JsonText:
    """The `json` filter: any value as JSON text, non-ASCII kept as is."""
    from jinja2 import Undefined

    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    try:
        return JsonText(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode())
    except TypeError as exc:
        raise RenderError(f"'| json' cannot write {type(value).__name__}: {exc}") from None


def as_text(value: Any) -> str:
    """A printed value: strings as they are, everything else as compact JSON."""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return str(value)


def _check_json(text: str) -> None:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise RenderError(
            f"the template rendered invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def _describe(exc: BaseException) -> str:
    """The error with the template line it happened on, when Jinja's traceback names one."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if message == "'event' is undefined":
        message += " (a digest's template gets `events` and `count`, not `event`)"
    return f"template line {line}: {message}" if line else f"template: {message}"


def _size(limit: int) -> str:
    return f"{limit // 1024} KiB" if limit % 1024 == 0 else f"{limit} bytes"


def check_method(method: Any) -> str:
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise TargetConfigError(
            f"'template.method': {method!r} is not one of {', '.join(METHODS)}",
            key="template.method",
        )
    return method.upper()


def check_content_type(content_type: Any) -> str:
    if not isinstance(content_type, str) or not _CONTENT_TYPE_RE.match(content_type.strip()):
        raise TargetConfigError(
            f"'template.content_type': {content_type!r} is not a media type like application/json",
            key="template.content_type",
        )
    return content_type.strip()


def compile_headers(headers: Mapping[str, Any] | None) -> tuple[tuple[str, Compiled], ...]:
    """Header name → value template; pollhook's own headers cannot be set."""
    out = []
    for name, value in (headers or {}).items():
        key = f"template.headers.{name}"
        if not isinstance(name, str) or not _HEADER_NAME_RE.match(name):
            raise TargetConfigError(f"header name {name!r} is not valid", key="template.headers")
        lower = name.lower()
        if lower in _RESERVED_HEADERS or lower.startswith("webhook-"):
            hint = " (use template.content_type)" if lower == "content-type" else ""
            raise TargetConfigError(f"header '{name}' is set by pollhook itself{hint}", key=key)
        out.append((name, compile_text(str(value), None, key)))
    return tuple(out)


def render_headers(
    headers: Iterable[tuple[str, Compiled]], context: Mapping[str, Any]
) -> dict[str, str]:
    out = {}
    for name, template in headers:
        value = template.render(context, cap=8192)
        if "\n" in value or "\r" in value:
            raise RenderError(f"header '{name}' rendered a line break")
        out[name] = value
    return out
