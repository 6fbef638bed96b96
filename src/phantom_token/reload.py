"""Reloading the configuration on SIGHUP: which file, what may change without a restart, the one log line.

``kill -HUP <pid>`` (the supervisor's with ``--workers N``; systemd's ``ExecReload=``) re-reads the file the process
started with. The supervisor checks it first: a file that fails ``phantom-token check``, or that changes what only
a restart can change, is refused with one log line and reaches no worker; the running configuration keeps
serving. Otherwise the supervisor takes the new configuration (for workers it starts later) and signals every
worker, which reads the file again and swaps it in (``Gateway.reload``): the same engine, cache, HTTP client and
connections, with the new routes and plugins. Requests in flight finish on the configuration they started with.

What reloads: the services, routes and plugins (every plugin option). What needs a restart (a reload changing it
is refused, naming it): any option of the ``phantom_token:`` section (listeners, workers, logging, the cache and
Redis, trusted proxies, timeouts and limits, ``jwt``, gRPC, the DPoP nonce secret), a first route that mints JWTs
when no signing key was loaded at start, and a first route with ``dpop_nonce`` when the running one has none.

The memory cache is kept whole: entries of a plugin whose cache namespace (endpoint, client, and the claim checks
that shape an entry: ``PluginConfig.cache_namespace``) did not change keep answering; entries of vanished or changed
namespaces are no longer looked up and leave by expiry or LRU eviction.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

from phantom_token.config.errors import ConfigError
from phantom_token.config.loader import Configuration, load_configuration
from phantom_token.config.settings import Settings

log = logging.getLogger("phantom_token")

_ALWAYS_RELOADED = frozenset({"routes", "source"})


@dataclass(frozen=True)
class ConfigSource:
    """Where the running configuration came from, and the command-line overrides applied to it."""

    path: str
    require_upstream: bool = True
    access_log: bool = False  # --access-log

    def load(self) -> Configuration:
        """The file, read and checked again (``ConfigError`` as ``check`` reports it)."""
        loaded = load_configuration(self.path, environ=os.environ, require_upstream=self.require_upstream)
        if self.access_log and not loaded.settings.access_log:
            loaded = Configuration(dataclasses.replace(loaded.settings, access_log=True), loaded.material)
        return loaded


def restart_needed(running: Settings, new: Settings, *, has_minter: bool) -> list[str]:
    """What differs between ``running`` and ``new`` that a reload cannot apply (empty: the reload can go on)."""
    changed = [f"phantom_token.{field.name}" for field in dataclasses.fields(Settings)
               if field.name not in _ALWAYS_RELOADED and getattr(running, field.name) != getattr(new, field.name)]
    if not has_minter and any(route.plugin is not None and route.plugin.mints_jwt for route in new.routes):
        changed.append("a route that mints JWTs (no signing key was loaded at start)")
    if _dpop_nonces(new) and not _dpop_nonces(running):
        changed.append("a first route with dpop_nonce (the nonce keeper is made at start)")
    return changed


def _dpop_nonces(settings: Settings) -> bool:
    return any(route.plugin is not None and route.plugin.dpop_nonce for route in settings.routes)


def check_reload(source: ConfigSource, running: Settings, *, has_minter: bool) -> Configuration | str:
    """The new configuration, or the one-line reason it is refused."""
    try:
        loaded = source.load()
    except ConfigError as err:
        problems = err.problems
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        return f"{problems[0]}{more}" if problems else str(err)
    changed = restart_needed(running, loaded.settings, has_minter=has_minter)
    if changed:
        return f"{source.path}: these need a restart: {', '.join(changed)}"
    return loaded


def refused(reason: str) -> None:
    """The one log line of a refused reload."""
    log.error("reload refused, the running configuration keeps serving: %s", reason.replace("\n", "; "))


__all__ = ["ConfigSource", "check_reload", "refused", "restart_needed"]
