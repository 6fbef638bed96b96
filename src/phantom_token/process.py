"""Running ``serve`` and ``authz``: a gateway's listeners, the signals that stop them, worker processes.

- ``Listeners``: one ``Gateway`` behind one front door (the proxy for ``serve``, the decision service for
  ``authz``) and optionally the admin listener. Start order: gateway (HTTP client, cache and its Redis link,
  introspection discovery) -> front door -> admin listener; stop: the front door stops accepting and drains
  in-flight requests (at most ``DRAIN_SECONDS``) while ``/readyz`` answers 503 ``draining``, then the admin
  listener closes, then the gateway.
- ``worker``: one process running ``Listeners`` until SIGTERM/SIGINT (exit 0); a ready worker prints one line
  containing ``listening on http://HOST:PORT`` (or, under a supervisor, writes one byte to its pipe). SIGHUP
  reloads the configuration (``phantom_token.reload``); under a supervisor the worker publishes its metrics to its
  slot (``exposition``) every second and when it stops.
- ``Supervisor``: ``--workers N`` processes sharing the port (SO_REUSEPORT: each worker its own listening socket, the
  kernel hashing each new connection to one; one shared socket gave a burst of connections all to one worker, see
  docs/performance.md "Workers"), a dead one restarted; SIGTERM stops all; SIGHUP checks the file once and, when it
  is good, passes the signal on to every worker. ``freeze_heap`` runs before the forks (and in a single process
  before it serves).

Readiness (``/readyz``): 503 ``starting`` until the listeners are up (the configuration loaded, discovery done),
503 ``draining`` after SIGTERM, 503 ``redis_unreachable`` while Redis is configured and does not answer PING within
its command timeout (requests are still served, from memory and introspection); 200 ``ready`` otherwise.

The ASGI middleware needs none of this: it runs a ``Gateway`` inside the application's own server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from phantom_token.addresses import display, parse_listen
from phantom_token.admin import admin_handler
from phantom_token.cache.purge import Purger, PurgeReport, namespaces
from phantom_token.config.material import Material
from phantom_token.config.settings import LISTEN_OFF, Settings, introspection_servers
from phantom_token.errors import PhantomTokenError
from phantom_token.exposition import PUBLISH_SECONDS, WorkerMetrics, WorkerSlots, render
from phantom_token.frontends.decisions import start_decisions
from phantom_token.frontends.proxy import start_proxy
from phantom_token.gateway import Gateway
from phantom_token.http.server import serve_app
from phantom_token.introspection.discovery import MetadataError
from phantom_token.metrics import Samples
from phantom_token.minting import needs_minter
from phantom_token.reload import ConfigSource, check_reload, refused

log = logging.getLogger("phantom_token")

DRAIN_SECONDS = 30.0
COMMANDS = ("serve", "authz")
"""The front doors a process can run: the reverse proxy and the decision service."""


class Closable(Protocol):
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


class Listeners:
    """A gateway's front door (``command``: ``serve`` or ``authz``) and, optionally, its admin listener."""

    def __init__(self, gateway: Gateway, command: str, *, shared_metrics: WorkerMetrics | None = None,
                 config: ConfigSource | None = None) -> None:
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}")
        self.gateway = gateway
        self.command = command
        self.shared_metrics = shared_metrics  # under a supervisor: this worker's metrics slot
        self.config = config  # where a reload reads the configuration again; None: no reload
        self._servers: list[Closable] = []
        self._admin: Closable | None = None
        self._ready = False
        self._draining = False
        self._publisher: asyncio.Task[None] | None = None
        self._reloading: asyncio.Lock | None = None
        self.reloads = {"applied": 0, "refused": 0}
        self.grpc_address: str | None = None  # HOST:PORT of the gRPC listener, once started
        gateway.metrics.collectors.append(self._collect)

    async def start(self, listen: str, admin_listen: str | None, *, reuse_port: bool = False,
                    grpc_listen: str | None = None) -> list[str]:
        """Open the gateway, then listen; the URLs bound (the front door's, then the admin listener's). With
        ``grpc_listen`` (``authz`` only) the Envoy gRPC ext_authz listener too (``grpc_address`` says where), or
        alone when ``listen`` is ``LISTEN_OFF`` (the first URL is then ``grpc://HOST:PORT``)."""
        gateway, settings = self.gateway, self.gateway.settings
        for route in settings.routes:
            for server in introspection_servers(route.plugin) if route.plugin is not None else ():
                if not server.verify_ssl:
                    log.warning("route %r: verify_ssl is false, TLS certificates of %s are not checked",
                                route.name, server.endpoint_label)
        await gateway.open()
        if listen == LISTEN_OFF and grpc_listen:  # authz with its gRPC listener only
            urls = ["grpc://" + await self._grpc(grpc_listen, reuse_port)]
        else:
            host, port = parse_listen(listen)
            front = await self._front_door(host, port, reuse_port)
            self._servers.append(front)
            urls = [display(host, _bound_port(front, port), _scheme(settings))]
            if grpc_listen:
                self.grpc_address = await self._grpc(grpc_listen, reuse_port)
        if admin_listen:
            admin_host, admin_port = parse_listen(admin_listen)
            handler = admin_handler(gateway.metrics, admin_token=settings.admin_token, ready=lambda: self._ready,
                                    purge=self._purge, jwks=gateway.minter.jwks if gateway.minter else None,
                                    render=self.render_metrics, readiness=self.readiness)
            admin = self._admin = await serve_app(handler, admin_host, admin_port)
            urls.append(display(admin_host, _bound_port(admin, admin_port)))
        if self.shared_metrics is not None:
            self._publisher = asyncio.create_task(self._publish_periodically(), name="phantom-token metrics")
        self._ready = True
        return urls

    async def _purge(self, digest: bytes) -> PurgeReport:
        gateway = self.gateway  # the namespaces of the routes now served (a reload may change them)
        return await Purger(gateway.cache, namespaces(gateway.settings.routes)).purge(digest)

    def render_metrics(self) -> str:
        """``/metrics``: this process's series, or every worker's summed under a supervisor."""
        own = self.gateway.metrics.samples()
        return render(own if self.shared_metrics is None else self.shared_metrics.total(own))

    async def readiness(self) -> tuple[bool, str]:
        """Whether this process should get traffic, and the word saying why not (the module docstring)."""
        if self._draining:
            return False, "draining"
        if not self._ready:
            return False, "starting"
        link = self.gateway.caches.link
        if link is not None and not await link.ping():
            return False, "redis_unreachable"
        return True, "ready"

    async def _publish_periodically(self) -> None:
        assert self.shared_metrics is not None
        while True:
            self.shared_metrics.publish(self.gateway.metrics.samples())
            await asyncio.sleep(PUBLISH_SECONDS)

    def _collect(self, out: Samples) -> None:
        for result, count in self.reloads.items():
            out[f'phantom_token_config_reloads_total{{result="{result}"}}'] = count

    async def reload(self) -> bool:
        """Read the configuration file again and swap it in (``phantom_token.reload``); False when refused."""
        if self.config is None or not self._ready:
            return False
        if self._reloading is None:
            self._reloading = asyncio.Lock()
        async with self._reloading:
            gateway, path = self.gateway, self.config.path
            try:
                checked = await asyncio.to_thread(check_reload, self.config, gateway.settings,
                                                  has_minter=gateway.minter is not None)
                if isinstance(checked, str):
                    return self._refuse(checked)
                await gateway.reload(checked.settings, checked.material)
            except (PhantomTokenError, MetadataError) as exc:  # e.g. discovery for a new issuer failed
                return self._refuse(f"{path}: {exc}")
            except Exception as exc:  # never the worker's end; the message of a foreign error may quote anything
                return self._refuse(f"{path}: unexpected {type(exc).__name__}")
            self.reloads["applied"] += 1
            log.info("configuration reloaded from %s (%d routes)", path, len(checked.settings.routes))
            return True

    def _refuse(self, reason: str) -> bool:
        self.reloads["refused"] += 1
        refused(reason)
        return False

    async def _front_door(self, host: str, port: int, reuse_port: bool) -> Closable:
        gateway = self.gateway
        tls = gateway.settings.tls
        context = gateway.material.listener_tls[tls] if tls.cert_file is not None else None  # loaded with the file
        if self.command == "serve":
            return await start_proxy(gateway.engine, gateway.settings, host, port, reuse_port=reuse_port,
                                     observe=gateway.metrics.observe_request, tls=context, metrics=gateway.metrics)
        return await start_decisions(gateway.engine, gateway.settings, host, port, reuse_port=reuse_port,
                                     observe=gateway.metrics.observe_request, tls=context)

    async def _grpc(self, listen: str, reuse_port: bool) -> str:
        if self.command != "authz":
            raise ValueError("only authz has a gRPC listener")
        from phantom_token.frontends.grpc_authz import start_grpc  # grpcio is an optional extra

        gateway = self.gateway
        host, port = parse_listen(listen)
        tls = gateway.settings.grpc_tls
        pems = gateway.material.server_tls[tls] if tls.cert_file is not None else None  # loaded with the file
        server = await start_grpc(gateway.engine, gateway.settings, host, port, reuse_port=reuse_port,
                                  observe=gateway.metrics.observe_request, grace=DRAIN_SECONDS, tls=pems)
        self._servers.append(server)
        return display(host, server.port).removeprefix("http://")

    async def stop(self) -> None:
        """Stop listening, drain in-flight requests (at most ``DRAIN_SECONDS``; ``/readyz`` says ``draining``),
        publish the metrics a last time, close the admin listener, then the gateway."""
        self._draining = True
        for server in self._servers:
            server.close()
        try:
            await asyncio.wait_for(asyncio.gather(*(s.wait_closed() for s in self._servers)), DRAIN_SECONDS)
        except TimeoutError:
            log.warning("drain timed out after %.0fs; closing remaining connections", DRAIN_SECONDS)
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        if self.shared_metrics is not None:
            self.shared_metrics.publish(self.gateway.metrics.samples())
        if self._admin is not None:
            self._admin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._admin.wait_closed(), DRAIN_SECONDS)
        self._ready = False
        await self.gateway.close()


