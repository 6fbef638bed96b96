"""Which authorization servers a token is asked of, on a route with several (``authorization_servers``). Pure.

The rule (docs/authorization-servers/several.md): the server whose ``token_prefix`` the token starts with, alone;
else every server without a prefix, in the order of the configuration. ``config.servers`` has made sure no two
prefixes overlap, so a token has at most one owner. A token that matches no prefix when every server has one is
asked of nobody (a 401).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from phantom_token.config.settings import PluginConfig

__all__ = ["candidates"]


def candidates(servers: Sequence[PluginConfig], token: str) -> tuple[PluginConfig, ...]:
    """The servers to ask about ``token``, in order."""
    for server in servers:
        prefix = server.token_prefix
        if prefix is not None and token.startswith(prefix):
            return (server,)
    return tuple(server for server in servers if server.token_prefix is None)
