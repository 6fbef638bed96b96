"""What the front doors do with a TLS listener (``phantom_token.tls``): the client certificate, once per connection.

- ``client_certificate: required``: a connection that completed its handshake without a certificate gets
  ``CertificateRequired`` as its handler instead of the front door's: every request on it is answered 400
  ``invalid_request`` ("No required TLS client certificate was sent") and the connection closes. This is what
  nginx's ``ssl_verify_client on`` does (its 400 "No required SSL certificate was sent"), and it tells a client
  why in HTTP, where a failed handshake would only show an alert. A certificate the configured CAs did not sign
  fails the handshake in every mode (nothing reaches HTTP).
- ``thumbprint``: the RFC 8705 ``x5t#S256`` of the connection's certificate, computed once when the connection's
  handler is made, and given to the engine with each request (``RequestInfo.client_cert_sha256``).
"""

from __future__ import annotations

from collections.abc import Callable

from phantom_token.core.client_cert import der_thumbprint
from phantom_token.core.verdict import Deny
from phantom_token.http.connection import RequestHandler, ServerConnection
from phantom_token.http.request_head import RequestHead
from phantom_token.http.responses import render_response

__all__ = ["CERTIFICATE_REQUIRED", "CertificateRequired", "requiring_certificate", "thumbprint"]

CERTIFICATE_REQUIRED = Deny(400, "invalid_request", "No required TLS client certificate was sent")


def thumbprint(conn: ServerConnection) -> str | None:
    """The RFC 8705 thumbprint of the certificate the connection's TLS client presented (None: none, or no TLS)."""
    der = conn.peer_certificate
    return der_thumbprint(der) if der is not None else None


class CertificateRequired(RequestHandler):
    """The handler of a connection without the certificate ``required`` asks for: 400, then close."""

    def __init__(self, conn: ServerConnection, observe: Callable[[int, str, str | None], None] | None = None) -> None:
        self.conn = conn
        self._observe = observe

    def handle_request(self, head: RequestHead) -> None:
        deny = CERTIFICATE_REQUIRED
        if self._observe is not None:
            self._observe(deny.status, deny.code, None)
        self.conn.write(render_response(deny.status, deny.headers(), deny.body(), head_only=head.method == "HEAD",
                                        keep_alive=False, http10=head.http10))
        self.conn.finish_response(False)

    def handle_body(self, data: bytes) -> None:
        pass  # discarded: the connection closes

    def handle_body_end(self) -> None:
        pass


def requiring_certificate(make: Callable[[ServerConnection], RequestHandler], required: bool,
                          observe: Callable[[int, str, str | None], None] | None = None,
                          ) -> Callable[[ServerConnection], RequestHandler]:
    """``make``, or (``required``) a maker that gives a connection without a certificate ``CertificateRequired``."""
    if not required:
        return make

    def make_checked(conn: ServerConnection) -> RequestHandler:
        if conn.peer_certificate is None:
            return CertificateRequired(conn, observe)
        return make(conn)

    return make_checked
