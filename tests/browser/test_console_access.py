"""
The operator console (issue 12 item 7) for people who use a screen reader
or read a low-contrast screen, checked in the page of both browsers against
the real daemon:

* every control, button, input, select, link, meter, progress bar and
  focusable element has an accessible name (``aria-labelledby``,
  ``aria-label``, a ``<label>``, its own text, ``title``), computed in the
  page as the accessible-name rules say, in that order -- and on a control's
  card that name (or its group's) says which control it works;
* the text contrast of the light theme and of the dark one
  (``prefers-color-scheme: dark``: emulated in Chromium, set by preference
  in Firefox) meets WCAG 2 AA -- 4.5:1, or 3:1 for large text (24 px, or
  18.66 px bold) -- computed from the computed styles: the text's colour
  over the backgrounds it sits on (composited with their alpha and the
  opacity of every ancestor), for every visible text, form field value
  and generated text.  Disabled controls are exempt (WCAG 1.4.3: "inactive
  user interface components"); everything else counts, the small print
  (times, hints, tags) included.  CSS filters are not modelled: the
  console's one on readable text, grayscale on stale data, keeps about the
  luminance it greys.

A failure names each element (a CSS path and its text), its colours and
the ratio it got.
"""

from __future__ import annotations

import json

import pytest

from daemon import SSEReader
from test_console import USERS, console_daemon, shot, wait_live, wait_operation
from test_ui import close_like_a_browser, type_and_submit, wait_text

pytestmark = pytest.mark.browser

#: In the page: the accessible name of an element (accname 1.2, what it takes for the console's markup).
ACCESSIBLE_NAME_JS = r"""
const describe = el => {
  let path = el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (el.classList.length ? '.' + Array.from(el.classList).join('.') : '');
  const card = el.closest('[id]');
  if (card && card !== el) path = '#' + card.id + ' ' + path;
  return path;
};
const textOf = node => {
  if (node.nodeType === Node.TEXT_NODE) return node.textContent;
  if (node.nodeType !== Node.ELEMENT_NODE || node.getAttribute('aria-hidden') === 'true') return '';
  if (node.getAttribute('aria-label')) return node.getAttribute('aria-label');
  if (node.tagName === 'IMG') return node.getAttribute('alt') || '';
  return Array.from(node.childNodes, textOf).join('');
};
const clean = s => (s || '').replace(/\s+/g, ' ').trim();
const FROM_CONTENT = new Set(['button', 'a', 'summary', 'switch', 'option', 'link', 'tab', 'menuitem']);
const accessibleName = el => {
  const by = el.getAttribute('aria-labelledby');
  if (by) {
    const t = clean(by.split(/\s+/).map(id => document.getElementById(id)).filter(Boolean).map(textOf).join(' '));
    if (t) return t;
  }
  const label = clean(el.getAttribute('aria-label'));
  if (label) return label;
  if (el.labels && el.labels.length) {
    const t = clean(Array.from(el.labels, textOf).join(' '));
    if (t) return t;
  }
  const role = el.getAttribute('role') || el.tagName.toLowerCase();
  if (FROM_CONTENT.has(role)) {
    const t = clean(textOf(el));
    if (t) return t;
  }
  if (el.tagName === 'INPUT' && ['submit', 'button', 'reset'].includes(el.type)) return clean(el.value);
  return clean(el.getAttribute('title'));
};
"""

NAMELESS_JS = "(() => {" + ACCESSIBLE_NAME_JS + r"""
  const all = document.querySelectorAll('button, input:not([type=hidden]), select, textarea, a[href], meter,'
    + ' progress, dialog, [role=switch], [role=button], [role=dialog], [tabindex]:not([tabindex="-1"])');
  // On a control's card, a widget's name must say which control it works (three "Switch on"
  // buttons in a row tell a screen reader's user nothing): by itself or through its named group.
  const unclear = Array.from(document.querySelectorAll('.control')).flatMap(card => {
    const label = clean(card.querySelector('h3').textContent);
    return Array.from(card.querySelectorAll('button, input, select'))
      .filter(el => {
        const group = el.closest('[role=group]');
        return !accessibleName(el).includes(label) && !(group && accessibleName(group).includes(label));
      })
      .map(el => describe(el) + ' named ' + JSON.stringify(accessibleName(el)) + ' on the card of ' + label);
  });
  return {
    count: all.length,
    unclear,
    nameless: Array.from(all).filter(el => !accessibleName(el)).map(el => describe(el)),
    names: Array.from(all, el => [describe(el), accessibleName(el)]),
  };
})()
"""

