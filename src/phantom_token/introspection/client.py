"""The introspection adapter: sends the RFC 7662 request over the pooled HTTP client.

Foreign errors (connect, timeout, TLS, protocol, oversized body) become ``IntrospectionUnavailable`` here, at
the boundary, so the engine sees one vocabulary.
"""

from __future__ import annotations

import logging
import ssl

from phantom_token.config.settings import PluginConfig
from phantom_token.core.errors import IntrospectionUnavailable
from phantom_token.core.ports import IntrospectionResult
from phantom_token.http.client import ClientError, HttpClient
from phantom_token.introspection.rfc7662 import build_request, read_jwt_response

log = logging.getLogger("phantom_token.introspection")

MAX_RESPONSE_BYTES = 1 << 20


def ssl_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class HttpIntrospector:
    def __init__(self, client: HttpClient) -> None:
        self._client = client
        self._verified = ssl_context(True)
        self._unverified = ssl_context(False)

    async def introspect(self, token: str, plugin: PluginConfig) -> IntrospectionResult:
        request = build_request(token, plugin.client_id, plugin.client_secret)
        secure = plugin.introspection_endpoint.startswith("https:")
        context = (self._verified if plugin.verify_ssl else self._unverified) if secure else None
        try:
            response = await self._client.request(
                "POST", plugin.introspection_endpoint, request.headers, request.body,
                timeout=plugin.introspection_timeout_seconds, ssl=context, max_body=MAX_RESPONSE_BYTES,
            )
        except ClientError as exc:
            raise IntrospectionUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except (OSError, ssl.SSLError) as exc:
            raise IntrospectionUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return read_jwt_response(response.status, response.headers, response.body)
