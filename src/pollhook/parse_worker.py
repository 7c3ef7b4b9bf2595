"""The parsing worker process: `python -m pollhook.parse_worker PARENT_PID`.

Bodies come from untrusted upstreams, and parsers can be made to take
gigabytes or hours (feedparser's loose parser, csv.Sniffer, html.parser, a
backtracking regex). The daemon (parsing.py) hands such bodies to a few of
these processes, one body at a time, and kills one that overruns its
deadline; each job runs under a memory cap the process sets on itself
(`RLIMIT_DATA`, so a MemoryError ends the job, not the daemon) and a CPU-time
cap as a backstop. The process dies with its parent (`PR_SET_PDEATHSIG`).

Wire format, both ways: frames of an 8-byte big-endian length, then the bytes.

- request: a JSON header `{"spec", "content_type", "memory", "seconds", "next"}`
  (`spec`: the source's parse settings), then the body;
- answer: a JSON header `{"ok", "error", "count", "next", "retire"}`, and when
  `ok`, four frames: the keys (a JSON array of strings), the hashes (`count`
  times 32 ASCII characters), the lengths of the values (`count` unsigned
  64-bit integers in native order), and the values (each item's compact JSON
  text, one after the other).

The daemon never unpickles anything from here: a worker that parsed a hostile
body can only send keys, hex digests and JSON text, which are checked.
"""

from __future__ import annotations

import os
import resource
import signal
import struct
import sys
import time
import warnings
from array import array
from typing import Any, BinaryIO

import orjson

LENGTH = struct.Struct(">Q")
HASH_SIZE = 32  # hex characters of an Item's hash
RETIRE_ABOVE = 256 * 1024**2  # bytes resident after a job: start a fresh process instead
SPEC_FIELDS = (
    "format", "mode", "items", "key", "ignore", "select", "selector", "regex", "delimiter",
    "max_items", "max_item_size",
)  # fmt: skip


def read_frame(stream: BinaryIO) -> bytes | None:
    """One frame, or None at the end of the stream."""
    head = stream.read(LENGTH.size)
    if len(head) < LENGTH.size:
        return None
    size = LENGTH.unpack(head)[0]
    data = stream.read(size)
    return data if len(data) == size else None


def write_frames(stream: BinaryIO, *frames: bytes) -> None:
    for frame in frames:
        stream.write(LENGTH.pack(len(frame)))
        stream.write(frame)
    stream.flush()


def answer(header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Parse one body as the header says: (answer header, the four item frames or none)."""
    from .config import Source
    from .errors import ExtractError
    from .formats import read_page

    spec = dict(header["spec"], ignore=tuple(header["spec"]["ignore"]))
    source = Source("worker", "http://worker/", 1.0, **spec)
    _limit(header["memory"], header["seconds"])
    try:
        items, found = read_page(source, body, header["content_type"], header["next"])
        del body
        try:
            orjson.dumps(found)
        except TypeError:
            raise ExtractError(f"pagination.next gave {found!r:.80}, which is not JSON") from None
        keys = orjson.dumps(list(items))
        hashes = "".join(item.hash for item in items.values()).encode("ascii")
        values = [_json(item.value) for item in items.values()]
        lengths = array("Q", map(len, values)).tobytes()
        blob = b"".join(values)
        del values
        reply = {"ok": True, "count": len(items), "next": found}
        frames = [keys, hashes, lengths, blob]
        return {**reply, "retire": _resident() > RETIRE_ABOVE}, frames
    except ExtractError as exc:
        return {"ok": False, "error": str(exc), "retire": _resident() > RETIRE_ABOVE}, []
    except MemoryError:
        cap = header["memory"]
        error = f"parsing needed more than max_parse_memory ({cap / 1024**2:.0f} MiB)"
        return {"ok": False, "error": error, "retire": True}, []
    except RecursionError:
        return {"ok": False, "error": "the body is nested too deeply to parse", "retire": True}, []
    except Exception as exc:  # a parser's bug on a strange body: that poll fails, with the reason
        error = f"the parser failed: {type(exc).__name__}: {exc}"[:500]
        return {"ok": False, "error": error, "retire": True}, []


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


def _limit(memory: int, seconds: float) -> None:
    """This job's memory cap, and a CPU-time backstop in case the daemon cannot kill us."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = memory if hard == resource.RLIM_INFINITY else min(memory, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(used.ru_utime + used.ru_stime + seconds) + 2
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    if cpu_hard == resource.RLIM_INFINITY or cpu < cpu_hard:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu_hard))


def _resident() -> int:
    """Resident bytes now (Linux), or 0 where /proc is not there."""
    try:
        with open("/proc/self/statm", "rb") as stats:
            return int(stats.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the daemon dies, however it dies (Linux); exit if it is gone already."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the daemon still kills us on stop
        pass
    if os.getppid() != parent:
        sys.exit(0)


def main() -> None:
    _die_with_parent(int(sys.argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the daemon, which stops us
    warnings.simplefilter("ignore")  # e.g. bs4's XMLParsedAsHTMLWarning; nothing reads stderr
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = read_frame(stdin)
        body = read_frame(stdin) if header is not None else None
        if header is None or body is None:
            return  # the daemon closed the pipe: it is stopping
        started = time.process_time()
        reply, frames = answer(orjson.loads(header), body)
        reply["cpu"] = time.process_time() - started
        write_frames(stdout, orjson.dumps(reply), *frames)
        if reply["retire"]:
            return


if __name__ == "__main__":
    main()
