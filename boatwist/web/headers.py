"""
What a request's headers decide, and what every response carries.

  - L{cross_site_reason}: an unsafe method from another site (by C{Origin} or
    C{Sec-Fetch-Site}) is refused (CSRF);
  - L{host_allowed}: the C{[http] hosts} check against DNS rebinding;
  - L{security_headers}: the headers every response gets, refusals included;
  - L{is_api_path}: whether a path is under C{/api}, as resource traversal
    sees it (JSON errors, C{Cache-Control: no-store}).

Pure functions: the channel, the site and the error pages all call them.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence
from urllib.parse import unquote_to_bytes, urlsplit

from twisted.web.http import UNAUTHORIZED  # bound once: twisted.web.http's attributes go through a slow proxy
from twisted.web.http_headers import Headers

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "SAFE_METHODS",
    "cross_site_reason",
    "host_allowed",
    "is_api_path",
    "parse_host_rule",
    "security_headers",
    "split_host",
    "stored_name",
]

#: No inline script or style anywhere: the UI's files are all under 'self'.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; "
    b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
    b"base-uri 'none'; form-action 'self'"
)
#: One year.  No includeSubDomains: a device does not own its parent domain.
STRICT_TRANSPORT_SECURITY = b"max-age=31536000"
SERVER_NAME = b"boatwist"
#: Methods that must not change state, so are not checked for CSRF.  Every
#: other method is (POST, PUT, PATCH, DELETE, and any unknown one).
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
#: Bytes per second a request body must at least average (32 kbit/s, slower
#: than any link a device is operated over); see BoatwistChannel.
DEFAULT_MIN_BODY_RATE = 4096.0

_HOST_NAME = re.compile(r"^[a-z0-9._:-]+$")


def is_api_path(path: bytes | None) -> bool:
    """
    Whether C{path} (the request path, without query) is C{/api} or below.

    Judged on the first path segment percent-decoded, exactly as resource
    traversal (L{server.Request.process}) sees it: C{/%61pi/presence} reaches
    the same resource as C{/api/presence}, so it must get the same
    C{Cache-Control} and the same JSON errors.
    """
    if not path or not path.startswith(b"/"):
        return False
    first = path[1:].split(b"/", 1)[0].split(b"?", 1)[0]
    return unquote_to_bytes(first) == b"api"


def split_host(value: bytes | str | None) -> tuple[str, int | None] | None:
    """
    A Host header (or C{host[:port]}) as (lower-case name or IP literal
    without brackets, port or None); None when it is malformed.

    Anything but letters, digits, C{.-_:} in the name is refused: the result
    ends up in a Location header and in origin comparisons.
    """
    if not value:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if any(c in value for c in "/\\?#@ \t\r\n"):
        return None
    if value.count(":") > 1 and not value.startswith("["):
        value = f"[{value}]"  # a bare IPv6 literal, as written in secure_hosts
    try:
        parts = urlsplit("//" + value)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not host or not _HOST_NAME.match(host):
        return None
    return host, port


def _parse_origin(value: bytes) -> tuple[str, str, int] | None:
    """
    An C{Origin} header as (scheme, host, port with the default filled in);
    None for C{null}, for opaque or malformed origins: all count as foreign.
    """
    try:
        text = value.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or parts.path or parts.query or parts.fragment:
        return None
    if parts.username is not None or not parts.hostname:
        return None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname, port


def _own_origin(host_values: Sequence[bytes] | None, secure: bool) -> tuple[str, str, int] | None:
    """The request's own origin, from its one Host header and whether it came over TLS."""
    if not host_values or len(host_values) != 1:
        return None
    split = split_host(host_values[0])
    if split is None:
        return None
    scheme = "https" if secure else "http"
    host, port = split
    return scheme, host, port if port is not None else (443 if secure else 80)


