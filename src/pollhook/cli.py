"""The thin command line: parse arguments, call the library, print, exit.

Exit codes (CONTRACT.md): 0 success, 2 usage or configuration error, 1 anything
else. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .config import (
    MAKE_SECRET,
    SECRET_BYTES,
    Config,
    NamesState,
    default_state_path,
    did_you_mean,
    load_config,
    new_secret,
    parse_duration,
    state_path,
)
from .config_outline import (
    LOCAL_STATE,
    UNIT_STATE,
    Outline,
    default_config,
    found_state,
    load_outline,
)
from .errors import ConfigError, PollhookError, UsageError
from .logs import setup_logging
from .output import print_json, print_rows, print_table, when
from .redact import printable

if TYPE_CHECKING:
    from .poll import DryRun
    from .store import Outcome, Store

log = logging.getLogger("pollhook")
DEFAULT_CONFIG = "sources.yaml"


def _db_path(args: argparse.Namespace, config: Config | None) -> Path:
    """The daemon's state file: `--db`, `state:`, `$STATE_DIRECTORY/pollhook.db`, `./pollhook.db`."""
    path = Path(args.db) if args.db else state_path(config) if config else default_state_path()
    args.state_path = path  # named by errors the store cannot name
    return path


def _found_db_path(args: argparse.Namespace, config: NamesState | None) -> Path:
    """The state file an operator means: as the daemon finds it, or the one that exists.

    Where nothing names it (no `--db`, `state:` or `$STATE_DIRECTORY`), that is
    `./pollhook.db`, else the systemd unit's `/var/lib/pollhook/pollhook.db`.
    """
    if args.db:
        path = Path(args.db)
    elif (config is not None and config.state is not None) or os.environ.get("STATE_DIRECTORY"):
        path = state_path(config) if config else default_state_path()
    else:
        path = found_state() or LOCAL_STATE
    args.state_path = path
    return path


def _optional_config(args: argparse.Namespace) -> Outline | None:
    """Inspection commands read only `state:` and names, never secrets (config_outline.py).

    With `--db` and no `-c` they need no config; otherwise they read `-c`,
    else ./sources.yaml, else the systemd unit's /etc/pollhook/sources.yaml.
    """
    if args.config:
        return load_outline(args.config)
    found = None if args.db else default_config()
    return load_outline(found) if found else None


def _open_store(args: argparse.Namespace, config: Outline | None) -> Store:
    from .store import Store

    path = _found_db_path(args, config)
    if not path.exists():
        looked = "" if path != LOCAL_STATE else f" nor {UNIT_STATE}"
        raise UsageError(
            f"{path}: no state file yet{looked} (run `pollhook run` first, or pass --db PATH)"
        )
    return Store(path)


