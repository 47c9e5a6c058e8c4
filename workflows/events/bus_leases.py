"""Which bus partitions each consumer process reads.

Several `consume_bus` processes share the consumer group (`SIGNALBOX_BUS_CONSUMERS`): one
process is one core's worth of matching and inline steps. A consumer group alone would
hand the entries of one partition to several consumers, and two consumers matching one
partition's entries side by side would start the runs of one key out of order. So each
partition is read by one consumer at a time, the holder of its Redis lease.

Every consumer, about once a second, in one script: registers itself as live (a sorted set
scored by expiry), renews the leases it holds, gives back those beyond its fair share
(ceil(partitions / live consumers)) and takes free ones up to it. A consumer that dies
stops renewing: its leases lapse after `BUS_LEASE_MS` and the others share its partitions,
taking over the entries it had read and not acknowledged (`Consumer.take_over`) before
reading new ones, so per-key order holds across the change. A consumer that stops cleanly
gives its leases back at once.
"""

from __future__ import annotations

import redis
from django.conf import settings

from workflows.infra.redis_client import key

# KEYS[1]: the live consumers (sorted set, score = expiry in ms); KEYS[2..]: one lease per
# partition, in partition order. ARGV: owner, lease ms, "release" to leave.
# Returns the partitions held, by number. The clock is Redis's (TIME), shared by every host.
REFRESH = """
local owner, ttl = ARGV[1], tonumber(ARGV[2])
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local leaving = ARGV[3] == 'release'
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
if leaving then
  redis.call('zrem', KEYS[1], owner)
else
  redis.call('zadd', KEYS[1], now + ttl, owner)
  redis.call('pexpire', KEYS[1], ttl * 2)
end
local live = redis.call('zcard', KEYS[1])
local partitions = #KEYS - 1
local fair = 0
if not leaving then fair = math.ceil(partitions / math.max(live, 1)) end
local held = {}
for i = 2, #KEYS do
  if redis.call('get', KEYS[i]) == owner then table.insert(held, i) end
end
while #held > fair do
  redis.call('del', KEYS[table.remove(held)])
end
for _, i in ipairs(held) do redis.call('pexpire', KEYS[i], ttl) end
for i = 2, #KEYS do
  if #held >= fair then break end
  if redis.call('set', KEYS[i], owner, 'NX', 'PX', ttl) then table.insert(held, i) end
end
local numbers = {}
for _, i in ipairs(held) do table.insert(numbers, i - 2) end
table.sort(numbers)
return numbers
"""


class PartitionLeases:
    """One consumer's share of the partitions."""

    def __init__(self, redis_client: redis.Redis, owner: str, *, group: str | None = None):
        self.owner = owner
        group = group or settings.SIGNALBOX["BUS_GROUP"]
        count = settings.SIGNALBOX["BUS_PARTITIONS"]
        self.lease_ms = settings.SIGNALBOX.get("BUS_LEASE_MS", 15_000)
        self.keys = [key("bus-consumers", group)] + [
            key("bus-lease", group, p) for p in range(count)
        ]
        self._script = redis_client.register_script(REFRESH)
        self.held: set[int] = set()

    def refresh(self) -> tuple[set[int], set[int]]:
        """Renew, balance and take leases. Returns (held now, newly gained)."""
        now = {int(p) for p in self._script(keys=self.keys, args=[self.owner, self.lease_ms])}
        gained = now - self.held
        self.held = now
        return now, gained

    def release(self) -> None:
        """Give every lease back (a clean stop): the others take the partitions at once."""
        self._script(keys=self.keys, args=[self.owner, self.lease_ms, "release"])
        self.held = set()
