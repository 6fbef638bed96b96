"""Introspection clients: RFC 7662 requests and the reading of their responses."""
