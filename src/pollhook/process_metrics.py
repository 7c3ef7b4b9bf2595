"""`process_*` metrics (CPU, memory, file descriptors) that survive systemd's `ProcSubset=pid`.

prometheus_client's ProcessCollector reads the boot time from /proc/stat and,
when it cannot, reports nothing at all: under the shipped unit, whose
`ProcSubset=pid` hides /proc/stat, every `process_*` series vanished. What the
metrics need of the process itself (/proc/self/stat, limits, fd) stays visible
there; only the boot time is missing, and the clock has it: now minus
CLOCK_BOOTTIME, the clock that /proc/<pid>/stat's start time counts in.
"""

from __future__ import annotations

import time

from prometheus_client import PROCESS_COLLECTOR, REGISTRY
from prometheus_client import ProcessCollector as _LibraryCollector


class ProcessCollector(_LibraryCollector):
    """The library's collector, with a boot time that does not need /proc/stat."""

    def _boot_time(self) -> float:
        try:
            btime = super()._boot_time()  # type: ignore[no-untyped-call]
        except OSError:  # ProcSubset=pid, or a /proc without stat
            btime = None
        return float(btime) if btime else time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def install() -> None:
    """Replace the library's default collector in the default registry with ours."""
    REGISTRY.unregister(PROCESS_COLLECTOR)
    ProcessCollector()
