"""
``twistd embweb``: command-line options and the assembly of the services.

This module only assembles.  The whole INI is validated in
L{Options.postOptions}; a bad value ends ``twistd`` with one line naming
the file, the key and what was expected (no usage text, no traceback).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, Sequence, cast

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage

from boatwist import __version__
from boatwist.clock import WallClockView, use_monotonic_time
from boatwist.config import (
    ACCESS_LOG_OFF,
    AdmissionSettings,
    ConfigError,
    Settings,
    is_tls,
    load_config,
    plain_endpoint,
    ssl_files,
)
from boatwist.startup import OneLineListener, StartupError, check_state_dir, listen_early

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorCore, IReactorProcess, IReactorSocket, IReactorThreads, \
        IReactorTime
    from twisted.web.resource import IResource

    from boatwist.core import Core
    from boatwist.logs import SourceSummary

    class IReactor(IReactorCore, IReactorTime, IReactorThreads, IReactorProcess, IReactorSocket):
        """What boatwist uses of the reactor: Twisted's own reactors provide all of these."""

    class Limits(Protocol):
        """The C{resource} module, as L{fit_connection_cap} uses it (tests pass a stand-in)."""

        RLIMIT_NOFILE: int
        RLIM_INFINITY: int

        def getrlimit(self, resource: int, /) -> tuple[int, int]: ...

        def setrlimit(self, resource: int, limits: tuple[int, int], /) -> None: ...

# The rest of boatwist is imported by makeService, once the listeners listen:
# those imports are most of the time a start takes.

_log = Logger(namespace="boatwist.tap")


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = "Run boatwist, the web server for embedded devices with truthful presence."
    optParameters = [["config", "c", "etc/embweb.ini", "The INI configuration file."]]

    def postOptions(self) -> None:
        try:
            self["settings"] = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        A configuration error ends twistd with the one line that explains it:
        twistd would print the whole usage text above it, which buries it.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if "settings" in self or not str(e).startswith(str(self["config"])):
                raise
            sys.stderr.write(f"embweb: {e}\n")
            raise SystemExit(2) from None


def with_backlog(description: str, backlog: int) -> str:
    """
    C{description} with C{backlog=} added to a tcp/ssl endpoint that names
    none.  Twisted listens with a backlog of 50: under a connection flood
    the kernel's accept queue overflows between two accept rounds and drops
    SYNs -- an operator's among them, who then waits a 1 s retransmission.
    """
    kind = description.split(":", 1)[0]
    if kind not in ("tcp", "tcp6", "ssl") or "backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"


def _backlog(settings: Settings) -> int:
    return max(50, min(4096, 2 * settings.admission.max_connections))


def _listen(reactor: IReactor, settings: Settings, key: str, factory: IProtocolFactory,
            listening: dict[str, socket.socket]) -> StreamServerEndpointService:
    """
    A service listening on the endpoint of C{[server] key} (adopting the
    socket L{makeService} listens on first, if any); failing to start, it
    ends twistd with one line.
    """
    description = plain_endpoint(getattr(settings.server, key))
    endpoint: IStreamServerEndpoint
    where = f"{settings.source}: [server] {key}"
    early = listening.pop(key, None)
    if early is not None:
        # The endpoint closes the descriptor once the reactor's port has its own copy.
        endpoint = AdoptedStreamServerEndpoint(reactor, early.detach(), early.family)
    elif description.startswith("systemd:"):
        endpoint = systemd_endpoint(reactor, where, description)
    else:
        endpoint = serverFromString(reactor, with_backlog(description, _backlog(settings)))
    return OneLineListener(endpoint, factory, f"{where} = {description!r}")


