"""``redis+cluster://`` URLs and the ``--redis-cluster`` flag, without servers."""

from __future__ import annotations

import pytest
from redis.cluster import RedisCluster

from streaminfer.connectors.redis_client import _cluster_kwargs, connect, is_cluster_url
from streaminfer.errors import ConfigError
from streaminfer.streams.settings import load_settings


def test_cluster_url_names_every_seed_node_and_the_password() -> None:
    kwargs = _cluster_kwargs("rediss+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7001/0"
                             "?socket_timeout=2")
    assert [(n.host, n.port) for n in kwargs["startup_nodes"]] == [("10.0.0.1", 7000),
                                                                   ("10.0.0.2", 7001)]
    assert kwargs["password"] == "s3cret" and kwargs["ssl"] is True
    assert kwargs["socket_timeout"] == 2.0
    assert is_cluster_url("redis+cluster://h:1") and not is_cluster_url("redis://h:1/0")


def test_cluster_url_refuses_a_database_other_than_zero() -> None:
    with pytest.raises(ConfigError, match="only database 0"):
        _cluster_kwargs("redis+cluster://h:7000/3")


def test_plain_url_gives_a_plain_client() -> None:
    assert not isinstance(connect("redis://127.0.0.1:1/0"), RedisCluster)


def test_flag_turns_the_url_into_a_cluster_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("STREAMINFER_REDIS_URL", raising=False)
    assert load_settings(redis_url="redis://10.0.0.1:7000",
                         redis_cluster=True).redis_url == "redis+cluster://10.0.0.1:7000"
    assert load_settings(redis_url="redis+cluster://a:1,b:2").redis_url.startswith(
        "redis+cluster://")
    with pytest.raises(ConfigError, match="redis_url"):
        load_settings(redis_url="http://x")
