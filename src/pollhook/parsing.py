"""Parse fetched bodies without letting one hostile body touch the daemon.

A body is parsed in a parsing worker process (parse_worker.py) unless it is
small JSON. The worker is killed, and the poll fails, when parsing outlives
what is left of the source's `timeout` after the request (parsing counts in
the poll's time), when it needs more than `max_parse_memory`, or when it
dies (a parser's SIGSEGV): the daemon, its event loop and every other
source never notice. Workers are started on the first body that needs one,
kept for the next (at most `http.parse_workers` of them; a body waits for a
free one, and that wait is not charged to its deadline), replaced when they
die or grow, and killed when the daemon stops or a poll is cancelled.

Small JSON (at most INLINE_JSON bytes) is parsed on the event loop: orjson's
parse and the hashing are linear in the body, so its cost is bounded (below
1 ms for 64 KB), and the worker's round trip would cost more than the parse
(BENCHMARKS.md). Everything else goes to a worker: feeds, XML, CSV, text and
HTML have parsers that can be made slow, and a large JSON body can still take
thirty times its size in memory.

The worker sends back keys, hashes and each item's JSON text; the items keep
that text (`Item.value` as bytes), and only the few that changed are decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from array import array
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .config import HttpSettings, Source
from .errors import ExtractError
from .extract import Item, new_item
from .fetch import Fetched
from .formats import detect, read_page
from .parse_worker import HASH_SIZE, LENGTH, SPEC_FIELDS

log = logging.getLogger("pollhook.parsing")

INLINE_JSON = 64 * 1024  # bytes of JSON parsed on the event loop; larger bodies go to a worker
REAP_SECONDS = 2.0  # how long a worker that stopped answering has to be seen dead
MIN_SECONDS = 1.0  # a parse gets at least this long, even if the request used its whole timeout


class Extracted(NamedTuple):
    """A page's items, and what the pagination `next` expression found in it."""

    items: dict[str, Item]
    next: Any = None


@dataclass(eq=False)
class _Worker:
    process: asyncio.subprocess.Process
    retire: bool = False  # asked to be replaced (it grew, or a parser failed inside it)


@dataclass
class Parsers:
    """The parsing workers of one daemon (or one dry run); `aclose` kills them."""

    size: int = 2
    _idle: list[_Worker] = field(default_factory=list)
    _all: set[_Worker] = field(default_factory=set)
    _slots: asyncio.Semaphore | None = None
    _closed: bool = False

    async def extract(
        self, source: Source, fetched: Fetched, http: HttpSettings, next_expression: str | None
    ) -> Extracted:
        """The items of one fetched page (and its `next`), or an ExtractError."""
        body = fetched.body or b""
        if _inline(source, body, fetched.content_type):
            return Extracted(*read_page(source, body, fetched.content_type, next_expression))
        seconds = max((source.timeout or http.timeout) - fetched.elapsed, MIN_SECONDS)
        memory = source.max_parse_memory or http.max_parse_memory
        header = orjson.dumps({
            "spec": {name: getattr(source, name) for name in SPEC_FIELDS},
            "content_type": fetched.content_type, "memory": memory, "seconds": seconds,
            "next": next_expression,
        })  # fmt: skip
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        async with self._slots:  # waiting here is not charged to the deadline
            worker = self._idle.pop() if self._idle else await self._start()
            try:
                result = await _ask(worker, header, body, seconds, memory)
            except BaseException:  # overran, died, answered nonsense, or the poll was cancelled
                await self._kill(worker)
                raise
            if worker.retire or self._closed or worker.process.returncode is not None:
                await self._kill(worker)
            else:
                self._idle.append(worker)
        if isinstance(result, ExtractError):
            raise result
        return result

    async def _start(self) -> _Worker:
        if self._closed:
            raise ExtractError("pollhook is stopping")
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)  # the worker imports this pollhook
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pollhook.parse_worker", str(os.getpid()),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env=env,
        )  # fmt: skip
        worker = _Worker(process)
        self._all.add(worker)
        log.debug("parsing worker %d started", process.pid)
        return worker

    async def _kill(self, worker: _Worker) -> None:
        """SIGKILL: a worker holds nothing worth a clean exit."""
        self._all.discard(worker)
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(worker.process.wait())

    async def aclose(self) -> None:
        """Kill every worker, idle or busy: a stop never waits for a parse."""
        self._closed = True
        workers, self._idle = list(self._all), []
        for worker in workers:
            await self._kill(worker)