def makeService(options: usage.Options, reactor: IReactor | None = None) -> MultiService:
    """
    Assemble boatwist, in the order data flows: users, the core (events,
    presence, connections, store, chat room, heartbeat, metrics), the
    services, authentication, then the listeners -- whose tcp: sockets
    listen before all that (L{listen_early}).  Every start-up problem ends
    twistd with one line.
    """
    daemon = reactor is None
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = cast("IReactor", global_reactor)
        use_monotonic_time(reactor)
    settings: Settings = options["settings"]
    top = MultiService()
    state_dir = settings.server.state_dir
    # Listen first (tcp: endpoints), then assemble: a client connecting meanwhile waits in the
    # backlog and is answered once the reactor runs, instead of being refused.
    listening: dict[str, socket.socket] = {}
    try:
        # What the INI cannot say: ports free, interfaces ours, state_dir writable.
        for key in ("http", "https", "chat"):
            if getattr(settings.server, key):
                early = listen_early(plain_endpoint(getattr(settings.server, key)),
                                     f"{settings.source}: [server] {key}", _backlog(settings))
                if early is not None:
                    listening[key] = early
        check_state_dir(state_dir, f"{settings.source}: [server] state_dir")
    except StartupError as e:
        _fail(str(e))
    if daemon:
        # What is loaded so far (Python, Twisted, twistd) lives as long as the process: moved out
        # of the collector's sight, it is not walked by the full collection the imports below would
        # set off (~25 ms of a start), nor by any later one.
        gc.freeze()

    from twisted.internet.threads import deferToThreadPool

    from boatwist.auth.digest import NONCE_KEY_FILE, persistent_key
    from boatwist.auth.passwords import PasswordFileError, UserDatabase, ensure_initial_admin
    from boatwist.auth.portal import build_authentication
    from boatwist.auth.watch import CredentialWatch
    from boatwist.chat.device import device_commands
    from boatwist.chat.protocol import ChatFactory
    from boatwist.controls.backends.factory import BackendFactory
    from boatwist.controls.registry import ControlsService
    from boatwist.core import build_core
    from boatwist.logs import BoundedLogs, SourceSummary, rotate_size, rotating_observer
    from boatwist.net.tracking import ClosingService
    from boatwist.presence import Kind
    from boatwist.store.service import Store, size_budget
    from boatwist.systemd import Notifier, SystemdNotifyService
    from boatwist.web.guard import guarded_root
    from boatwist.web.resources import OperatorRoot

    # -- users
    try:
        password = ensure_initial_admin(settings.users_file, settings.digest_users_file, settings.auth.realm,
                                        state_dir)
    except OSError as e:
        _fail(f"{settings.source}: [auth] users: cannot create the first user in {e.filename or state_dir} "
              f"({e.strerror or e})")
    if password is not None:
        # Never the password itself: twistd --logfile creates its log world-readable (0644), and logs
        # are shipped and kept.  The file is 0600, readable by the daemon's user (and root) only.
        _log.warn(
            "created user 'admin' with a random password, written to {path} (mode 0600): log in with it, "
            "change it with embweb-passwd passwd admin, then delete the file",
            path=str(state_dir / "initial-admin-password"),
        )
    try:
        # A changed users file takes effect within a second (embweb-passwd, a hand edit).
        database = UserDatabase(settings.users_file, settings.digest_users_file, realm=settings.auth.realm,
                                monotonic=time.monotonic, check_interval=1.0)
    except PasswordFileError as e:
        _fail(str(e))

    # -- the core
    notifier = Notifier(os.environ)
    watchdog = notifier.watchdog_interval()
    if watchdog is not None and settings.heartbeat.interval > watchdog / 2:
        _fail(f"{settings.source}: [heartbeat] interval = {settings.heartbeat.interval:g}: expected at most half "
              f"of the systemd watchdog ({watchdog:g} s), or systemd will restart the daemon")
    store = Store(str(state_dir / "boatwist.sqlite"), retention_count=settings.store.retention_count,
                  retention_days=settings.store.retention_days,
                  max_bytes=size_budget(settings.store.max_size, str(state_dir)), reactor=reactor)
    # pymodbus reports through the standard logging module, to stderr: its
    # messages (a device not answering) reach people as our own quality lines.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    backends = BackendFactory(reactor, reactor, reactor)
    core = build_core(settings, reactor, store, backends, admission=fit_connection_cap(settings.admission),
                      watchdog=notifier.watchdog if watchdog else None)

    # -- services.  On stop: close every connection (reason "shutdown"), then
    # the store, so logouts are written.
    closing = ClosingService(core.tracker)
    closing.setServiceParent(top)
    store.setServiceParent(closing)
    core.heartbeat.setServiceParent(top)
    core.heartbeat.after_tick.append(CredentialWatch(database, settings.auth.realm, core.presence).check)
    # After the store (the recorded values are read on its thread, after it opened).
    controls = ControlsService(core.controls)
    controls.setServiceParent(closing)

    # -- logs: bounded files, floods summarised
    log_observer = None
    if settings.log.file is not None:
        try:
            log_observer = rotating_observer(str(settings.log.file), rotate_size(str(settings.log.file),
                                             settings.log.max_size, settings.log.files), settings.log.files)
        except OSError as e:
            _fail(f"{settings.source}: [log] file = {str(settings.log.file)!r}: cannot open ({e.strerror or e})")
        globalLogPublisher.addObserver(log_observer)
    BoundedLogs(settings.log.max_size, settings.log.files, log_observer).setServiceParent(top)
    summary = SourceSummary(core.monotonic, settings.log.per_source, settings.log.max_lines)
    core.heartbeat.after_tick.append(summary.flush)

    # -- authentication
    def audit(kind: str, user: str, address: str, detail: str) -> None:
        store.audit(kind, user, address, detail).addErrback(lambda _: None)

    def run_in_thread(f: Any, *a: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *a)

    auth = build_authentication(settings.auth, database, reactor, core.monotonic, run_in_thread, audit,
                                lambda user: OperatorRoot(core, user),
                                nonce_key=persistent_key(state_dir / NONCE_KEY_FILE), summary=summary)
    auth.offer.state()  # logs what is offered and which users limit it

    # -- the fleet: an MQTT broker (off unless [mqtt] broker is set; paho is imported only then)
    if settings.mqtt.enabled:
        from boatwist.mqtt.bridge import MqttBridgeService
        from boatwist.mqtt.device import CoreDevice, PipelineOperator

        # It connects once the controls were read: its first snapshot (retained state,
        # Home Assistant discovery) must be the whole device, not an empty registry.
        controls_read: Deferred[None] = Deferred()

        def read(result: object) -> object:
            controls_read.callback(None)
            return result

        controls.started.addBoth(read)
        bridge = MqttBridgeService(settings.mqtt, core.hub, CoreDevice(core, settings.mqtt.user or "mqtt"),
                                   PipelineOperator(core) if settings.mqtt.commands else None, reactor, state_dir,
                                   ready=controls_read)
        bridge.setServiceParent(top)
        core.metrics.add_source(bridge.stats_metrics)

    # -- listeners (the automatic TLS certificate first: any of them may serve it)
    _make_automatic_certificate(settings)
    _listen_http(reactor, settings, core, guarded_root(auth.portal, auth.factories, auth.offer.challenges), top,
                 summary, listening)
    if settings.server.chat:
        def chat_login(user: str, password: str, peer: str) -> Deferred[str]:
            return auth.check_password(user, password, peer, via="chat")

        chat: IProtocolFactory = ChatFactory(core.room, core.presence, core.tracker, chat_login, reactor,
                                             settings.chat, commands=device_commands(core))
        if is_tls(settings.server.chat):  # chat = tls:PORT: the https certificate, TLS put on by us
            chat = _with_tls(settings, chat)
        _listen(reactor, settings, "chat", core.tracker.wrap(chat, Kind.CHAT), listening).setServiceParent(top)

    _log.info("boatwist {version} starting; at most {n} operators", version=__version__,
              n=settings.admission.max_users)
    # Last child: READY=1 is sent once every listener above has started.
    SystemdNotifyService(notifier).setServiceParent(top)
    return top