# -- commands ----------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config and exit; contacts no source or subscriber.

    example: pollhook check -c /etc/pollhook/sources.yaml
    """
    config = load_config(args.config or DEFAULT_CONFIG)
    for sub in config.subscribers:
        if not sub.secrets:
            print(
                f"pollhook: warning: {config.path}: subscriber '{sub.name}' has no secret: its"
                f" webhooks go out unsigned, so it cannot tell them from forgeries{MAKE_SECRET}",
                file=sys.stderr,
            )
    print(
        f"ok: {config.path} is valid ({len(config.sources)} sources, "
        f"{len(config.subscribers)} subscribers)"
    )
    return 0


def cmd_send_test(args: argparse.Namespace) -> int:
    """Send a `pollhook.test` event to one subscriber now and show its answer.

    It goes out exactly as a delivery does (signed with the subscriber's
    secret, the same headers, timeout and redirect rule) but is recorded
    nowhere: no event, no delivery. Exit 0 on a 2xx answer, 1 otherwise. It
    needs the subscriber's secret, so the config is loaded whole, as for `run`.

    example: pollhook send-test helpdesk
    example: pollhook send-test helpdesk --json | jq '.[0].status_code'
    """
    import asyncio

    from .deliver import send_test
    from .request import session

    config = load_config(args.config or DEFAULT_CONFIG)
    sub = config.subscriber(args.subscriber)
    if sub is None:
        known = [s.name for s in config.subscribers]
        hint = (
            did_you_mean(args.subscriber, known) or f" (subscribers: {', '.join(known) or 'none'})"
        )
        raise UsageError(f"no subscriber {args.subscriber!r} in {config.path}{hint}")

    async def main() -> Outcome:
        client = session()
        try:
            return await send_test(client, sub)
        finally:
            await client.close()

    outcome = asyncio.run(main())
    ok = outcome.status_code is not None and 200 <= outcome.status_code < 300
    answer = {
        "subscriber": sub.name, "event_id": outcome.event_id, "ok": ok,
        "status_code": outcome.status_code, "duration_ms": outcome.duration_ms,
        "error": outcome.error, "response_body": outcome.response_body,
    }  # fmt: skip
    print_rows(
        [answer],
        [("subscriber", "subscriber", None), ("event", "event_id", None),
         ("status", "status_code", None), ("ms", "duration_ms", lambda v: f"{v:.0f}"),
         ("error", "error", None), ("response", "response_body", lambda v: (v or "")[:200])],
        args.json,
    )  # fmt: skip
    return 0 if ok else 1


def cmd_secret(args: argparse.Namespace) -> int:
    """Print a fresh Standard Webhooks secret: `whsec_` + base64 of random bytes.

    Give the same secret to the receiver and to pollhook (`secret:` in the
    config, through `${VAR}` or `${file:NAME}`).

    example: pollhook secret
    example: pollhook secret > /etc/pollhook/helpdesk_secret && chmod 600 /etc/pollhook/helpdesk_secret
    """
    low, high = SECRET_BYTES
    if not low <= args.bytes <= high:
        raise UsageError(f"--bytes {args.bytes}: a secret has {low} to {high} bytes")
    print(new_secret(args.bytes))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Poll every source on its schedule and deliver webhooks until SIGTERM/SIGINT.

    SIGHUP reloads the config. With --once: poll every source once, make the
    first delivery attempt of everything due, exit (1 if any poll failed).

    example: pollhook run -c sources.yaml
    example: pollhook run --once   # from cron
    """
    import asyncio

    from .daemon import Daemon

    config = load_config(args.config or DEFAULT_CONFIG)
    db_path = _db_path(args, config)
    listen = _listen_address(args.metrics) if args.metrics else None

    async def main() -> int:
        async with Daemon(config, db_path, metrics_listen=listen, db_fixed=bool(args.db)) as daemon:
            if args.once:
                results = await daemon.run_once()
                failed = [r for r in results if not r.ok]
                for r in failed:
                    print(
                        f"pollhook: source {r.source} failed: {printable(r.error or '')}",
                        file=sys.stderr,
                    )
                return 1 if failed else 0
            await daemon.run()
            return 0

    return asyncio.run(main())


def cmd_deliveries(args: argparse.Namespace) -> int:
    """List recent deliveries with status, attempts and last error.

    example: pollhook deliveries --status dead --subscriber helpdesk
    example: pollhook deliveries --attempts 42   # every attempt of delivery 42
    """
    store = _open_store(args, _optional_config(args))
    try:
        if args.attempts is not None:
            rows = store.attempts_of(args.attempts)
            print_rows(
                rows, [("at", "at", when), ("status", "status_code", None),
                       ("ms", "duration_ms", lambda v: f"{v:.0f}"), ("error", "error", None),
                       ("response", "response_body", lambda v: (v or "")[:60])],
                args.json,
            )  # fmt: skip
            return 0
        rows = store.list_deliveries(
            status=args.status, subscriber=args.subscriber, event_id=args.event, limit=args.limit
        )
    finally:
        store.close()
    print_rows(
        rows,
        [("id", "id", None), ("event", "event_id", None), ("type", "type", None),
         ("source", "source", None), ("key", "key", None), ("subscriber", "subscriber", None),
         ("status", "status", None), ("tries", "attempts", None),
         ("next", "next_attempt_at", when), ("last", "last_status", None),
         ("error", "last_error", lambda v: (v or "")[:50])],
        args.json,
    )  # fmt: skip
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Send an event again, or every dead delivery of a subscriber.

    A running daemon picks replayed deliveries up within a second.

    example: pollhook replay msg_0193a1b2c3d4e5f6a7b8c9 --subscriber helpdesk
    example: pollhook replay --dead --subscriber helpdesk --since 2h
    """
    config = _optional_config(args)
    store = _open_store(args, config)
    now = time.time()
    try:
        if args.subscriber:
            _known_subscriber(args.subscriber, config, store)
        if args.dead:
            if not args.subscriber:
                raise UsageError("replay --dead needs --subscriber NAME")
            since = _parse_since(args.since, now) if args.since else 0.0
            count = store.replay_dead(args.subscriber, since, now)
            print(f"queued {count} dead deliveries of {args.subscriber} again")
            return 0
        if not args.event:
            raise UsageError("replay needs an EVENT_ID, or --dead --subscriber NAME")
        if not store.event_exists(args.event):
            raise UsageError(f"no event {args.event!r} in {store.path}")
        if args.subscriber:
            targets = [args.subscriber]
        else:
            targets = store.event_subscribers(args.event)
            if not targets:
                raise UsageError(
                    f"event {args.event} had no subscribers; name one with --subscriber"
                )
        known = {s.name for s in config.subscribers} if config else None
        unknown = [t for t in targets if known is not None and t not in known]
        if unknown:
            raise UsageError(f"subscriber {unknown[0]!r} is not in {config.path if config else ''}")
        count = store.replay_event(args.event, targets, now)
        print(f"queued event {args.event} again for {count} subscriber(s): {', '.join(targets)}")
        return 0
    finally:
        store.close()


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a subscriber paused by a 410 Gone answer; its kept deliveries go out again.

    example: pollhook resume helpdesk
    """
    config = _optional_config(args)
    store = _open_store(args, config)
    try:
        _known_subscriber(args.subscriber, config, store)
        if store.resume_subscriber(args.subscriber):
            print(f"resumed {args.subscriber}")
            return 0
        print(f"{args.subscriber} was not paused")
        return 0
    finally:
        store.close()


