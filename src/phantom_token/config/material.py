"""Key and TLS material: the files the configuration names, read once, into a frozen ``Material``.

The option parsers (``plugin_options``, ``process_options``) only check that a file is named where it may be;
each place that names one records a ``Need`` (where it is, which field, what to load). ``load_needs`` is the one
step that reads the files: PEM private keys through ``phantom_token.jose``, CA bundles and client certificates
into the ``ssl.SSLContext`` the introspection adapter then uses for every call to the AS, and the gRPC listener's
certificate, key and client CAs (``phantom_token.grpc_tls``) as the PEM bytes grpcio takes (checked with
``ssl``), and the HTTP listener's SSL context (``phantom_token.tls``: built once, before any worker forks, and
shared by them). ``phantom-token check`` and start-up run it once, through ``config.loader``; the gateway, the
introspector, the minter and the gRPC listener take the loaded objects from the ``Material`` instead of reading the
files again. ``load_material`` derives the needs of a
``Settings`` built in code (tests, the ASGI middleware's ``from_settings``).

Invariants:
- Each key file is read once, however many needs name it; each SSL context is built once per distinct (verify,
  CA, certificate, key) quadruple (``ssl`` reads those files itself) and shared by the plugins that name it.
- A problem names the file's field and the error's kind, never the file's content nor a key.
- ``Material`` holds what was loaded and nothing else (its mappings are read-only); asking it for something no
  need named raises ``KeyError`` (the caller loaded the material of other settings).
- ``Need.at`` only orders problems: ``config.loader`` inserts a file's problem among the parser's at that index.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from phantom_token.config.errors import ConfigError, ConfigProblem
from phantom_token.config.settings import (
    GrpcTlsSettings,
    JwtSettings,
    PluginConfig,
    Settings,
    TlsSettings,
    introspection_servers,
)

if TYPE_CHECKING:  # imported when a key is read: a file that names none never loads the JOSE library
    from phantom_token.jose import SigningKey

__all__ = [
    "KeyFile",
    "Material",
    "Need",
    "ServerPems",
    "TlsFiles",
    "assertion_key_file",
    "jwt_key_files",
    "listener_context",
    "load_material",
    "load_needs",
    "plugin_needs",
    "signing_key",
    "ssl_context",
    "tls_files",
]

_NOT_A_KEY = "is not a PEM private key (EC P-256/384/521, RSA >= 2048 bits or Ed25519) that fits the algorithm"


@dataclass(frozen=True, slots=True)
class KeyFile:
    """A PEM private key to load: the file, the algorithm it must fit (None: from the key), its ``kid``."""

    path: str
    alg: str | None = None
    kid: str | None = None


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """What one SSL context for the AS is made of: certificate checks on or off, the CA bundle (None: the system
    store), the client certificate and its key (RFC 8705; None: none presented)."""

    verify: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class Need:
    """One place in the configuration that names material: ``where`` and ``prefix`` locate a problem as the option
    parsers would (``prefix`` + the option's name); ``at`` is how many problems the file had when it was named, so
    that a problem with the material is reported where the parser used to report it."""

    where: str
    prefix: str  # "config." (a plugin block) or "jwt." (phantom_token.jwt)
    option: str  # the option naming the key file; for TlsFiles: unused ("ca_file"/"client_cert_file" are named)
    what: KeyFile | TlsFiles | GrpcTlsSettings | TlsSettings
    at: int = 0


@dataclass(frozen=True, slots=True)
class ServerPems:
    """The gRPC listener's TLS as grpcio takes it: certificate chain, private key, client CAs (None: not asked)."""

    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    client_ca: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Material:
    """Every key and SSL context the configuration names, loaded. Read-only after ``load_needs``."""

    keys: Mapping[KeyFile, SigningKey] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    contexts: Mapping[TlsFiles, ssl.SSLContext] = field(default_factory=lambda: MappingProxyType({}))
    server_tls: Mapping[GrpcTlsSettings, ServerPems] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    listener_tls: Mapping[TlsSettings, ssl.SSLContext] = field(default_factory=lambda: MappingProxyType({}))

    def jwt_keys(self, jwt: JwtSettings) -> tuple[SigningKey | None, tuple[SigningKey, ...]]:
        """``phantom_token.jwt``'s current key (None: ``key_file`` is not set) and its previous keys."""
        current, previous = jwt_key_files(jwt)
        return (self.keys[current] if current else None), tuple(self.keys[key] for key in previous)


def jwt_key_files(jwt: JwtSettings) -> tuple[KeyFile | None, tuple[KeyFile, ...]]:
    """What ``phantom_token.jwt`` names: the current key (None: generated at start) and the previous ones."""
    current = KeyFile(jwt.key_file, jwt.alg, jwt.kid) if jwt.key_file is not None else None
    previous = KeyFile(jwt.previous_key_file, None, jwt.previous_kid) if jwt.previous_key_file is not None else None
    return current, (previous,) if previous is not None else ()


def assertion_key_file(plugin: PluginConfig) -> KeyFile | None:
    """The key that signs the plugin's client assertion; None unless it uses ``private_key_jwt``."""
    path = plugin.client_private_key_file
    if plugin.client_auth_method != "private_key_jwt" or path is None:
        return None
    return KeyFile(path, None, plugin.client_private_key_id)


def tls_files(plugin: PluginConfig) -> TlsFiles:
    """What the SSL context of the plugin's calls to the AS is made of."""
    return TlsFiles(plugin.verify_ssl, plugin.ca_file, plugin.client_cert_file, plugin.client_key_file)


def plugin_needs(where: str, plugin: PluginConfig) -> list[Need]:
    """What one plugin needs: its SSL context, and its assertion key with ``private_key_jwt``."""
    needs = [Need(where, "config.", "ca_file", tls_files(plugin))]
    key = assertion_key_file(plugin)
    if key is not None:
        needs.append(Need(where, "config.", "client_private_key_file", key))
    return needs


def load_material(settings: Settings) -> Material:
    """The material of ``settings``; raises ``ConfigError`` listing every unusable file.

    For settings built in code: a file the loader read names its plugin blocks itself (``config.loader``).
    """
    current, previous = jwt_key_files(settings.jwt)
    needs = [Need("phantom_token", "jwt.", "key_file", current)] if current else []
    needs += [Need("phantom_token", "jwt.", "previous_key_file", key) for key in previous]
    for route in settings.routes:
        if route.plugin is not None:
            for server in introspection_servers(route.plugin):
                needs += plugin_needs(f"route '{route.name}' / plugin 'phantom-token'", server)
    if settings.grpc_tls.cert_file is not None:
        needs.append(Need("phantom_token", "grpc_tls.", "cert_file", settings.grpc_tls))
    if settings.tls.cert_file is not None:
        needs.append(Need("phantom_token", "tls.", "cert_file", settings.tls))
    material, problems = load_needs(settings.source, needs)
    if problems:
        raise ConfigError([problem for _, problem in problems])
    return material


def load_needs(source: str, needs: Iterable[Need]) -> tuple[Material, list[tuple[int, ConfigProblem]]]:
    """Read every file the needs name, once each; the material, and each problem with its need's ``at``."""
    keys: dict[KeyFile, SigningKey] = {}
    contexts: dict[TlsFiles, ssl.SSLContext] = {}
    pems: dict[str, bytes | str] = {}  # path -> the PEM, or why it cannot be read: a key file is read once
    problems: list[tuple[int, ConfigProblem]] = []
    server_tls: dict[GrpcTlsSettings, ServerPems] = {}
    listener_tls: dict[TlsSettings, ssl.SSLContext] = {}
    failed: dict[KeyFile | TlsFiles | GrpcTlsSettings | TlsSettings, list[tuple[str, str]]] = {}  # read once too
    for need in needs:
        what = need.what
        if (what not in keys and what not in contexts and what not in server_tls and what not in listener_tls
                and what not in failed):
            if isinstance(what, KeyFile):
                whys = _load_key(what, keys, pems)
            elif isinstance(what, TlsFiles):
                whys = _load_context(what, contexts)
            elif isinstance(what, TlsSettings):
                whys = _load_listener_tls(what, listener_tls)
            else:
                whys = _load_server_tls(what, server_tls)
            if whys:
                failed[what] = whys
        for option, why in failed.get(what, ()):
            problems.append((need.at, ConfigProblem(source, need.where, need.prefix + (option or need.option), why)))
    material = Material(MappingProxyType(keys), MappingProxyType(contexts), MappingProxyType(server_tls),
                        MappingProxyType(listener_tls))
    return material, problems


def listener_context(files: TlsSettings) -> ssl.SSLContext:
    """The HTTP listener's SSL context (``phantom_token.tls``), read now; ``ValueError`` says which file is unusable
    (for listeners started in code without a ``Material``)."""
    contexts: dict[TlsSettings, ssl.SSLContext] = {}
    whys = _load_listener_tls(files, contexts)
    if whys:
        raise ValueError("; ".join(f"{option} {why}" for option, why in whys))
    return contexts[files]


def _load_listener_tls(files: TlsSettings, into: dict[TlsSettings, ssl.SSLContext]) -> list[tuple[str, str]]:
    """The listener's SSL context, or why not. Only the configured CAs verify client certificates (never the
    system store); ``required`` is enforced per connection by the front door (an HTTP 400, as nginx answers), so
    the handshake itself asks for a certificate without insisting on one."""
    whys = []
    for option, path in (("cert_file", files.cert_file), ("key_file", files.key_file),
                         ("client_ca_file", files.client_ca_file)):
        if path is not None:
            try:
                with Path(path).open("rb"):
                    pass
            except OSError as exc:
                whys.append((option, f"cannot read the file: {exc.strerror}"))
    if whys:
        return whys
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # TLS 1.2+, the ssl module's secure defaults, no CA loaded
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(str(files.cert_file), files.key_file)
    except (OSError, ssl.SSLError) as exc:
        whys.append(("cert_file", f"with key_file, is not a readable PEM certificate and matching key "
                                  f"({type(exc).__name__})"))
    if files.client_certificate != "none" and files.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=files.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            whys.append(("client_ca_file", f"is not a readable PEM file of CA certificates ({type(exc).__name__})"))
        context.verify_mode = ssl.CERT_OPTIONAL
    if not whys:
        into[files] = context
    return whys


def _load_server_tls(files: GrpcTlsSettings, into: dict[GrpcTlsSettings, ServerPems]) -> list[tuple[str, str]]:
    """The gRPC listener's PEMs, or why not: each file readable, the certificate fitting its key, the CAs PEM."""
    pems: dict[str, bytes] = {}
    whys = []
    for option, path in (("cert_file", files.cert_file), ("key_file", files.key_file),
                         ("client_ca_file", files.client_ca_file)):
        if path is not None:
            try:
                pems[option] = Path(path).read_bytes()
            except OSError as exc:
                whys.append((option, f"cannot read the file: {exc.strerror}"))
    if whys or files.cert_file is None or files.key_file is None:
        return whys
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # only to check the files, as grpcio would use them
    try:
        context.load_cert_chain(files.cert_file, files.key_file)
    except (OSError, ssl.SSLError) as exc:
        whys.append(("cert_file", f"with key_file, is not a PEM certificate and matching key ({type(exc).__name__})"))
    if files.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=files.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            whys.append(("client_ca_file", f"is not a PEM file of CA certificates ({type(exc).__name__})"))
    if not whys:
        into[files] = ServerPems(pems["cert_file"], pems["key_file"], pems.get("client_ca_file"))
    return whys


def _load_key(key: KeyFile, into: dict[KeyFile, SigningKey], pems: dict[str, bytes | str]) -> list[tuple[str, str]]:
    """The key, or why not (``pems``: the files read so far, so that two needs of one file read it once)."""
    if key.path not in pems:
        try:
            pems[key.path] = Path(key.path).read_bytes()
        except OSError as exc:
            pems[key.path] = f"cannot read the file: {exc.strerror}"
    pem = pems[key.path]
    if isinstance(pem, str):
        return [("", pem)]
    from phantom_token.jose import JoseError, SigningKey

    try:
        into[key] = SigningKey.from_pem(pem, key.alg, key.kid)
    except JoseError:
        return [("", _NOT_A_KEY)]
    return []


def _load_context(files: TlsFiles, into: dict[TlsFiles, ssl.SSLContext]) -> list[tuple[str, str]]:
    """The context, or why not: the CA bundle and the certificate with its key are each checked."""
    whys = []
    try:
        context = ssl.create_default_context(cafile=files.ca_file)
    except (OSError, ssl.SSLError) as exc:
        whys.append(("ca_file", f"is not a readable PEM file of CA certificates ({type(exc).__name__})"))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # only to check the client certificate below
    if not files.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if files.cert_file is not None:
        try:
            context.load_cert_chain(files.cert_file, files.key_file)
        except (OSError, ssl.SSLError) as exc:
            why = f"with client_key_file, is not a readable PEM certificate and matching key ({type(exc).__name__})"
            whys.append(("client_cert_file", why))
    if not whys:
        into[files] = context
    return whys


def ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """One SSL context, read now; ``ValueError`` says which file is unusable (the introspector's way for a plugin
    it was given no material for)."""
    contexts: dict[TlsFiles, ssl.SSLContext] = {}
    whys = _load_context(files, contexts)
    if whys:
        raise ValueError("; ".join(f"{option} {why}" for option, why in whys))
    return contexts[files]


def signing_key(key: KeyFile) -> SigningKey:
    """One private key, read now; ``ValueError`` says why it is unusable (as ``ssl_context``)."""
    keys: dict[KeyFile, SigningKey] = {}
    whys = _load_key(key, keys, {})
    if whys:
        raise ValueError(whys[0][1])
    return keys[key]
