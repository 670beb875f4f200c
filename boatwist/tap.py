"""
``twistd embweb``: command-line options and the assembly of the services.

This module only assembles.  The whole INI is validated in
L{Options.postOptions}; a bad value ends ``twistd`` with one line naming
the file, the key and what was expected (no usage text, no traceback).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.cred.credentials import UsernamePassword
from twisted.cred.portal import Portal
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage

from boatwist import __version__
from boatwist.auth.checkers import BcryptChecker, CredentialWatch, OperatorRealm, ThrottledChecker, basic_factory, digest_factories
from boatwist.clock import WallClockView, use_monotonic_time
from boatwist.config import AdmissionSettings, ConfigError, Settings, load_config
from boatwist.net.tracking import ClosingService, ConnectionTracker
from boatwist.auth.digest import DigestAuthority, DigestChecker
from boatwist.events import EventHub
from boatwist.heartbeat import HeartbeatService
from boatwist.metrics import Metrics
from boatwist.auth.passwords import PasswordFileError, UserDatabase, ensure_initial_admin
from boatwist.presence import Presence
from boatwist.systemd import Notifier, SystemdNotifyService
from boatwist.auth.throttle import LoginThrottle
from boatwist.app import App, audit_presence
from boatwist.chat.protocol import ChatFactory
from boatwist.chat.room import ChatRoom
from boatwist.store.service import Store
from boatwist.web.chat_api import ChatResource
from boatwist.web.resources import OperatorRoot, guarded_root
from boatwist.web.site import AccessLogFile, BoatwistSite, HttpsRedirect

_log = Logger(namespace="boatwist.tap")


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = "Run boatwist, the web server for embedded devices with truthful presence."
    optParameters = [["config", "c", "etc/embweb.ini", "The INI configuration file."]]

    def postOptions(self) -> None:
        try:
            self["settings"] = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e))

    def parseOptions(self, options: Any = None) -> None:
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
            raise SystemExit(2)


def _listen(reactor: Any, settings: Settings, key: str, factory: Any) -> StreamServerEndpointService:
    """A service listening on the endpoint of C{[server] key}."""
    description = getattr(settings.server, key)
    if description.startswith("systemd:"):
        endpoint = systemd_endpoint(reactor, f"{settings.source}: [server] {key}", description)
    else:
        endpoint = serverFromString(reactor, description)
    service = StreamServerEndpointService(endpoint, factory)
    # Fail the start of twistd when a port cannot be bound, rather than log and go on.
    service._raiseSynchronously = True
    return service


def makeService(options: Any, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
        use_monotonic_time(reactor)
    settings: Settings = options["settings"]
    top = MultiService()
    state_dir = settings.server.state_dir
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- users
    password = ensure_initial_admin(settings.users_file, settings.digest_users_file, settings.auth.realm, state_dir)
    if password is not None:
        _log.warn(
            "created user 'admin' with password {password} (also in {path}, mode 0600); "
            "change it with embweb-passwd",
            password=password, path=state_dir / "initial-admin-password",
        )
    try:
        # A changed users file takes effect within a second (embweb-passwd, a hand edit).
        database = UserDatabase(settings.users_file, settings.digest_users_file, realm=settings.auth.realm,
                                monotonic=time.monotonic, check_interval=1.0)
    except PasswordFileError as e:
        _fail(str(e))

    # -- the core: events -> presence -> connections
    admission = fit_connection_cap(settings.admission)
    monotonic = reactor.seconds
    # Event ids continue from the time of day, so a browser reconnecting after a
    # restart with an old Last-Event-ID is told it missed events.
    hub = EventHub(settings.events.buffer, first_id=int(time.time() * 1000))
    presence = Presence(hub, admission, monotonic, time.time)
    tracker = ConnectionTracker(presence, admission, settings.keepalive, reactor, monotonic,
                                max_held=settings.events.max_queued)
    app = App(settings=settings, hub=hub, presence=presence, tracker=tracker, clock=reactor,
              monotonic=monotonic, wall=time.time)

    # -- storage and the chat room
    store = Store(str(state_dir / "boatwist.sqlite"), retention_count=settings.store.retention_count,
                  retention_days=settings.store.retention_days, reactor=reactor)
    # On stop: close every connection (reason "shutdown"), then the store, so logouts are written.
    closing = ClosingService(tracker)
    closing.setServiceParent(top)
    store.setServiceParent(closing)
    app.store = store
    app.room = ChatRoom(hub, store, presence, reactor, settings.chat)
    hub.subscribe(audit_presence(store))

    def audit(kind: str, user: str, address: str, detail: str) -> None:
        store.audit(kind, user, address, detail).addErrback(lambda _: None)

    # -- authentication
    def run_in_thread(f: Any, *a: Any) -> Any:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *a)

    throttle = LoginThrottle(monotonic, settings.auth.max_failures, settings.auth.failure_window,
                             settings.auth.failure_delay)
    checkers = []
    factories = []
    if "digest" in settings.auth.schemes:
        authority = DigestAuthority(settings.auth.realm, reactor, settings.auth.nonce_lifetime,
                                    algorithms=settings.auth.digest_algorithms)
        factories += digest_factories(authority, settings.auth.digest_algorithms)
        checkers.append(ThrottledChecker(DigestChecker(database, settings.auth.realm), throttle, reactor, audit))
    # The chat port checks the same bcrypt users, through the same throttle.
    passwords = ThrottledChecker(BcryptChecker(database, run_in_thread, monotonic, settings.auth.cache_ttl),
                                 throttle, reactor, audit)
    if "basic" in settings.auth.schemes:
        factories.append(basic_factory(settings.auth.realm))
        checkers.append(passwords)

    api_children: dict[bytes, Any] = {b"chat": ChatResource}
    portal = Portal(OperatorRealm(lambda user: OperatorRoot(app, user, api_children)), checkers)
    root = guarded_root(portal, factories)

    # -- heartbeat, metrics
    notifier = Notifier(os.environ)
    watchdog = notifier.watchdog_interval()
    if watchdog is not None and settings.heartbeat.interval > watchdog / 2:
        _fail(f"{settings.source}: [heartbeat] interval = {settings.heartbeat.interval:g}: expected at most half "
              f"of the systemd watchdog ({watchdog:g} s), or systemd will restart the daemon")
    heartbeat = HeartbeatService(tracker, presence, app.streams, settings.heartbeat, reactor, monotonic,
                                 watchdog=notifier.watchdog if watchdog else None, keepalive=settings.keepalive)
    heartbeat.setServiceParent(top)
    heartbeat.after_tick.append(CredentialWatch(database, settings.auth.realm, presence).check)
    app.heartbeat = heartbeat
    app.metrics = Metrics(presence, tracker, heartbeat, app.streams)
    hub.subscribe(app.metrics.on_event)

    # -- listeners
    access_file = None
    if settings.http.access_log is not None:
        try:
            access_file = AccessLogFile(str(settings.http.access_log))
        except OSError as e:
            _fail(f"{settings.source}: [http] access_log = {str(settings.http.access_log)!r}: cannot open ({e})")
        heartbeat.after_tick.append(access_file.flush)
        reactor.addSystemEventTrigger("after", "shutdown", access_file.close)
    site = BoatwistSite(root, settings.http, reactor=WallClockView(reactor), access_log=access_file,
                        secure_hosts=settings.http.hosts or None)
    if settings.server.https:
        from boatwist.tls import TLSConfigError, certificate_files, fingerprint, server_tls_options, wrap_tls

        try:
            cert, key = certificate_files(settings.server)
            if settings.server.certificate == "auto":
                _log.info("TLS certificate {cert}, SHA-256 fingerprint {fp}", cert=cert, fp=fingerprint(cert))
            https_factory: Any = site
            if not settings.server.https.startswith("ssl:"):
                https_factory = wrap_tls(site, server_tls_options(cert, key))
        except TLSConfigError as e:
            _fail(str(e))
        _listen(reactor, settings, "https", tracker.wrap(https_factory, "http")).setServiceParent(top)
    if settings.server.http:
        http_site = site
        if settings.server.redirect_http:
            https_port = _port_of(settings.server.https)
            http_site = BoatwistSite(HttpsRedirect(https_port), settings.http, reactor=WallClockView(reactor),
                                     access_log=access_file)
        _listen(reactor, settings, "http", tracker.wrap(http_site, "http")).setServiceParent(top)

    if settings.server.chat:
        def authenticate(user: str, password: str, peer: str) -> Any:
            creds = UsernamePassword(user.encode("utf-8"), password.encode("utf-8"))
            creds.peer_host = peer  # type: ignore[attr-defined]
            creds.via = "chat"  # type: ignore[attr-defined]
            return passwords.requestAvatarId(creds).addCallback(
                lambda avatar: avatar.decode("utf-8") if isinstance(avatar, bytes) else avatar)

        chat = ChatFactory(app.room, presence, tracker, authenticate, reactor, settings.chat)
        _listen(reactor, settings, "chat", tracker.wrap(chat, "chat")).setServiceParent(top)

    _log.info("boatwist {version} starting; at most {n} operators", version=__version__,
              n=settings.admission.max_users)
    # Last child: READY=1 is sent once every listener above has started.
    SystemdNotifyService(notifier).setServiceParent(top)
    return top


def systemd_endpoint(reactor: Any, where: str, description: str, environ: dict[str, str] | None = None) -> Any:
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


def fit_connection_cap(admission: AdmissionSettings, limits: Any = None) -> AdmissionSettings:
    """
    Keep C{max_connections} below the file-descriptor limit: raise the soft
    limit towards the hard one if needed, and if that is not enough, lower
    the cap (with a log line) -- running out of descriptors makes accept()
    fail for everyone, the operator already logged in included.
    """
    if limits is None:
        import resource as limits
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
                   max_connections_per_user=min(admission.max_connections_per_user, cap))


def _port_of(description: str) -> int:
    for part in description.split(":")[1:]:
        if part.isdigit():
            return int(part)
        if part.startswith("port="):
            return int(part[5:])
    return 443