def _known_subscriber(name: str, config: Outline | None, store: Store) -> None:
    """A name neither the config nor the state file knows is a typo: exit 2, not a no-op."""
    configured = {s.name for s in config.subscribers} if config else set()
    if name in configured:
        return
    known = configured | store.subscriber_names()
    if name not in known:
        where = f"{config.path} or {store.path}" if config else str(store.path)
        hint = did_you_mean(name, known) or f" (known: {', '.join(sorted(known)) or 'none'})"
        raise UsageError(f"no subscriber {name!r} in {where}{hint}")


def cmd_status(args: argparse.Namespace) -> int:
    """Show each source's last poll and health, and each subscriber's backlog.

    example: pollhook status
    example: pollhook status --json | jq '.sources[] | select(.outcome != "ok")'
    """
    from .report import source_status, subscriber_status

    config = _optional_config(args)
    store = _open_store(args, config)
    try:
        sources, subscribers = source_status(store, config), subscriber_status(store, config)
    finally:
        store.close()
    if args.json:
        print_json({"sources": sources, "subscribers": subscribers})
        return 0
    print_table(
        sources,
        [("source", "name", None), ("outcome", "outcome", None), ("last poll", "last_poll_at", when),
         ("items", "items_count", None), ("held", "held_deletions", None),
         ("failures", "consecutive_failures", None),
         ("next poll (est.)", "next_poll_at", when),
         ("last error", "last_error", lambda v: (v or "")[:60])],
    )  # fmt: skip
    print()
    print_table(
        subscribers,
        [("subscriber", "name", None), ("pending", "pending", None), ("failing", "failing", None),
         ("dead", "dead", None), ("oldest pending", "oldest_pending_at", when),
         ("last success", "last_success_at", when), ("paused", "paused", None)],
    )  # fmt: skip
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    """List recently detected events, newest first, with their delivery counts.

    example: pollhook events --source tickets --type item.deleted
    """
    from .report import recent_events

    store = _open_store(args, _optional_config(args))
    try:
        rows = recent_events(store, source=args.source, event_type=args.type, limit=args.limit)
    finally:
        store.close()
    print_rows(
        rows,
        [("event", "id", None), ("type", "type", None), ("source", "source", None),
         ("key", "key", None), ("detected", "created_at", when),
         ("delivered", "delivered", None), ("of", "deliveries", None)],
        args.json,
    )  # fmt: skip
    return 0


def cmd_items(args: argparse.Namespace) -> int:
    """List the items a source tracks: key, hash and last change, in key order.

    The last change is the newest kept event that created or changed the item:
    '-' for items unchanged since a silent baseline, or whose events
    retention has pruned. --json adds each stored item.

    example: pollhook items tickets --limit 20
    example: pollhook items tickets --json | jq '.[] | select(.item.status == "open")'
    """
    from .report import tracked_items

    config = _optional_config(args)
    store = _open_store(args, config)
    try:
        known = store.source_names() | {s.name for s in (config.sources if config else ())}
        if args.source not in known:
            hint = did_you_mean(args.source, known) or f" (sources: {', '.join(sorted(known))})"
            raise UsageError(f"no source {args.source!r} in {store.path}{hint}")
        rows, total = tracked_items(store, args.source, args.limit)
    finally:
        store.close()
    print_rows(
        rows, [("key", "key", None), ("hash", "hash", None), ("last change", "changed_at", when)],
        args.json,
    )  # fmt: skip
    if total > len(rows):
        print(f"showing {len(rows)} of {total} items (--limit N for more)", file=sys.stderr)
    return 0


