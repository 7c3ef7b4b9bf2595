#!/usr/bin/env python3
"""Is rendering at attempt time cheap enough? Renders/s for chat formats vs the Standard Webhooks body.

Chat and template subscribers render their body from the stored event at
every attempt (so a fixed template repairs replays); Standard Webhooks
subscribers send the bytes stored at detection and sign them per attempt.
This measures, in one process and one run, pinned to CPU 1 when it can be:

  sw-body     building the stored Standard Webhooks body (what detection does once)
  sw-sign     signing it with one secret (what each Standard Webhooks attempt does)
  slack, discord, teams, ntfy
              parse the stored body into the envelope, render the preset's request
  slack-text  the same with a `text:` template
  template    the same with `format: template` (a JSON body, four `| json` values)

and projects the issue's goal, deliveries/s of `slack` and `template` against
Standard Webhooks, from the measured costs and a delivery rate
(`--deliveries-per-s`, default: scenario 4 of BENCHMARKS.md, 1 receiver):
an attempt's CPU is 1/rate; a chat attempt drops the signing and adds the render.

  python bench/targets_render.py [--events 2000] [--repeats 5] [--deliveries-per-s 4215]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TEMPLATE = {
    "body": '{"summary": {{ line | json }}, "source": {{ event.data.source | json }},'
    ' "dedup_key": {{ event.id | json }}, "details": {{ event.data.item | json }}}'
}


def _pin() -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})


def events(count: int) -> list[tuple[str, str, dict[str, Any]]]:
    """Updates of ~1 KB bodies, like scenario 4's: (event id, type, data)."""
    out = []
    for i in range(count):
        previous = {f"field_{f}": f"value {f} of item {i} " + "x" * 20 for f in range(12)}
        item = {**previous, "id": i, "status": "closed", "priority": 3}
        previous.update(id=i, status="open", priority=2)
        changes = [
            {"op": "replace", "path": "/status", "value": "closed"},
            {"op": "replace", "path": "/priority", "value": 3},
        ]
        data = {"source": "tickets", "key": str(i), "item": item, "previous": previous,
                "changes": changes}  # fmt: skip
        out.append((f"msg_{i:026x}", "item.updated", data))
    return out


def rate(work: Callable[[], None], count: int, repeats: int) -> float:
    """Operations per second: the median of `repeats` timed passes over `count` events."""
    work()  # warm: imports, caches, compiled templates
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return count / statistics.median(times)


def measure(count: int, repeats: int) -> dict[str, float]:
    from pollhook.deliver import signature_header
    from pollhook.events import event_body
    from pollhook.targets import Target, envelope

    batch = events(count)
    stored = [(eid, event_body(kind, 1764259200.123, data)) for eid, kind, data in batch]
    targets = {
        "slack": Target.build("slack"),
        "discord": Target.build("discord"),
        "teams": Target.build("teams"),
        "ntfy": Target.build("ntfy"),
        "slack-text": Target.build("slack", text="*{{ event.data.key }}* {{ line }}"),
        "template": Target.build("template", template=TEMPLATE),
    }

    def sw_body() -> None:
        for _eid, kind, data in batch:
            event_body(kind, 1764259200.123, data)

    def sw_sign() -> None:
        for eid, body in stored:
            signature_header((SECRET,), eid, 1764259200, body)

    def render(target: Target) -> Callable[[], None]:
        def work() -> None:
            for eid, body in stored:
                target.render(envelope(eid, body))

        return work

    results = {"sw-body": rate(sw_body, count, repeats), "sw-sign": rate(sw_sign, count, repeats)}
    for name, target in targets.items():
        results[name] = rate(render(target), count, repeats)
    results["body bytes (mean)"] = statistics.mean(len(b) for _e, b in stored)
    return results


def project(results: dict[str, float], deliveries_per_s: float) -> dict[str, float]:
    """Deliveries/s of a format against Standard Webhooks at the given rate."""
    attempt = 1 / deliveries_per_s
    sign = 1 / results["sw-sign"]
    return {
        name: attempt / (attempt - sign + 1 / results[name])
        for name in ("slack", "template", "slack-text", "teams")
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--deliveries-per-s", type=float, default=4215.0)
    args = parser.parse_args()
    _pin()
    results = measure(args.events, args.repeats)
    print(f"{'operation':<12} {'per second':>12} {'µs each':>9}")
    for name, value in results.items():
        if name.startswith("body"):
            continue
        print(f"{name:<12} {value:>12,.0f} {1e6 / value:>9.1f}")
    print(f"stored body: {results['body bytes (mean)']:.0f} bytes on average")
    print(f"\nprojected deliveries/s against Standard Webhooks at {args.deliveries_per_s:g}/s:")
    ratios = project(results, args.deliveries_per_s)
    for name, ratio in ratios.items():
        print(f"  {name:<11} {ratio:.2f} (goal >= 0.8)")
    print(json.dumps({"rates": results, "ratios": ratios}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