def _listen_http(reactor: IReactor, settings: Settings, core: Core, root: IResource, top: MultiService,
                 summary: SourceSummary, listening: dict[str, socket.socket]) -> None:
    """The HTTP and HTTPS listeners (and the optional redirect of the first to the second)."""
    from boatwist.presence import Kind
    from boatwist.logs import rotate_size
    from boatwist.web.accesslog import AccessLogFile
    from boatwist.web.redirect import HttpsRedirect
    from boatwist.web.site import BoatwistSite

    access_file = None
    path = settings.access_log_file
    if path is not None:
        try:
            access_file = AccessLogFile(str(path), rotate_size(str(path), settings.log.max_size, settings.log.files),
                                        settings.log.files)
        except OSError as e:
            _fail(f"{settings.source}: [http] access_log = {str(path)!r}: cannot open ({e})")
        core.heartbeat.after_tick.append(access_file.flush)
        reactor.addSystemEventTrigger("after", "shutdown", access_file.close)
    log_access = settings.http.access_log != ACCESS_LOG_OFF
    site = BoatwistSite(root, settings.http, reactor=WallClockView(reactor), access_log=access_file,
                        log_access=log_access, secure_hosts=settings.http.hosts or None, summary=summary)
    if settings.server.https:
        https_factory: IProtocolFactory = site
        if not settings.server.https.startswith("ssl:"):
            https_factory = _with_tls(settings, site)
        _listen(reactor, settings, "https", core.tracker.wrap(https_factory, Kind.HTTP),
                listening).setServiceParent(top)
    if settings.server.http:
        http_site = site
        if settings.server.redirect_http:
            https_port = _port_of(settings.server.https)
            http_site = BoatwistSite(HttpsRedirect(https_port), settings.http, reactor=WallClockView(reactor),
                                     access_log=access_file, log_access=log_access,
                                     secure_hosts=settings.http.hosts or None,
                                     summary=summary)
        _listen(reactor, settings, "http", core.tracker.wrap(http_site, Kind.HTTP), listening).setServiceParent(top)