def _inline(source: Source, body: bytes, content_type: str) -> bool:
    """Small JSON only: its parse is linear and bounded; anything else goes to a worker."""
    if len(body) > INLINE_JSON:
        return False
    fmt = source.format
    if fmt == "auto":
        try:
            fmt = detect(content_type, body, want_items=source.mode != "document")
        except ExtractError:
            return True  # read inline, it fails at once with the same message
    return fmt == "json"


async def _ask(
    worker: _Worker, header: bytes, body: bytes, seconds: float, memory: int
) -> Extracted | ExtractError:
    """One job: send it, wait at most `seconds` for the answer, decode it.

    The worker's own verdict on the body (an ExtractError) is returned; an
    ExtractError raised means the worker itself failed and must be killed.
    """
    process = worker.process
    assert process.stdin is not None and process.stdout is not None
    try:
        async with asyncio.timeout(seconds):
            process.stdin.write(LENGTH.pack(len(header)) + header + LENGTH.pack(len(body)))
            process.stdin.write(body)
            await process.stdin.drain()
            reply = orjson.loads(await _frame(process.stdout, 1 << 20))
            worker.retire = bool(reply.get("retire"))
            if not reply.get("ok"):
                return ExtractError(str(reply.get("error") or "the parser failed"))
            frames = [await _frame(process.stdout, memory) for _ in range(4)]
    except TimeoutError:
        raise ExtractError(
            f"parsing took longer than the {seconds:.3g}s left of the source's timeout"
            " (a huge or hostile body?); the parser was stopped"
        ) from None
    except (asyncio.IncompleteReadError, ConnectionError, orjson.JSONDecodeError):
        code = await _ended(process)
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        raise ExtractError(
            f"the parser died ({how}); its memory is capped at {memory / 1024**2:.0f} MiB"
            " (max_parse_memory)"
        ) from None
    return Extracted(_items(int(reply["count"]), *frames), reply.get("next"))


async def _ended(process: asyncio.subprocess.Process) -> int:
    """The exit status of a worker that stopped answering, killing it if it still runs.

    A worker that died is left to asyncio's child watcher first: `kill()` on
    it would reap it through Popen.poll() before the watcher does, and the
    watcher would then report exit code 255 instead of the signal.
    """
    try:
        return await asyncio.wait_for(asyncio.shield(process.wait()), REAP_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()  # still there, but not saying anything useful
        return await process.wait()


async def _frame(stream: asyncio.StreamReader, limit: int) -> bytes:
    size = LENGTH.unpack(await stream.readexactly(LENGTH.size))[0]
    if size > limit:
        raise ConnectionError(f"a frame of {size} bytes")
    return await stream.readexactly(size)


def _items(count: int, keys: bytes, hashes: bytes, lengths: bytes, blob: bytes) -> dict[str, Item]:
    """Items from a worker's answer; anything inconsistent fails the poll, never the daemon."""
    names = orjson.loads(keys)
    sizes = array("Q")
    sizes.frombytes(lengths)
    if not (
        isinstance(names, list)
        and len(names) == count == len(sizes)
        and len(hashes) == count * HASH_SIZE
        and sum(sizes) == len(blob)
        and all(type(name) is str for name in names)
        and hashes.isascii()
    ):
        raise ExtractError("the parser answered something inconsistent")
    text = hashes.decode("ascii")
    ends = list(accumulate(sizes))
    values = [blob[start:end] for start, end in zip([0, *ends], ends, strict=False)]
    digests = [text[i : i + HASH_SIZE] for i in range(0, len(text), HASH_SIZE)]
    items = dict(zip(names, map(new_item, zip(names, digests, values, strict=True)), strict=True))
    if len(items) != count:
        raise ExtractError("the parser answered a key twice")
    return items
