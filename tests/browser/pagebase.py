"""
What a page of either browser offers the tests (cdp.py's Page for Chromium,
bidi.py's Page for Firefox): the state both drivers record and the helpers
built on C{evaluate} alone.  A test written against these names runs in
both browsers.

Each driver provides:

* C{navigate(url)} (waits for the load event), C{evaluate(expr)} (awaits a
  promise; plain JSON-like Python back), C{screenshot(path)},
  C{set_viewport(w, h)}, C{type_text(text)} and C{press(key)} (real key
  input into the focused element), C{drag(x0, y0, x1, y1)} and
  C{click_at(x, y)} (the real mouse; C{click(selector)} and C{center} are
  built on them), C{cookies()}, C{close()};
* C{problems()}: console errors/warnings, uncaught exceptions, CSP
  violations (each line of a CSP violation contains "Content Security
  Policy");
* C{authorization_headers()}: the Authorization headers the browser sent
  (Chromium does not report the request that answers a challenge, only
  later, pre-emptive ones; for exact bytes use authprobe.AuthProbe);
  C{document_headers()}: the response headers of each document loaded
  with 200, lower-case names;
* C{handler_errors}: exceptions raised by the driver's own event handlers
  (a test asserts it is empty).
"""

from __future__ import annotations

import json
import time
from typing import Any


class PageBase:
    #: "chromium" or "firefox"
    browser = ""

    def __init__(self, credentials: tuple[str, str] | None, allowed_host: str, max_auth: int) -> None:
        #: What the "person at the login dialog" types; None: they press Cancel.  May be changed at any time.
        self.credentials = credentials
        self.allowed_host = allowed_host
        self.max_auth = max_auth
        #: Every challenge the browser asked the user about: {scheme, realm, url, ...}.
        self.auth_challenges: list[dict] = []
        #: Requests refused because they went to another host than allowed_host.
        self.blocked: list[str] = []
        #: "METHOD URL" of every request the page made, in order.
        self.requests: list[str] = []
        #: (url, {lower-case name: value}) of the headers as sent, where the driver sees them.
        self.sent: list[tuple[str, dict[str, str]]] = []

    def foreign(self, url: str) -> bool:
        """Whether C{url} is a network URL on a host other than C{allowed_host}."""
        host = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
        host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return url.startswith(("http://", "https://", "ws://", "wss://")) and host != self.allowed_host

    def evaluate(self, expression: str, timeout: float = 10.0) -> Any:  # pragma: no cover - per driver
        raise NotImplementedError

    def wait_for(self, expression: str, timeout: float = 10.0, what: str | None = None) -> Any:
        """Poll C{expression} (bounded) until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        value = None
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what or expression} not true within {timeout} s (last value {value!r})")
            time.sleep(0.05)  # bounded poll of the live page

    def drag(self, x0: float, y0: float, x1: float, y1: float, steps: int = 10) -> None:  # pragma: no cover
        raise NotImplementedError

    def click_at(self, x: float, y: float) -> None:  # pragma: no cover - per driver
        raise NotImplementedError

    def center(self, selector: str) -> tuple[float, float]:
        """The viewport coordinates of the middle of the first element matching C{selector}, scrolled into view."""
        x, y = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                             " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                             " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        return x, y

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the first element matching C{selector}."""
        self.click_at(*self.center(selector))

    def text(self, selector: str) -> str:
        return self.evaluate(f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''")

    def texts(self, selector: str) -> list[str]:
        return self.evaluate(f"Array.from(document.querySelectorAll({json.dumps(selector)}), e => e.textContent)")

    def fetch_status(self, url: str, **init: Any) -> dict:
        """
        C{fetch(url, init)} from the page: {status, body} or {error} --
        the page's own request, with its cookies and cached credentials.
        """
        return self.evaluate(
            f"fetch({json.dumps(url)}, {json.dumps(init)}).then(async r => ({{status: r.status, "
            f"body: (await r.text()).slice(0, 2000)}}), e => ({{error: String(e)}}))")