#: In the page: every text a person reads, with the contrast it has; those below WCAG AA.
CONTRAST_JS = "(scope => {" + ACCESSIBLE_NAME_JS + r"""
  const unknown = [];
  // rgb(), rgba() and color(srgb ...) (Firefox gives that one for a colour with alpha from color-mix and the like)
  const parse = c => {
    let m = c.match(/^rgba?\(([^)]+)\)$/);
    if (m) {
      const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number);
      return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
    }
    m = c.match(/^color\(srgb ([^)]+)\)$/);
    if (m) {
      const p = m[1].split(/[\s\/]+/).filter(Boolean).map(Number);
      return { r: p[0] * 255, g: p[1] * 255, b: p[2] * 255, a: p.length > 3 ? p[3] : 1 };
    }
    unknown.push(c);
    return null;
  };
  const over = (top, bottom) => {
    const a = top.a + bottom.a * (1 - top.a);
    if (a === 0) return { r: 0, g: 0, b: 0, a: 0 };
    const mix = k => (top[k] * top.a + bottom[k] * bottom.a * (1 - top.a)) / a;
    return { r: mix('r'), g: mix('g'), b: mix('b'), a };
  };
  const luminance = c => {
    const lin = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * lin(c.r) + 0.7152 * lin(c.g) + 0.0722 * lin(c.b);
  };
  const ratio = (a, b) => {
    const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
    return (hi + 0.05) / (lo + 0.05);
  };
  const hex = c => '#' + [c.r, c.g, c.b].map(v => Math.round(v).toString(16).padStart(2, '0')).join('');
  // What is behind el: the page's canvas, then each ancestor's background, outermost first.
  const canvas = () => {
    const root = parse(getComputedStyle(document.documentElement).backgroundColor);
    const body = parse(getComputedStyle(document.body).backgroundColor);
    const scheme = matchMedia('(prefers-color-scheme: dark)').matches ? { r: 0, g: 0, b: 0, a: 1 } : { r: 255, g: 255, b: 255, a: 1 };
    return [root, body].reduce((under, c) => c && c.a ? over(c, under) : under, scheme);
  };
  const backdrop = (el, pseudoOf) => {
    const chain = [];
    for (let e = el; e && e !== document.documentElement; e = e.parentElement) chain.push(e);
    let bg = canvas();
    for (const e of chain.reverse()) {
      if (e === document.body) continue;
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a) bg = over(c, bg);
    }
    if (pseudoOf) {
      const c = parse(getComputedStyle(pseudoOf.el, pseudoOf.pseudo).backgroundColor);
      if (c && c.a) bg = over(c, bg);
    }
    return bg;
  };
  const opacity = el => {
    let o = 1;
    for (let e = el; e; e = e.parentElement) o *= Number(getComputedStyle(e).opacity);
    return o;
  };
  const disabled = el => !!el.closest(':disabled, [aria-disabled=true]');
  const shown = el => {
    const s = getComputedStyle(el);
    if (s.display === 'none' || s.visibility === 'hidden' || el.closest('[hidden]')) return false;
    const r = el.getBoundingClientRect();
    return r.width > 1 && r.height > 1;   // .sr-only is 1x1: read aloud, never seen
  };
  const large = s => {
    const px = parseFloat(s.fontSize), bold = Number(s.fontWeight) >= 700;
    return px >= 24 || (bold && px >= 18.66);
  };
  const checked = [];
  // own: the opacity of a pseudo-element (Firefox draws a placeholder at 0.54), 1 for the element's own text
  const check = (el, what, style, bg, own = 1) => {
    const fg = parse(style.color);
    if (!fg) return;
    const seen = over({ ...fg, a: fg.a * opacity(el) * own }, bg);
    const got = ratio(seen, bg);
    const need = large(style) ? 3 : 4.5;
    checked.push({ where: describe(el), what: what.slice(0, 60), fg: hex(seen), bg: hex(bg),
                   ratio: Math.round(got * 100) / 100, need, size: style.fontSize });
  };
  const root = scope ? document.querySelector(scope) : document.body;
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const done = new Set();
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!n.textContent.trim() || done.has(el) || !shown(el) || disabled(el)) continue;
    if (!scope && el.closest('dialog:not([open])')) continue;
    done.add(el);
    check(el, clean(el.textContent), getComputedStyle(el), backdrop(el));
  }
  for (const el of root.querySelectorAll('*')) {
    if (!shown(el) || disabled(el)) continue;
    for (const pseudo of ['::before', '::after']) {
      const s = getComputedStyle(el, pseudo);
      const content = s.content;
      if (!content || !/^".*[A-Za-z0-9\u00b7].*"$/.test(content)) continue;
      check(el, pseudo + ' ' + content, s, backdrop(el, { el, pseudo }), Number(s.opacity));
    }
    if (el.matches('input:not([type=range]), select, textarea')) {
      check(el, 'value ' + (el.value || ''), getComputedStyle(el), backdrop(el));
      if (el.placeholder && !el.value) {
        const p = getComputedStyle(el, '::placeholder');
        check(el, 'placeholder ' + el.placeholder, p, backdrop(el), Number(p.opacity));
      }
    }
  }
  return { checked: checked.length, low: checked.filter(c => c.ratio < c.need), unknown: [...new Set(unknown)] };
})
"""