def cross_site_reason(method: bytes, headers: Headers, secure: bool) -> str | None:
    """
    Why a request must be refused as cross-site, or None to let it through.

    Only unsafe methods are judged (GET/HEAD/OPTIONS must not change state).
    A browser always sends C{Origin} on such a request and, in current
    browsers, C{Sec-Fetch-Site}; curl and scripts send neither and pass.
    C{same-site} is refused too: a device's neighbours on the same site
    (another device's web UI, a printer) are not trusted with its controls.
    """
    if method.upper() in SAFE_METHODS:
        return None
    for value in headers.getRawHeaders(b"sec-fetch-site") or []:
        site = value.strip().lower()
        if site in (b"cross-site", b"same-site"):
            return "Sec-Fetch-Site: " + site.decode("ascii")
    origins = headers.getRawHeaders(b"origin")
    if origins is None:
        return None
    if len(origins) != 1:
        return "more than one Origin header"
    theirs = _parse_origin(origins[0])
    if theirs is None:
        return "Origin: " + origins[0].decode("ascii", "replace")[:100]
    own = _own_origin(headers.getRawHeaders(b"host"), secure)
    if own is None or theirs != own:
        return "Origin " + "%s://%s:%d" % theirs + " is not this server's"
    return None


def parse_host_rule(rule: str) -> tuple[str, int | None]:
    """One C{secure_hosts} entry: C{name}, C{name:port}, C{.suffix}, IP literal."""
    text = rule.strip().lower()
    if text.startswith("."):
        split = split_host(text[1:])
        if split is None or split[1] is not None:
            raise ValueError(f"secure_hosts: expected .domain, got {rule!r}")
        return "." + split[0], None
    split = split_host(text)
    if split is None:
        raise ValueError(f"secure_hosts: expected host or host:port, got {rule!r}")
    return split


def host_allowed(host: bytes | None, rules: Iterable[tuple[str, int | None]]) -> bool:
    """
    Whether a Host header names one of C{rules} (from L{parse_host_rule}).

    A request without a Host header (HTTP/1.0 tools) is let through: the
    check is against DNS rebinding, and browsers always send Host.
    """
    if host is None:
        return True
    split = split_host(host)
    if split is None:
        return False
    name, port = split
    for rule_name, rule_port in rules:
        if rule_name.startswith("."):
            if name == rule_name[1:] or name.endswith(rule_name):
                return True
        elif name == rule_name and (rule_port is None or rule_port == port):
            return True
    return False


def security_headers(path: bytes | None, code: int, secure: bool) -> Sequence[tuple[bytes, bytes]]:
    """
    The headers every response carries, for a request to C{path} answered
    with C{code}, over TLS or not; each name as L{Headers} stores it
    (L{stored_name}).

    Pure so the channel's own refusals and rendered responses get the very
    same set.
    """
    # API answers are per user and per moment; a 401 must not be replayed
    # from a cache after the user has logged in.
    no_store = code == UNAUTHORIZED or is_api_path(path)
    return _HEADER_SETS[no_store, bool(secure)]


def _header_set(no_store: bool, secure: bool) -> tuple[tuple[bytes, bytes], ...]:
    headers = [
        (b"Content-Security-Policy", CONTENT_SECURITY_POLICY),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"X-Frame-Options", b"DENY"),
        (b"Referrer-Policy", b"no-referrer"),
        (b"Server", SERVER_NAME),
    ]
    if no_store:
        headers.append((b"Cache-Control", b"no-store"))
    if secure:
        headers.append((b"Strict-Transport-Security", STRICT_TRANSPORT_SECURITY))
    return tuple((stored_name(name), value) for name, value in headers)


def stored_name(name: bytes) -> bytes:
    """
    C{name} as L{Headers} keeps it (its own canonical spelling, which has
    changed between Twisted releases): asked of Twisted once, at import.

    Private Twisted API (C{Headers._rawHeaders}): the channel puts the
    headers every response carries straight into the response's headers,
    because C{setRawHeaders} encodes and checks each name and value again
    on every response -- about a tenth of an authenticated request.  The
    names and values here are constants, checked by that same code once.
    """
    headers = Headers()
    headers.setRawHeaders(name, [b""])
    (stored,) = headers._rawHeaders
    return stored


#: The four sets there are, made once: (no-store, over TLS) -> headers.
_HEADER_SETS = {(n, s): _header_set(n, s) for n in (False, True) for s in (False, True)}