def cmd_poll(args: argparse.Namespace) -> int:
    """Fetch one source now and print the events a poll would send; with --dry-run, change nothing.

    Without a state file (or on the first poll) it reports the baseline it would record.

    example: pollhook poll tickets --dry-run
    """
    import asyncio
    import tempfile

    from .daemon import StoreRunner
    from .poll import dry_run
    from .request import session
    from .store import Store

    if not args.dry_run:
        raise UsageError(
            "only `pollhook poll NAME --dry-run` exists; `pollhook run --once` polls for real"
        )
    config = load_config(args.config or DEFAULT_CONFIG)
    source = config.source(args.source)
    if source is None:
        names = ", ".join(s.name for s in config.sources)
        raise UsageError(f"no source {args.source!r} in {config.path} (sources: {names})")
    path = _found_db_path(args, config)

    async def main(db_path: Path) -> int:
        client = session()
        db = StoreRunner(Store(db_path))
        try:
            result = await dry_run(db, client, config, source)
        finally:
            await client.close()
            db.close()
        for event in result.write.events:
            sys.stdout.write(event.body.decode() + "\n")
        print(f"dry run: {_dry_run_summary(result)}; nothing written", file=sys.stderr)
        return 0

    if path.exists():
        return asyncio.run(main(path))
    with tempfile.TemporaryDirectory(prefix="pollhook-dry-") as tmp:  # no state yet: a baseline
        return asyncio.run(main(Path(tmp) / "dry.db"))


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the offline demo: a changing local API, a verifying receiver, pollhook between.

    It runs on its own packaged copy of the repository's sources.yaml, so a
    ./sources.yaml edited into your own config does not change it; -c runs
    it on another file (its first source and subscriber).

    example: pollhook demo --duration 60
    """
    from .demo import run_demo

    return run_demo(duration=args.duration, config_path=Path(args.config) if args.config else None)


def _dry_run_summary(result: DryRun) -> str:
    """What the poll would do, in words: a baseline is not "no change"."""
    write = result.write
    count = f"{write.items_count} item{'' if write.items_count == 1 else 's'}"
    if result.baseline is None:
        return f"{len(write.events)} events from {count}"
    sends = (
        f"send item.created for each ({len(write.events)} events, emit_initial: true)"
        if write.events
        else "send nothing"
    )
    return (
        f"{result.baseline} for source '{write.source}': this poll would record a baseline of"
        f" {count} and {sends}"
    )


def _listen_address(text: str) -> tuple[str, int]:
    """`9464`, `:9464` or `HOST:PORT`; the host defaults to loopback."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics {text!r}: expected PORT or HOST:PORT")
    return (host.strip("[]") or "127.0.0.1", int(port))


def _parse_since(text: str, now: float) -> float:
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {text!r}: use a duration like 2h or an ISO time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


# -- parser --------------------------------------------------------------------------

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "check": cmd_check,
    "demo": cmd_demo,
    "deliveries": cmd_deliveries,
    "replay": cmd_replay,
    "resume": cmd_resume,
    "status": cmd_status,
    "events": cmd_events,
    "poll": cmd_poll,
    "items": cmd_items,
    "secret": cmd_secret,
    "send-test": cmd_send_test,
}


