"""The token exchange adapter (the engine's ``TokenExchanger`` port): RFC 8693 over the gateway's pooled HTTP
client, with the plugin's client authentication, TLS settings and timeout, and the issuer's discovered
``token_endpoint`` when ``token_exchange.token_endpoint`` is not set. It shares the introspection adapter's
material, metadata and transport (``HttpIntrospector``). Reading the answer is pure (``rfc8693``).

Every fault (connect, timeout, TLS, an error answer, garbage) becomes ``TokenExchangeFailed`` naming what happened,
never the token; the engine answers 502 and caches nothing.
"""

from __future__ import annotations

from phantom_token.config.settings import PluginConfig, TokenExchange
from phantom_token.core.errors import IntrospectionUnavailable, TokenExchangeFailed
from phantom_token.core.ports import Exchanged
from phantom_token.introspection.client import HttpIntrospector
from phantom_token.introspection.rfc8693 import exchange_request, read_exchange_response


class HttpTokenExchanger:
    def __init__(self, introspector: HttpIntrospector) -> None:
        self._introspector = introspector

    async def exchange(self, token: str, plugin: PluginConfig) -> Exchanged:
        settings = plugin.token_exchange or TokenExchange()
        try:
            endpoint = await self._introspector.token_endpoint(plugin)
            auth = self._introspector.client_authentication(plugin, endpoint)
            headers, body = exchange_request(token, settings, auth.headers, auth.params)
            response = await self._introspector.post(endpoint, headers, body, plugin)
        except TokenExchangeFailed:
            raise
        except IntrospectionUnavailable as exc:  # connect, timeout, TLS, discovery: said as such
            raise TokenExchangeFailed(f"the token endpoint could not be reached: {exc}") from exc
        except ValueError as exc:  # a client authentication that cannot be built
            raise TokenExchangeFailed(f"client authentication: {exc}") from exc
        return read_exchange_response(response.status, response.body)


__all__ = ["HttpTokenExchanger"]
