"""The ``phantom_token.cache`` options and ``negative_cache_seconds`` in the config file; Redis URL forms."""

from __future__ import annotations

from typing import Any

import pytest

from phantom_token.cache.redis import connect
from phantom_token.config.errors import ConfigError
from phantom_token.config.loader import parse_settings
from phantom_token.config.settings import CacheSettings

KEY = "k" * 32


def document(cache: dict[str, Any] | None = None, **plugin: Any) -> dict[str, Any]:
    config = {"introspection_endpoint": "http://as.test/i", "client_id": "gw", "client_secret": "s", **plugin}
    doc: dict[str, Any] = {
        "_format_version": "2.1",
        "services": [{"name": "api", "url": "http://127.0.0.1:3001", "routes": [{"name": "r", "paths": ["/api"]}],
                      "plugins": [{"name": "phantom-token", "config": config}]}],
    }
    if cache is not None:
        doc["phantom_token"] = {"cache": cache}
    return doc


def test_defaults() -> None:
    settings = parse_settings(document(), source="t.yml", environ={})
    assert settings.cache == CacheSettings()
    assert settings.cache.redis_url is None
    assert settings.cache.key_prefix == "phantom-token:"
    assert settings.routes[0].plugin is not None
    assert settings.routes[0].plugin.negative_cache_seconds == 5


def test_every_option_with_vault_references() -> None:
    cache = {"max_entries": 10, "negative_max_entries": 2, "redis_url": "{vault://env/REDIS_URL}",
             "key_prefix": "gw1:", "encryption_key": "{vault://env/CACHE_KEY}", "redis_timeout_seconds": 0.5}
    environ = {"REDIS_URL": "rediss://:pw@redis:6380/1", "CACHE_KEY": KEY}
    settings = parse_settings(document(cache, negative_cache_seconds=0), source="t.yml", environ=environ)
    assert settings.cache == CacheSettings(10, 2, "rediss://:pw@redis:6380/1", "gw1:", KEY, 0.5)
    assert "pw" not in repr(settings.cache)
    assert KEY not in repr(settings.cache)
    assert settings.routes[0].plugin is not None
    assert settings.routes[0].plugin.negative_cache_seconds == 0


@pytest.mark.parametrize(
    ("cache", "plugin", "field", "why"),
    [
        ({"redis_url": "http://redis:6379"}, {}, "cache.redis_url", "schemes"),
        ({"redis_url": "redis://r", "encryption_key": "short"}, {}, "cache.encryption_key", "at least 32"),
        ({"encryption_key": KEY}, {}, "cache.encryption_key", "set redis_url"),
        ({"negative_max_entries": 0}, {}, "cache.negative_max_entries", "at least 1"),
        ({"redis_timeout_seconds": 0}, {}, "cache.redis_timeout_seconds", "greater than 0"),
        ({"cluster": True}, {}, "cache.cluster", "unknown field"),
        (None, {"negative_cache_seconds": -1}, "config.negative_cache_seconds", "from 0 to 3600"),
    ],
)
def test_problems_name_the_field(cache: dict[str, Any] | None, plugin: dict[str, Any], field: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document(cache, **plugin), source="t.yml", environ={})
    (problem,) = caught.value.problems
    assert problem.field == field
    assert why in problem.why


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "rediss://:pw@h:6380/2", "unix:///tmp/redis.sock?db=1",
                                 "redis+sentinel://:pw@s1:26379,s2:26380/mymaster/2", "redis+sentinel://s1/m"])
def test_supported_url_forms_build_a_client_without_connecting(url: str) -> None:
    assert connect(url, 0.1) is not None


def test_a_sentinel_url_needs_a_service_name() -> None:
    with pytest.raises(ValueError, match="service_name"):
        connect("redis+sentinel://s1:26379", 0.1)


@pytest.mark.parametrize("url", ["redis+cluster://127.0.0.1:7000,127.0.0.1:7001", "rediss+cluster://u:pw@n1:7000/",
                                 "redis+cluster://n1"])
def test_cluster_urls_build_a_client_without_connecting(url: str) -> None:
    assert connect(url, 0.1) is not None


@pytest.mark.parametrize(("url", "why"), [
    ("redis+cluster://n1:7000/2", "Cluster URL"),
    ("redis+cluster://n1:7000?ssl_cert_reqs=none", "Cluster URL"),
    ("redis+cluster://", "Cluster URL"),
    ("redis+sentinel://s1:26379", "Sentinel URL"),
    ("redis+sentinel://:secret-pw@s1:26379/m/0/x", "Sentinel URL"),
    ("redis+sentinel://s1:port/m", "port is not a number"),
])
def test_bad_sentinel_and_cluster_urls_are_check_errors_without_the_url(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document({"redis_url": url}), source="t.yml", environ={})
    (problem,) = caught.value.problems
    assert problem.field == "cache.redis_url"
    assert why in problem.why
    assert "secret-pw" not in str(caught.value)