def _scheme(settings: Settings) -> str:
    """How the front door is reached: ``https`` when ``phantom_token.tls`` is set."""
    return "https" if settings.tls.cert_file is not None else "http"


def _bound_port(server: object, requested: int) -> int:
    """The port actually bound (differs from ``requested`` when it was 0)."""
    sockets = getattr(server, "sockets", None)
    if requested == 0 and sockets:
        return int(sockets[0].getsockname()[1])
    return requested


async def run_until_signalled(start: Callable[[], Awaitable[list[str]]], stop: Callable[[], Awaitable[None]],
                              announce: Callable[[list[str]], None],
                              reload: Callable[[], Coroutine[Any, Any, bool]] | None = None) -> None:
    """Start, announce, wait for SIGTERM or SIGINT, then stop gracefully; SIGHUP runs ``reload`` (when given)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    reloads: set[asyncio.Task[bool]] = set()
    if reload is not None:
        def on_hangup() -> None:
            task = loop.create_task(reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    urls = await start()
    announce(urls)
    await stopping.wait()
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # no reload while draining (and no default: exit)
    await stop()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop where it is available (it is a dependency), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - plain asyncio still works, only slower
        asyncio.run(main)
    else:
        uvloop.run(main)


def announce(command: str, urls: list[str], grpc_address: str | None = None) -> None:
    """The line a parent process waits for: ``phantom-token serve listening on http://...`` (``https://`` over
    TLS), then the gRPC
    listener (``grpc on HOST:PORT``) and the admin listener when there are."""
    extra = f" (grpc on {grpc_address})" if grpc_address else ""
    extra += f" (admin on {urls[1]})" if len(urls) > 1 else ""
    print(f"phantom-token {command} listening on {urls[0]}{extra}", flush=True)


def freeze_heap() -> None:
    """Move every object alive now out of the garbage collector's reach (``gc.freeze``): the modules, the settings,
    the gateway built at start-up (about 50 000 objects of a worker's 65 000 with 10 000 cached tokens).

    Full collections then scan only what came later (the cache entries, the connections): about a quarter of the
    objects, so the pause during a burst of introspections shrinks by as much. Before ``--workers`` forks it also
    keeps the pages of those objects shared between the supervisor and the workers: a worker's collection writes
    into the header of every object it scans, which makes the kernel copy the page (copy-on-write); frozen objects
    are never scanned. Frozen objects are still freed by reference counting; only a reference cycle among them is
    never collected: the start-up configuration after a reload replaces it, once (bounded).
    """
    gc.collect()
    gc.freeze()


def worker(settings: Settings, material: Material, command: str, listen: str, admin: str | None, *,
           reuse_port: bool, ready_fd: int | None, grpc_listen: str | None = None,
           config: ConfigSource | None = None, shared_metrics: WorkerMetrics | None = None) -> int:
    """Run one process's ``Listeners`` until SIGTERM or SIGINT; the exit status (1: could not start).

    ``material`` is the configuration's, loaded once before any worker forks: no worker reads a key file again
    (until a reload, which reads ``config`` again). ``shared_metrics``: this worker's slot, under a supervisor.
    """
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop handles it: a reload before start is moot
    listeners = Listeners(Gateway(settings, material), command, shared_metrics=shared_metrics, config=config)

    def ready(urls: list[str]) -> None:
        if ready_fd is None:
            announce(command, urls, listeners.grpc_address)
        else:
            os.write(ready_fd, b"1")
            os.close(ready_fd)

    async def main() -> None:
        await run_until_signalled(
            lambda: listeners.start(listen, admin, reuse_port=reuse_port, grpc_listen=grpc_listen), listeners.stop,
            ready, listeners.reload if config is not None else None)

    freeze_heap()
    try:
        run(main())
    except OSError as exc:
        print(f"phantom-token: cannot listen: {exc}", file=sys.stderr)
        return 1
    except PhantomTokenError as exc:  # e.g. discovery failed, a key file vanished since the check
        print(f"phantom-token: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


class Supervisor:
    """Runs ``workers`` processes on one port (SO_REUSEPORT); restarts one that dies; SIGTERM stops all; SIGHUP
    reloads (``phantom_token.reload``: checked here once, then passed on to every worker).

    Only the first worker runs the admin listener; its /metrics sums every worker's slot (``exposition``).
    """

    def __init__(self, settings: Settings, material: Material, command: str, listen: str, admin: str | None,
                 workers: int, grpc_listen: str | None = None, config: ConfigSource | None = None) -> None:
        self.settings, self.material, self.command = settings, material, command
        self.listen, self.admin, self.workers = listen, admin, workers
        self.grpc_listen = grpc_listen
        self.config = config
        self.slots = WorkerSlots(workers)
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False
        self.running = False  # every worker has started (a SIGHUP before that waits for it)
        self.reload_pending = False

    def _spawn(self, index: int, ready_fd: int | None) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            admin = self.admin if index == 0 else None
            os._exit(worker(self.settings, self.material, self.command, self.listen, admin, reuse_port=True,
                            ready_fd=ready_fd, grpc_listen=self.grpc_listen, config=self.config,
                            shared_metrics=WorkerMetrics(self.slots, index)))
        self.children[pid] = index

    def _reload(self, _signum: int, _frame: object) -> None:
        """SIGHUP: check the file once; refuse it with one log line, or take it and signal every worker."""
        if self.config is None or self.stopping:
            return
        if not self.running:  # the workers would ignore it until their loop runs: once they are all up
            self.reload_pending = True
            return
        try:
            checked = check_reload(self.config, self.settings, has_minter=needs_minter(self.settings))
        except Exception as exc:  # raised in a signal handler, it would end the supervisor
            checked = f"{self.config.path}: unexpected {type(exc).__name__}"
        if isinstance(checked, str):
            refused(checked)
            return
        self.settings, self.material = checked.settings, checked.material  # for the workers started from now on
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._reload)
        read_fd, write_fd = os.pipe()
        freeze_heap()  # before the forks: the workers share the start-up heap's pages instead of copying them
        for index in range(self.workers):
            self._spawn(index, write_fd)
        os.close(write_fd)
        ready = 0
        while ready < self.workers:
            chunk = os.read(read_fd, self.workers)
            if not chunk:
                break
            ready += len(chunk)
        os.close(read_fd)
        if ready < self.workers:
            self._stop(signal.SIGTERM, None)
            self._reap()
            return 1
        grpc = display(*parse_listen(self.grpc_listen)).removeprefix("http://") if self.grpc_listen else None
        front = (f"grpc://{grpc}" if self.listen == LISTEN_OFF
                 else display(*parse_listen(self.listen), _scheme(self.settings)))
        urls = [front] + ([display(*parse_listen(self.admin))] if self.admin else [])
        announce(self.command, urls, None if self.listen == LISTEN_OFF else grpc)
        self.running = True
        if self.reload_pending:
            self._reload(signal.SIGHUP, None)
        return self._reap()

    def _reap(self) -> int:
        status = 0
        while self.children:
            try:
                pid, code = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
            index = self.children.pop(pid, None)
            if index is None:
                continue
            if os.waitstatus_to_exitcode(code) != 0:
                status = 1
            if not self.stopping:
                print(f"phantom-token: worker {index} (pid {pid}) exited; starting a new one", file=sys.stderr)
                self._spawn(index, None)
        return 0 if self.stopping else status

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


__all__ = ["Listeners", "Supervisor", "announce", "freeze_heap", "run", "run_until_signalled", "worker"]
