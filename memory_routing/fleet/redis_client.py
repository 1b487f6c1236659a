"""The fleet's Redis, as the proxy's parts on mitmproxy's loop use it: an asyncio client with
short timeouts, and a channel listener that outlives Redis outages.

A Redis command that fails raises ``redis.RedisError`` at once (no long retries): its caller
reports the outage to FleetHealth and works locally until Redis answers again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

# Seconds before a Redis command counts as failed: a part falls back at once, not after a
# client library's long default.
COMMAND_TIMEOUT_S = 1.0
# What a proxy does while Redis is down (FleetHealth adds "until it is back"): one text for the
# cap and the cookie jars, since whichever notices first tells the outage for both.
REDIS_FALLBACK = "each proxy counts the in-flight cap alone and keeps its cookie jar alone, holding its changes"
LISTEN_TIMEOUT_S = 1.0


def open_client(url: str) -> redis.asyncio.Redis:
    """An asyncio client: short timeouts and one immediate retry (a connection broken by a Redis
    restart is replaced once, not waited on)."""
    return redis.asyncio.Redis.from_url(
        url, socket_timeout=COMMAND_TIMEOUT_S, socket_connect_timeout=COMMAND_TIMEOUT_S,
        retry=Retry(NoBackoff(), 1),
    )


async def listen_forever(client: redis.asyncio.Redis, channel: str, on_message: Callable[[bytes], None],
                         retry_s: float, on_resubscribed: Callable[[], None] = lambda: None) -> None:
    """Call ``on_message`` with each message published on ``channel``, resubscribing after an
    outage (every ``retry_s`` until Redis answers). Messages published while this proxy was
    cut off are lost: ``on_resubscribed`` is called when the subscription is back after a loss,
    for the listener to catch up."""
    lost = False
    while True:
        try:
            async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(channel)
                if lost:
                    lost = False
                    on_resubscribed()
                while True:
                    message = await pubsub.get_message(timeout=LISTEN_TIMEOUT_S)
                    if message is not None:
                        data = message.get("data")
                        on_message(data if isinstance(data, bytes) else str(data).encode())
        except (redis.RedisError, OSError):
            lost = True
            await asyncio.sleep(retry_s)