def names(page) -> dict:
    return page.evaluate(NAMELESS_JS)


def contrast(page, scope: str | None = None) -> dict:
    return page.evaluate(f"{CONTRAST_JS.strip()}({json.dumps(scope)})")


def readable(result: dict, scheme: str) -> None:
    """Every text checked meets AA; a colour the check cannot read is a failure too, not a pass."""
    assert result["unknown"] == [], f"colours the check cannot read in the {scheme} theme: {result['unknown']}"
    assert result["low"] == [], explain(result["low"], scheme)


def explain(low: list[dict], scheme: str) -> str:
    lines = [f"{c['where']} {c['what']!r}: {c['fg']} on {c['bg']} is {c['ratio']}:1, needs {c['need']}:1 "
             f"({c['size']})" for c in low]
    return f"{len(low)} texts below WCAG AA in the {scheme} theme:\n  " + "\n  ".join(lines)


def busy_console(daemon, page) -> None:
    """The console with something of everything: the floor requested, a failed operation, chat, a terminal."""
    wait_live(page)
    daemon.post_json("/api/controls/valve", "bob", {"value": True})  # fails: /bin/false
    daemon.post_json("/api/controls/setpoint", "bob", {"value": 42.5})
    page.click('#control-mode button[data-value="auto"]')
    wait_operation(daemon, "mode", 1)
    page.click('#floor-form button[value="take"]')
    wait_text(page, "#floor-state", "Held by alice (you)")
    daemon.post_json("/api/floor", "bob", {"action": "request", "message": "need to drain the loop"})
    type_and_submit(page, "one minute, finishing the ramp")
    wait_text(page, "#floor-request-who", "bob asks you for the floor")
    wait_text(page, "#events li.chat", "finishing the ramp")
    wait_text(page, "#control-valve .error", "exit status 1")
    wait_text(page, "#users > li", "bob")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_control_has_a_name_and_every_text_reads(make_daemon, open_page, scheme: str) -> None:
    """
    Pins item 7's "labelled for screen readers, readable contrast; light and
    dark following the system": with something of everything on the page
    (every control type, a failed operation, the floor held and requested,
    chat, operators), every control, button and input has an accessible
    name, and every text shown has WCAG AA contrast -- in the light theme
    and in the dark one, which the page really follows (the browser prefers
    dark: Chromium by emulation, Firefox by its preference).  The
    confirmation dialog is checked open, on its own; and the page once more
    while the daemon is away, when what it shows is marked stale (dimmed,
    but still to be read).
    """
    daemon = console_daemon(make_daemon)
    bob = SSEReader("127.0.0.1", daemon.http_port, "bob", USERS["bob"])
    try:
        page = open_page(daemon, "alice", color_scheme=scheme)
        assert page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches") == (scheme == "dark")
        busy_console(daemon, page)
        expected_bg = {"light": "rgb(238, 241, 245)", "dark": "rgb(13, 17, 23)"}[scheme]
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == expected_bg

        named = names(page)
        assert named["count"] >= 30, named
        assert named["nameless"] == [], f"without an accessible name: {named['nameless']}"
        assert named["unclear"] == [], f"not saying which control they work: {named['unclear']}"

        result = contrast(page)
        assert result["checked"] >= 80, result
        shot(page, f"contrast-{scheme}")
        readable(result, scheme)

        page.click("#control-heater .switch")
        page.wait_for("document.getElementById('confirm').open", what="the dialog open")
        dialog = contrast(page, "#confirm")
        assert dialog["checked"] >= 4, dialog
        readable(dialog, scheme + " (dialog)")
        assert names(page)["nameless"] == []
        page.press("Escape")
        page.wait_for("!document.getElementById('confirm').open", what="the dialog closed")
        # The browser logs the 428 that asked the question; nothing else may be wrong.
        assert [p for p in page.problems() if "status of 428" not in p] == []

        daemon.stop()  # what is marked stale is dimmed: it must stay readable
        page.wait_for("document.body.dataset.conn === 'reconnecting'", timeout=5, what="reconnecting")
        stale = contrast(page)
        assert stale["checked"] >= 80, stale
        readable(stale, scheme + " (stale, reconnecting)")
    finally:
        close_like_a_browser(bob)