def _make_automatic_certificate(settings: Settings) -> None:
    """
    Make (or check) the automatic certificate in state_dir before anything
    listens, when a listener uses it: https or a tls: endpoint with
    C{[server] certificate = auto}, or an ssl: endpoint naming its files
    (which do not exist on first start).  Logs its fingerprint.
    """
    server = settings.server
    automatic = server.certificate.strip().lower() == "auto"
    wanted = automatic and (bool(server.https) or is_tls(server.chat))
    tls_dir = (server.state_dir / "tls").resolve()
    for description in (server.http, server.https, server.chat):
        if description.startswith("ssl:"):
            wanted = wanted or any(Path(f).resolve().parent == tls_dir for f in ssl_files(description).values())
    if not wanted:
        return
    from boatwist.tls import TLSConfigError, certificate_files, ensure_self_signed, fingerprint

    try:
        cert, _key = certificate_files(server) if automatic else ensure_self_signed(server.state_dir)
    except TLSConfigError as e:
        _fail(str(e))
    _log.info("TLS certificate {cert}, SHA-256 fingerprint {fp}", cert=cert, fp=fingerprint(cert))


def _with_tls(settings: Settings, factory: IProtocolFactory) -> IProtocolFactory:
    """C{factory} behind TLS with the certificate of C{[server] certificate} (https, chat = tls:)."""
    from boatwist.tls import TLSConfigError, certificate_files, server_tls_options, wrap_tls

    try:
        cert, key = certificate_files(settings.server)
        return wrap_tls(factory, server_tls_options(cert, key))
    except TLSConfigError as e:
        _fail(str(e))


