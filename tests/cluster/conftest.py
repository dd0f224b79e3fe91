"""Fixtures for the cluster tests: a throwaway Redis per test, and clients to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from tests.postgresql_fixtures import postgres_url
from tests.redis_fixtures import ThrowawayRedis, redis_server

__all__ = ["RedisFactory", "postgres_url", "redis_server"]

RedisFactory = Callable[[], Redis]


@pytest.fixture
async def redis_clients(redis_server: ThrowawayRedis) -> AsyncIterator[RedisFactory]:
    """Make separate clients (each its own connection pool) to the test's Redis; all are
    closed at the end."""
    made: list[Redis] = []

    def make() -> Redis:
        client = Redis.from_url(redis_server.url, socket_timeout=10)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()
