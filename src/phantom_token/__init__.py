"""phantom-token: the phantom token pattern for API gateways.

Clients hold opaque access tokens; APIs receive JWTs. The gateway introspects the opaque token (RFC 7662),
caches the answer under a hash of the token, checks scopes, and forwards ``Authorization: Bearer <jwt>``.
"""

__version__ = "0.1.0"

from phantom_token import compiled as _compiled

_compiled.install()  # before anything imports the hot path: compiled, or from source (see compiled.py)
