import json
from tests.test_dashboard_sockets import *  # noqa
from tests.test_dashboard_sockets import connected, frames_until
from dashboard import live_consumers as lc

async def test_dbg(viewer, orders, monkeypatch):
    seen = []
    orig = lc.PushConsumer.hint
    def hint(self, message):
        seen.append((type(self).__name__, message))
        return orig(self, message)
    monkeypatch.setattr(lc.PushConsumer, "hint", hint)
    run = await database_sync_to_async(trigger)("orders")
    ws, snapshot = await connected(f"/ws/runs/{run.pk}/?ack=1", viewer)
    await database_sync_to_async(drive)(run)
    import asyncio
    await asyncio.sleep(2)
    print("SEEN", seen)
    c = [l for l in lc.hub().listeners]
    print("LISTENERS", [(type(x).__name__, x.related, x.dirty, x.sent, x.acked, x._flusher) for x in c])
    await ws.disconnect()
