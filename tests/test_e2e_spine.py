"""The first working product, end to end: real upstream, real daemon, real receiver."""

from __future__ import annotations

import signal

from standardwebhooks.webhooks import Webhook

from conftest import SECRET, query, wait_until


def config_for(upstream, receiver, extra_source: str = "") -> str:  # type: ignore[no-untyped-def]
    return f"""
        sources:
          - name: tickets
            url: {upstream.url}/tickets
            interval: 200ms
            key: id
            ignore: [updated_at]
{extra_source}
        subscribers:
          - name: helpdesk
            url: {receiver.url}/hooks
            secret: {SECRET}
            retry: [100ms, 200ms]
        """


def test_create_update_delete_reach_the_receiver_once_each(upstream, receiver, write_config, daemon):  # type: ignore[no-untyped-def]
    upstream.items = [{"id": 1, "status": "open", "updated_at": "t0"}]
    proc = daemon(write_config(config_for(upstream, receiver))).start()
    upstream.wait_for(2)  # baseline recorded, one more poll seen: nothing sent for existing items

    upstream.items = [*upstream.items, {"id": 2, "status": "open", "updated_at": "t1"}]
    receiver.wait_accepted(1)
    upstream.items = [{"id": 1, "status": "closed", "updated_at": "t2"}, upstream.items[1]]
    receiver.wait_accepted(2)
    upstream.items = [upstream.items[0]]
    receiver.wait_accepted(3)

    assert proc.stop() == 0
    events = receiver.events()
    assert [e["type"] for e in events] == ["item.created", "item.updated", "item.deleted"]
    created, updated, deleted = (e["data"] for e in events)
    assert created == {
        "source": "tickets", "key": "2", "previous": None,
        "item": {"id": 2, "status": "open", "updated_at": "t1"},
    }  # fmt: skip
    assert updated["key"] == "1"
    assert updated["previous"] == {"id": 1, "status": "open", "updated_at": "t0"}
    assert updated["item"] == {"id": 1, "status": "closed", "updated_at": "t2"}
    assert {"op": "replace", "path": "/status", "value": "closed"} in updated["changes"]
    assert deleted["key"] == "2" and deleted["item"] is None
    assert deleted["previous"] == {"id": 2, "status": "open", "updated_at": "t1"}
    for req in receiver.requests:
        assert req.headers["content-type"] == "application/json"
        assert req.headers["user-agent"].startswith("pollhook/")
        Webhook(SECRET).verify(req.body, req.headers)  # raises if the signature is wrong
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(set(ids)) == 3


def test_ignored_field_change_and_outage_produce_nothing(upstream, receiver, write_config, daemon):  # type: ignore[no-untyped-def]
    upstream.items = [{"id": 1, "status": "open", "updated_at": "t0"}]
    proc = daemon(write_config(config_for(upstream, receiver))).start()
    upstream.wait_for(2)
    upstream.items = [{"id": 1, "status": "open", "updated_at": "t1"}]  # ignored field only
    upstream.wait_for(upstream.count() + 2)

    upstream.fault = lambda req, h: (500, {}, b"upstream broke")
    upstream.wait_for(upstream.count() + 2)
    upstream.fault = lambda req, h: (200, {"content-type": "text/html"}, b"<html>maintenance</html>")
    upstream.wait_for(upstream.count() + 1)
    upstream.fault = lambda req, h: (200, {"content-type": "application/json"}, b'{"error": "oops"}')
    upstream.wait_for(upstream.count() + 1)
    wait_until(
        lambda: query(proc.db, "SELECT consecutive_failures FROM sources")[0][0] >= 4,
        "four failed polls recorded (two 500s, an HTML page, a JSON object)",
    )
    upstream.fault = lambda req, h: (200, {"content-type": "application/json"}, b"[]")
    wait_until(
        lambda: query(proc.db, "SELECT held_deletes FROM sources")[0][0] is not None,
        "an empty list held back as a suspected wipe",
    )

    # sentinel: a real change after all that must be the only event the receiver ever sees
    upstream.fault = None
    upstream.items = [{"id": 1, "status": "open", "updated_at": "t1"}, {"id": 3, "status": "new"}]
    receiver.wait_accepted(1)
    assert proc.stop() == 0
    assert [(e["type"], e["data"]["key"]) for e in receiver.events()] == [("item.created", "3")]


def test_sigterm_stops_cleanly_and_sigkill_loses_no_delivery(upstream, write_config, daemon):  # type: ignore[no-untyped-def]
    from servers import Receiver

    down = Receiver(plan=lambda i, req: (503, {}, b"down"))
    upstream.items = [{"id": 1}]
    cfg = write_config(config_for(upstream, down).replace("[100ms, 200ms]", "[1h]"))
    proc = daemon(cfg).start()
    upstream.wait_for(2)
    upstream.items = [{"id": 1}, {"id": 2}]
    down.wait_for(1)  # first attempt failed: the delivery is pending for an hour
    first_id = down.requests[0].headers["webhook-id"]
    proc.kill()

    # restart with a working receiver at the same address: the delivery resumes at once
    down.plan = lambda i, req: (200, {}, b"ok")
    proc2 = daemon(cfg).start()
    wait_until(lambda: down.accepted(), "redelivery after restart")
    assert proc2.stop() == 0
    assert proc.proc is not None and proc.proc.returncode == -signal.SIGKILL
    ids = {r.headers["webhook-id"] for r in down.accepted()}
    assert ids == {first_id}
    down.close()
