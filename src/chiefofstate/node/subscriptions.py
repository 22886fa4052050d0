"""Live subscriptions, put together for the node: the hub, and where its events come from.

A node alone (SQLite) tells the hub of its own commits directly. A cluster member (PostgreSQL) feeds it
from the journal instead, every member's commits alike (subscription/feed.py), woken by the journal's
NOTIFY on a connection of its own (docs/cluster.md "Subscriptions").
"""

from __future__ import annotations

import contextlib

from chiefofstate.config.settings import Settings
from chiefofstate.entities.command_processor import CommitListener
from chiefofstate.node.stores import read_side_connection
from chiefofstate.ports.journal import Journal
from chiefofstate.stores.postgres.wakeups import AppendListener
from chiefofstate.subscription.feed import JournalFeed
from chiefofstate.subscription.hub import SubscriptionHub


async def open_subscriptions(
    settings: Settings, journal: Journal, closers: contextlib.AsyncExitStack
) -> tuple[SubscriptionHub, list[CommitListener]]:
    """The hub, and the commit listeners it needs (none in cluster mode: the feed reads every commit)."""
    bounds = settings.subscriptions
    hub = SubscriptionHub(
        bounds.buffer_size, bounds.max_subscriptions, write_timeout_s=bounds.write_timeout_s
    )
    connection = read_side_connection(settings.store)
    if not settings.cluster.enabled or connection is None:
        return hub, [hub]
    feed = JournalFeed(journal, settings.num_shards, hub)
    hub.source = feed  # reads the journal only while the member has subscribers
    await feed.start()
    closers.push_async_callback(feed.close)
    listener = AppendListener(connection, feed.wake_shards, feed.wake_all, purpose="subscription")
    listener.start()
    closers.push_async_callback(listener.close)
    return hub, []