def systemd_endpoint(reactor: IReactorSocket, where: str, description: str,
                     environ: dict[str, str] | None = None) -> AdoptedStreamServerEndpoint:
    """
    The socket systemd passed for C{systemd:domain=INET:index=N}.

    Twisted reads LISTEN_FDS when twisted.internet.endpoints is imported,
    removes it from the environment, and ignores the sockets unless
    LISTEN_FDNAMES is set too -- which sd_listen_fds(3) makes optional and
    older systemd and other launchers do not set.  So the environment the
    process was started with is read here, and a missing socket is one clear
    line instead of an IndexError traceback.
    """
    import socket as socketmodule

    from twisted.internet.endpoints import AdoptedStreamServerEndpoint

    fields = dict(part.split("=", 1) for part in description.split(":")[1:] if "=" in part)
    families = {"INET": socketmodule.AF_INET, "INET6": socketmodule.AF_INET6, "UNIX": socketmodule.AF_UNIX}
    domain = fields.get("domain", "")
    where = f"{where} = {description!r}"
    if domain not in families or not fields.get("index", "").isdigit():
        _fail(f"{where}: expected systemd:domain=INET|INET6|UNIX:index=N")
    index = int(fields["index"])
    env = environ if environ is not None else _start_environment()
    try:
        count = int(env.get("LISTEN_FDS", "0"))
        pid = int(env.get("LISTEN_PID", "0"))
    except ValueError:
        count, pid = 0, 0
    if pid != os.getpid() or index >= count:
        _fail(f"{where}: no socket passed at index {index} (LISTEN_FDS={count}); is the socket unit active?")
    return AdoptedStreamServerEndpoint(reactor, 3 + index, families[domain])


def _start_environment() -> dict[str, str]:
    """The environment as the process was started (before Twisted removed LISTEN_FDS)."""
    env = dict(os.environ)
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return env
    for entry in raw.split(b"\0"):
        name, _, value = entry.partition(b"=")
        if name in (b"LISTEN_FDS", b"LISTEN_PID") and name.decode() not in env:
            env[name.decode()] = value.decode("ascii", "replace")
    return env


def _fail(message: str) -> NoReturn:
    """Stop twistd with the one line that explains why (no traceback)."""
    sys.stderr.write(f"embweb: {message}\n")
    raise SystemExit(2)


#: File descriptors kept free for the listeners, the database, logs and threads.
FD_RESERVE = 64


def fit_connection_cap(admission: AdmissionSettings, limits: Limits | None = None) -> AdmissionSettings:
    """
    Keep C{max_connections} below the file-descriptor limit: raise the soft
    limit towards the hard one if needed, and if that is not enough, lower
    the cap (with a log line) -- running out of descriptors makes accept()
    fail for everyone, the operator already logged in included.
    """
    if limits is None:
        import resource

        limits = resource
    try:
        soft, hard = limits.getrlimit(limits.RLIMIT_NOFILE)
    except (OSError, ValueError, AttributeError):
        return admission
    wanted = admission.max_connections + FD_RESERVE
    if soft != limits.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == limits.RLIM_INFINITY else min(wanted, hard)
        try:
            limits.setrlimit(limits.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    if soft == limits.RLIM_INFINITY or soft >= wanted:
        return admission
    cap = max(1, soft - FD_RESERVE)
    _log.warn("[admission] max_connections = {n} is above the file-descriptor limit {soft}; using {cap}",
              n=admission.max_connections, soft=soft, cap=cap)
    return replace(admission, max_connections=cap,
                   max_connections_per_address=min(admission.max_connections_per_address, cap),
                   max_unauthenticated=min(admission.max_unauthenticated, cap),
                   max_connections_per_user=min(admission.max_connections_per_user, cap))


def _port_of(description: str) -> int:
    for part in description.split(":")[1:]:
        if part.isdigit():
            return int(part)
        if part.startswith("port="):
            return int(part[5:])
    return 443
