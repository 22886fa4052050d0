"""When a node may act on a shard lease, judged by its own monotonic clock alone.

The database is the authority: a lease row holds an owner, a fencing token and an `expires_at` set
by the database's own clock to `now() + ttl` on each grant or renewal. A node cannot read that clock,
and must stop acting on a lease *before* the database could consider it expired, or two nodes could
act on one shard at once.

The rule: a node reads its monotonic clock (`sent_at`) before sending a grant or renewal. If the
database confirms it, the change took effect at some instant after `sent_at`, so the database's
expiry is at least `sent_at + ttl` on the node's clock, provided both clocks run at the same rate.
The node acts only until `sent_at + ttl - margin`; the margin absorbs what that proviso ignores:
a difference in clock rates, and a pause between checking the lease and the action reaching the
database.

The rule holds only if the statements that write the lease keep two promises:
- `sent_at` is read before the transaction that grants or renews begins, not merely before its
  UPDATE, because PostgreSQL's `now()` is the time the transaction started;
- a renewal never moves `expires_at` earlier: it sets `greatest(expires_at, now() + ttl)`. Without
  that, a renewal whose transaction started first but waited for the row lock (or one the node
  gave up on after a timeout) could land after a later one and shorten the expiry below what the
  later one's confirmation promised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Two clocks each slewed by NTP drift apart by at most about 0.1% of any interval; a margin of at
# least ten times that leaves room for clocks worse than NTP's bound (virtual machines, for one).
_MIN_MARGIN_SHARE_OF_TTL = 0.01


def _require_positive_seconds(setting: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{setting} ({value} s) must be a positive, finite number of seconds")


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """How long a lease lasts, how often its holder renews it, and how early the holder stops acting.

    The defaults hand a crashed node's shards to another node within about 10 s while asking the
    database for a renewal only every 2 s. They leave a usable window of 8 s after each confirmed
    renewal, so the renewals due after 2 s and 4 s can both fail and the one due after 6 s still has
    2 s to complete. The 2 s margin covers clock-rate differences (about 0.01 s over 10 s) and a pause
    of up to about 2 s (a garbage collection, a stalled event loop, a busy host) between checking the
    lease and acting on it.
    """

    ttl_s: float = 10.0
    renew_interval_s: float = 2.0
    margin_s: float = 2.0

    def __post_init__(self) -> None:
        _require_positive_seconds("lease TTL", self.ttl_s)
        _require_positive_seconds("lease renewal interval", self.renew_interval_s)
        _require_positive_seconds("lease safety margin", self.margin_s)
        if self.margin_s >= self.ttl_s:
            raise ValueError(
                f"lease safety margin ({self.margin_s} s) must be less than the lease TTL ({self.ttl_s} s), "
                "or a node could never act on a lease it holds; lower the margin or raise the TTL"
            )
        minimum_margin = self.ttl_s * _MIN_MARGIN_SHARE_OF_TTL
        if self.margin_s < minimum_margin:
            raise ValueError(
                f"lease safety margin ({self.margin_s} s) must be at least {_MIN_MARGIN_SHARE_OF_TTL:.0%} "
                f"of the lease TTL ({self.ttl_s} s), i.e. {minimum_margin} s, to cover the difference "
                "between this node's clock rate and the database's; raise the margin"
            )
        if 3 * self.renew_interval_s >= self.usable_window_s:
            raise ValueError(
                f"lease renewal interval ({self.renew_interval_s} s) must be less than a third of the "
                f"usable lease window (TTL {self.ttl_s} s minus margin {self.margin_s} s = "
                f"{self.usable_window_s} s) so two renewals can fail before the node must stop acting "
                "on the lease; renew more often, lower the margin or raise the TTL"
            )

    @property
    def usable_window_s(self) -> float:
        """How long after sending a confirmed grant or renewal the node may act on the lease."""
        return self.ttl_s - self.margin_s


@dataclass(frozen=True, slots=True)
class MemberTiming:
    """How often a node records its heartbeat, and how long the database counts it live without one.

    The database judges liveness with its own `now()`, so no margin is needed here; the defaults
    notice a crashed node within about 10 s, the same as a lapsing lease."""

    heartbeat_interval_s: float = 2.0
    ttl_s: float = 10.0

    def __post_init__(self) -> None:
        _require_positive_seconds("member heartbeat interval", self.heartbeat_interval_s)
        _require_positive_seconds("member TTL", self.ttl_s)
        # Strictly less: a heartbeat sent exactly at the TTL reaches the database after it.
        if 3 * self.heartbeat_interval_s >= self.ttl_s:
            raise ValueError(
                f"member heartbeat interval ({self.heartbeat_interval_s} s) must be less than a third of "
                f"the member TTL ({self.ttl_s} s) so two heartbeats can be lost before the database "
                "judges the member gone; send heartbeats more often or raise the TTL"
            )


@dataclass(frozen=True, slots=True)
class HeldLease:
    """A lease this node holds: it may act on `key` with fencing `token` until local monotonic time
    `valid_until` (exclusive)."""

    key: str
    token: int
    valid_until: float


def _usable_until(sent_at: float, timing: LeaseTiming) -> float:
    # Evaluated in the rule's own order: `sent_at + (ttl - margin)` can round one ulp later than it.
    return sent_at + timing.ttl_s - timing.margin_s


def granted(key: str, token: int, sent_at: float, timing: LeaseTiming) -> HeldLease:
    """The lease the database has just granted; `sent_at` is the monotonic time read before the
    granting transaction began (reading it earlier only shortens the validity, later is unsafe)."""
    return HeldLease(key=key, token=token, valid_until=_usable_until(sent_at, timing))


def renewed(lease: HeldLease, sent_at: float, timing: LeaseTiming) -> HeldLease:
    """The lease after the database confirmed a renewal sent at monotonic time `sent_at`.

    Confirmations can arrive out of order: a renewal sent earlier may be confirmed after one sent
    later. The validity is the greater of the one held and this renewal's own `sent_at + ttl -
    margin`: an early-sent renewal confirmed late never shortens the lease, nor extends it beyond
    what the latest-sent confirmed renewal allows. Keeping the maximum is safe only because the
    database never moves `expires_at` earlier (see the module's promises): its expiry is then at
    least the latest confirmed `sent_at + ttl`.
    """
    return HeldLease(
        key=lease.key,
        token=lease.token,
        valid_until=max(lease.valid_until, _usable_until(sent_at, timing)),
    )


def is_usable(lease: HeldLease, now: float) -> bool:
    """Whether the node may act on the lease at monotonic time `now`."""
    return now < lease.valid_until


def time_left(lease: HeldLease, now: float) -> float:
    """Seconds the node may still act on the lease; 0.0 once it may not (never negative)."""
    return max(0.0, lease.valid_until - now)


def next_renewal_at(lease: HeldLease, timing: LeaseTiming) -> float:
    """The monotonic time at which the lease needs renewing: one renewal interval after sending the
    grant or renewal that its validity rests on.

    Counting from the send rather than from the confirmation keeps a slow database from pushing
    renewals ever later and eating into the usable window."""
    return lease.valid_until - timing.usable_window_s + timing.renew_interval_s


def renewal_due(lease: HeldLease, now: float, timing: LeaseTiming) -> bool:
    """Whether the lease needs renewing at `now`: once no more than `ttl - margin - renew_interval` of
    its usable time is left. It stays due, lapsed or not, until a renewal is confirmed; the caller
    paces its attempts (one per renewal interval) so that a failing database is not asked in a tight
    loop."""
    return now >= next_renewal_at(lease, timing)


def expected_members_present(live_member_count: int, replica_count: int) -> bool:
    """Whether a node may take shards now, seeing `live_member_count` live members (itself included)
    when the deployment is configured for `replica_count` nodes.

    A node that sees itself alone although more nodes are expected has most likely just started first
    (a fresh cluster, or every node restarting at once); taking every shard then would load every
    entity and projection on one node, only to hand most of them over a moment later when the others
    appear. So it waits until it sees one other member. It does not wait for the full replica count,
    as upstream's bootstrap does before forming the first cluster: a cluster that has shrunk below
    its configured size must keep serving with the nodes it has.
    """
    if live_member_count < 0:
        raise ValueError(f"live member count ({live_member_count}) must not be negative")
    if replica_count <= 1:
        return True
    return live_member_count >= 2