def _logging_options(parser: argparse.ArgumentParser, default: bool) -> None:
    """On the top level with defaults, on each command without (so they do not override)."""
    levels, formats = ["debug", "info", "warning", "error"], ["auto", "text", "json", "journal"]
    parser.add_argument(
        "--log-level", choices=levels, default="info" if default else argparse.SUPPRESS
    )
    parser.add_argument(
        "--log-format", choices=formats, default="auto" if default else argparse.SUPPRESS,
        help="auto: journal under systemd (JOURNAL_STREAM set), else text",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pollhook",
        description="Poll sources declared in sources.yaml, detect keyed changes, "
        "deliver them as signed webhooks.",
    )
    parser.add_argument("--version", action="version", version=f"pollhook {__version__}")
    _logging_options(parser, default=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, config: bool = True) -> argparse.ArgumentParser:
        func = COMMANDS[name]
        doc = (func.__doc__ or "").strip()
        p = sub.add_parser(
            name, help=doc.splitlines()[0], description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        if config:
            p.add_argument(
                "-c", "--config",
                help="config file (default: the packaged demo's)" if name == "demo"
                else "config file (default: ./sources.yaml)",
            )  # fmt: skip
        _logging_options(p, default=False)  # `pollhook run --log-level debug` works too
        p.set_defaults(func=func)
        return p

    run = command("run")
    run.add_argument(
        "--once", action="store_true", help="poll everything once, attempt due deliveries, exit"
    )
    run.add_argument("--db", help="state file (overrides `state:` in the config)")
    run.add_argument(
        "--metrics", metavar="[HOST:]PORT",
        help="serve Prometheus /metrics and /healthz (host defaults to 127.0.0.1)",
    )  # fmt: skip
    command("check")
    demo = command("demo")
    demo.add_argument(
        "--duration", type=float, default=30.0, help="seconds to run (0: until Ctrl-C)"
    )
    dl = command("deliveries")
    dl.add_argument("--db", help="state file")
    dl.add_argument("--status", choices=["pending", "failed", "dead", "delivered"])
    dl.add_argument("--subscriber")
    dl.add_argument("--event", help="only deliveries of this event id")
    dl.add_argument(
        "--attempts", type=int, metavar="DELIVERY_ID", help="show every attempt of one delivery"
    )
    dl.add_argument("--limit", type=int, default=50)
    dl.add_argument("--json", action="store_true", help="machine-readable output")
    rp = command("replay")
    rp.add_argument("event", nargs="?", metavar="EVENT_ID")
    rp.add_argument("--subscriber", help="only this subscriber (default: every one it went to)")
    rp.add_argument(
        "--dead", action="store_true", help="replay every dead delivery of --subscriber"
    )
    rp.add_argument(
        "--since", help="with --dead: only deliveries created since (2h, or an ISO time)"
    )
    rp.add_argument("--db", help="state file")
    po = command("poll")
    po.add_argument("source", metavar="NAME")
    po.add_argument("--dry-run", action="store_true", help="print the events; write nothing")
    po.add_argument("--db", help="state file")
    st = command("status")
    st.add_argument("--db", help="state file")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    ev = command("events")
    ev.add_argument("--db", help="state file")
    ev.add_argument("--source")
    ev.add_argument("--type", metavar="EVENT_TYPE")
    ev.add_argument("--limit", type=int, default=50)
    ev.add_argument("--json", action="store_true", help="machine-readable output")
    it = command("items")
    it.add_argument("source", metavar="SOURCE")
    it.add_argument("--db", help="state file")
    it.add_argument("--limit", type=int, default=50)
    it.add_argument("--json", action="store_true", help="machine-readable output, with each item")
    se = command("secret", config=False)
    se.add_argument(
        "--bytes", type=int, default=32, help="random bytes in the secret (24..64, default 32)"
    )
    stt = command("send-test")
    stt.add_argument("subscriber", metavar="NAME")
    stt.add_argument("--json", action="store_true", help="machine-readable output")
    rs = command("resume")
    rs.add_argument("subscriber")
    rs.add_argument("--db", help="state file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, not at exit: a reader gone away (`| head`) is caught below
        return code
    except BrokenPipeError:
        _reader_gone()
        return 1  # not reached: SIGPIPE ends the process
    except (ConfigError, UsageError) as exc:
        print(f"pollhook: error: {exc}", file=sys.stderr)
        return 2
    except PollhookError as exc:
        print(f"pollhook: error: {exc}", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as exc:  # e.g. pages corrupted behind a valid header
        where = getattr(args, "state_path", None) or "the state file"
        print(f"pollhook: error: {where}: state file unusable: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line for the user, the traceback at debug level
        log.debug("internal error", exc_info=True)
        print(
            f"pollhook: internal error: {type(exc).__name__}: {exc}"
            " (run with --log-level debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def _reader_gone() -> None:
    """The reader of our stdout left (`pollhook deliveries | head -1`): end as Unix tools do.

    Python ignores SIGPIPE and raises BrokenPipeError instead; the quiet way out
    is the signal's own default action, so a shell sees 141 as for `ls | head`,
    and nothing is printed. stdout goes to /dev/null first: the exit must not
    try to flush the rest of the buffer into the closed pipe again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)


if __name__ == "__main__":
    sys.exit(main())
