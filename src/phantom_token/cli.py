"""The ``phantom-token`` command (contract section 2).

Exit codes: 0 success (and after a graceful SIGTERM), 1 invalid configuration, 2 usage error.
This module parses arguments and checks the configuration before anything starts; ``serve`` and ``authz`` then
run through ``phantom_token.process`` (imported only for them, so ``check``, ``purge`` and ``jwks`` stay light).
Loading the configuration also loads the key and TLS files it names (``config.material``), once: ``check``
reports an unusable one, and ``serve``/``authz``/``jwks`` use the loaded keys and SSL contexts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from phantom_token import __version__, compiled
from phantom_token.addresses import parse_listen
from phantom_token.config.errors import ConfigError
from phantom_token.config.loader import Configuration, format_problems
from phantom_token.config.settings import LISTEN_OFF


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phantom-token", description="The phantom token pattern for API gateways.")
    parser.add_argument("--version", action="version",
                        version=f"phantom-token {__version__}, hot path {compiled.describe()}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "run the gateway (reverse proxy)"), ("authz", "run the decision service")):
        command = commands.add_parser(name, help=text)
        command.add_argument("-c", "--config", help="config file (default: $PHANTOM_TOKEN_CONFIG, phantom-token.yml)")
        command.add_argument("--listen", help="HOST:PORT to listen on (default from the file, else 127.0.0.1:3000)"
                             + ("; 'off' with --grpc-listen: gRPC only" if name == "authz" else ""))
        command.add_argument("--workers", type=int, help="processes sharing the port (default: from the file, 1)")
        command.add_argument("--admin-listen", help="HOST:PORT of the admin listener (off by default)")
        command.add_argument("--log-format", choices=("text", "json"), help="log line format")
        command.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="log level")
        command.add_argument("--access-log", action="store_true", default=None,
                             help="one log line per request (default: phantom_token.access_log, off)")
        if name == "authz":
            command.add_argument("--grpc-listen", metavar="HOST:PORT",
                                 help="also answer Envoy's gRPC ext_authz here (default from the file: off)")
    check = commands.add_parser("check", help="validate the configuration file")
    check.add_argument("-c", "--config")
    purge = commands.add_parser("purge", help="remove a token from every cache (calls POST /cache/purge)")
    purge.add_argument("-c", "--config", help="config file: where the admin listener is, and its admin_token")
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument("--token-stdin", action="store_true", help="read the token from stdin (never an argument)")
    which.add_argument("--token-sha256", metavar="HEX", help="the SHA-256 of the token, 64 hex digits")
    purge.add_argument("--admin-url", help="admin listener URL (default: from phantom_token.admin_listen)")
    jwks = commands.add_parser("jwks", help="print the JWKS of the keys the gateway signs minted JWTs with")
    jwks.add_argument("-c", "--config")
    demo = commands.add_parser("demo", help="run a demo authorization server, an echo API and the gateway")
    demo.add_argument("--port", type=int, default=3000, help="gateway port (the others use the next two)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command == "demo":
        from phantom_token.demo.runner import run_demo

        return run_demo(args.port)
    if args.command == "purge":
        return _purge(args)
    if args.command == "jwks":
        return _jwks(args.config)
    return _serve(args)


def _load(config: str | None, *, require_upstream: bool) -> Configuration:
    from phantom_token.config.loader import load_configuration, resolve_config_path

    return load_configuration(resolve_config_path(config, os.environ), require_upstream=require_upstream)


def _check(config: str | None) -> int:
    try:
        settings = _load(config, require_upstream=False).settings
    except ConfigError as err:
        print(format_problems(err), file=sys.stderr)
        return 1
    print(f"{settings.source}: ok ({len(settings.routes)} routes)")
    return 0


def _jwks(config: str | None) -> int:
    """Print the public JWKS of ``phantom_token.jwt`` (key_file and previous_key_file); 1 without a key file."""
    import json

    from phantom_token.minting import JwtMinter, signing_keys

    try:
        loaded = _load(config, require_upstream=False)
    except ConfigError as err:
        print(format_problems(err), file=sys.stderr)
        return 1
    settings = loaded.settings
    if settings.jwt.key_file is None:
        print("phantom-token: phantom_token.jwt.key_file is not set: the gateway generates a key at start, whose "
              "JWKS only its admin listener serves (/.well-known/jwks.json)", file=sys.stderr)
        return 1
    key, previous = signing_keys(settings, loaded.material)
    print(json.dumps(JwtMinter(key, settings.jwt.issuer or "", 0, previous).jwks(), indent=2))
    return 0


def _purge(args: argparse.Namespace) -> int:
    """Exit 0 when every cache dropped the token, 1 when the admin listener refused or failed, 2 on usage."""
    import json

    from phantom_token.admin_client import admin_url_from, post_purge

    try:
        settings = _load(args.config, require_upstream=False).settings
    except ConfigError as err:
        print(format_problems(err), file=sys.stderr)
        return 1
    admin_url = args.admin_url or (admin_url_from(settings.admin_listen) if settings.admin_listen else None)
    if admin_url is None:
        print("phantom-token: no admin listener: set phantom_token.admin_listen or pass --admin-url", file=sys.stderr)
        return 2
    if args.token_stdin:
        token = sys.stdin.readline().strip()
        if not token:
            print("phantom-token: no token on stdin", file=sys.stderr)
            return 2
        document = {"token": token}
    else:
        document = {"token_sha256": args.token_sha256}
    try:
        status, answer = post_purge(admin_url, settings.admin_token, document)
    except (OSError, ValueError) as exc:
        print(f"phantom-token: cannot reach the admin listener at {admin_url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer), file=sys.stdout if status == 200 else sys.stderr)
    return 0 if status == 200 else 1


def _serve(args: argparse.Namespace) -> int:
    from phantom_token.log import setup_logging

    try:
        loaded = _load(args.config, require_upstream=args.command == "serve")
    except ConfigError as err:
        print(format_problems(err), file=sys.stderr)
        return 1
    settings, material = loaded.settings, loaded.material
    listen = args.listen or settings.listen
    admin = args.admin_listen or settings.admin_listen
    workers = args.workers or settings.workers
    grpc_listen = (getattr(args, "grpc_listen", None) or settings.grpc_listen) if args.command == "authz" else None
    try:
        if listen == LISTEN_OFF and not grpc_listen:
            raise ValueError("--listen off needs authz's gRPC listener (--grpc-listen or phantom_token.grpc_listen)")
        for address in (listen, admin, grpc_listen):
            if address and address != LISTEN_OFF:
                parse_listen(address)
        fixed = grpc_listen if listen == LISTEN_OFF else listen
        if workers < 1 or (workers > 1 and fixed is not None and parse_listen(fixed)[1] == 0):
            raise ValueError("--workers must be at least 1, and several workers need a fixed port")
    except ValueError as exc:
        print(f"phantom-token: {exc}", file=sys.stderr)
        return 2
    if grpc_listen and not _grpc_installed():
        print("phantom-token: the gRPC listener needs the grpc extra: pip install 'phantom-token[grpc]'",
              file=sys.stderr)
        return 2
    if args.access_log and not settings.access_log:
        settings = dataclasses.replace(settings, access_log=True)
    setup_logging(args.log_format or settings.log_format, args.log_level or settings.log_level,
                  access_log=settings.access_log)
    from phantom_token.minting import needs_minter, signing_keys

    if needs_minter(settings):
        signing_keys(settings, material)  # before --workers fork, so that every worker signs with the same key
    from phantom_token.config.loader import resolve_config_path
    from phantom_token.process import Supervisor, worker
    from phantom_token.reload import ConfigSource

    config = ConfigSource(resolve_config_path(args.config, os.environ), require_upstream=args.command == "serve",
                          access_log=bool(args.access_log))
    if workers == 1:
        return worker(settings, material, args.command, listen, admin, reuse_port=False, ready_fd=None,
                      grpc_listen=grpc_listen, config=config)
    return Supervisor(settings, material, args.command, listen, admin, workers, grpc_listen, config).run()


def _grpc_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("grpc", "envoy", "grpc_health"))
