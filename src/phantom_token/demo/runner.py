"""``phantom-token demo``: the whole pattern on one machine, with no other software.

Starts, in one process on 127.0.0.1: the demo authorization server (port + 1), the echo API (port + 2) and the
gateway (port) with three routes -- ``/api`` (token required), ``/admin`` (token with scope ``admin`` required,
which the demo client does not have) and ``/public`` (no token) -- then prints curl commands to try.
Ctrl-C (or SIGTERM) stops everything. The demo never prints a token: the commands fetch one themselves.
"""

from __future__ import annotations

import sys

from phantom_token.addresses import display
from phantom_token.config.settings import PluginConfig, Route, Settings, Upstream
from phantom_token.demo.authorization_server import DemoAuthorizationServer
from phantom_token.demo.echo_api import echo
from phantom_token.gateway import Gateway
from phantom_token.http.server import HttpServer, serve_app
from phantom_token.log import setup_logging
from phantom_token.process import Listeners, run, run_until_signalled

HOST = "127.0.0.1"
CLIENT_ID, CLIENT_SECRET = "demo-client", "demo-secret"
INTROSPECTION_CLIENT, INTROSPECTION_SECRET = "introspection-client", "demo-introspection-secret"


def demo_settings(port: int) -> Settings:
    """The gateway's settings: what a ``kong.yml`` for this demo would say (see examples/demo.yml)."""
    upstream = Upstream("http", HOST, port + 2, "/")
    plugin = PluginConfig(f"http://{HOST}:{port + 1}/oauth/introspect", INTROSPECTION_CLIENT, INTROSPECTION_SECRET)
    admin_plugin = PluginConfig(plugin.introspection_endpoint, plugin.client_id, plugin.client_secret, scope=("admin",))
    routes = (
        Route("api", "echo", upstream, paths=("/api",), strip_path=False, plugin=plugin),
        Route("admin", "echo", upstream, paths=("/admin",), strip_path=False, plugin=admin_plugin),
        Route("public", "echo", upstream, paths=("/public",), strip_path=False),
    )
    return Settings(routes, source="<demo>", listen=f"{HOST}:{port}")


def instructions(port: int) -> str:
    gateway, server = display(HOST, port), display(HOST, port + 1)
    fetch = (f"curl -s -u {CLIENT_ID}:{CLIENT_SECRET} -d grant_type=client_credentials {server}/oauth/token"
             " | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'")
    return f"""
  authorization server  {server}   (client {CLIENT_ID} / {CLIENT_SECRET}, scopes: read write)
  echo API              {display(HOST, port + 2)}   (answers with what it received, and the JWT's claims)

Try, in another shell:
  TOKEN=$({fetch})
  curl -s -H "Authorization: Bearer $TOKEN" {gateway}/api/hello        # 200: the API received a JWT, not $TOKEN
  curl -si {gateway}/api/hello                                         # 401: no token
  curl -si -H "Authorization: Bearer not-a-real-token" {gateway}/api/hello   # 401: inactive token
  curl -si -H "Authorization: Bearer $TOKEN" {gateway}/admin/hello      # 403: scope 'admin' missing
Ctrl-C stops everything.
"""


def run_demo(port: int) -> int:
    setup_logging("text", "info")
    settings = demo_settings(port)
    listeners = Listeners(Gateway(settings), "serve")
    helpers: list[HttpServer] = []

    async def start() -> list[str]:
        server = DemoAuthorizationServer(display(HOST, port + 1))
        helpers.append(await serve_app(server, HOST, port + 1))
        helpers.append(await serve_app(echo, HOST, port + 2))
        return await listeners.start(settings.listen, None)

    async def stop() -> None:
        await listeners.stop()
        for helper in helpers:
            helper.close()
            await helper.wait_closed()

    def announce(urls: list[str]) -> None:
        print(f"phantom-token demo listening on {urls[0]}" + instructions(port), flush=True)

    try:
        run(run_until_signalled(start, stop, announce))
    except OSError as exc:
        print(f"phantom-token demo: cannot listen on ports {port}-{port + 2}: {exc.strerror or exc}"
              " (try --port)", file=sys.stderr)
        return 1
    return 0
