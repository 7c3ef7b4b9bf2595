"""systemd's notify protocol (sd_notify), spoken directly over the datagram socket.

`Type=notify` units learn READY/STOPPING/STATUS from it, and `WatchdogSec=`
restarts pollhook when WATCHDOG pings stop. Pings are sent only while the
delivery worker and the scheduler show recent heartbeats, so a stuck daemon
is restarted instead of being kept alive by a timer that still ticks.
Without NOTIFY_SOCKET every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("pollhook.notify")


class Notifier:
    """Sends `KEY=value` datagrams to $NOTIFY_SOCKET, if set."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 1e6 if usec.isdigit() and mine else None
        self.sock: socket.socket | None = None
        if self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, **fields: str) -> None:
        if self.sock is None:
            return
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            self.sock.sendto(message.encode(), self.address)
        except OSError as exc:  # systemd gone or socket full: never fatal
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.send(ready="1", status=status)

    def status(self, status: str) -> None:
        self.send(status=status)

    def watchdog(self) -> None:
        self.send(watchdog="1")

    def stopping(self) -> None:
        self.send(stopping="1", status="stopping")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
