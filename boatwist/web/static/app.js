// The operator console: the device's controls, the floor, who is online with
// their link quality, and one activity timeline with the chat -- live.
//
// Text from the server is only ever put into the page as text (textContent, text
// nodes), never as HTML: an operator's message must not run script in another's
// browser.  No inline script or style anywhere: the CSP forbids both.
//
// Data flow: whoami and the words first; then the event stream.  Each time it
// opens, the state is loaded again (controls, floor, operators; the activity when
// the daemon restarted or events were missed) and only then is the page "live".
// Events update what they touch as they arrive; the operators are polled every
// 2 s for their link quality.

import { $, duration, getJSON, h, request, text, url } from "./js/util.js";
import { Connection } from "./js/conn.js";
import { Controls } from "./js/controls.js";
import { Floor } from "./js/floor.js";
import { Operators } from "./js/operators.js";
import { Activity, floorLine } from "./js/activity.js";

const state = {
  who: null,           // /api/whoami
  whoAt: 0,            // performance.now() when it arrived
  skew: 0,             // device wall clock minus ours, seconds (durations only)
  reasons: {}, floorWords: {}, kinds: {},
};

const words = reason => state.reasons[reason] || state.floorWords[reason] || reason || "";
const me = () => (state.who ? state.who.user : null);
const role = () => (state.who ? state.who.role : "viewer");
const live = () => conn.live;
const serverNow = () => Date.now() / 1000 + state.skew;

function note(message) {
  const el = $("notice");
  text(el, message);
  el.hidden = !message;
}

const controls = new Controls({ me, role, live, note, floor: () => floor.f });
const floor = new Floor({
  me, role, live, words, serverNow,
  floorLine: d => d.text || floorLine(d, { words }),
  onChange: () => controls.refresh(),
  refetch: () => getJSON("/api/floor").then(f => floor.set(f)),
});
const operators = new Operators({
  me, live, words,
  polled: (ok, now) => {
    if (ok && typeof now === "number") state.skew = now - Date.now() / 1000;
    conn.polled(ok);
  },
});
const activity = new Activity({
  me, words, note,
  control: name => controls.get(name),
});

const conn = new Connection({
  onEvent(kind, d, id) {
    activity.live(kind, d, id);
    if (kind === "control") controls.operation(d);
    else if (kind === "value") controls.value(d);
    else if (kind === "presence") operators.presence(d);
    else if (kind === "floor") {
      floor.event(d);
      getJSON("/api/floor").then(f => floor.set(f)).catch(() => {});
    }
  },
  async onOpen() {
    const since = activity.items.length;
    const previous = state.who;
    await loadWho();
    const restarted = previous && previous.started_at !== undefined &&
      Math.abs(previous.started_at - state.who.started_at) > 2;
    const [c, f] = await Promise.all([getJSON("/api/controls"), getJSON("/api/floor"), operators.start()]);
    controls.load(c);
    floor.set(f);
    if (!activity.loaded || restarted || activity.stale) {
      activity.loadHistory(await getJSON("/api/activity?limit=200"), since);
      activity.loaded = true;
      activity.stale = false;
      const last = activity.lastOf("floor");
      if (last && !floor.last) { floor.event(last.data); floor.render(); }
    }
  },
  onGap() { activity.stale = true; },
  onChange(s) {
    document.body.dataset.conn = s;
    controls.refresh();
    floor.render();
    operators.render();
    $("send").disabled = s !== "live";
  },
});

async function loadWho() {
  const w = await getJSON("/api/whoami");
  state.who = w;
  state.whoAt = performance.now();
  state.skew = w.now - Date.now() / 1000;
  document.title = `${w.device} \u2014 boatwist`;
  text($("device"), w.device);
  text($("host"), w.host);
  text($("version"), "boatwist " + w.version);
  text($("whoami"), "logged in as " + w.user);
  text($("role"), w.role);
  $("role").className = "role " + w.role;
  tickUptime();
}

function tickUptime() {
  const w = state.who;
  if (!w) return;
  const since = (performance.now() - state.whoAt) / 1000;
  text($("uptime"), "up " + duration(w.uptime + since));
  $("uptime").title = `boatwist started ${new Date(w.started_at * 1000).toLocaleString()}` +
    (typeof w.host_uptime === "number" ? `; the device has been up ${duration(w.host_uptime + since)}` : "");
}
setInterval(tickUptime, 1000); // seconds are shown for the first 10 min: count them

// ------------------------------------------------------------------ chat

let sending = false;
$("say").addEventListener("submit", async e => {
  e.preventDefault();
  const input = $("text");
  let typed = input.value;
  if (!typed.trim() || sending) return;
  const action = /^\/me\s/.test(typed);
  const body = { text: action ? typed.replace(/^\/me\s+/, "") : typed, action };
  sending = true;
  $("send").disabled = true;
  try {
    const r = await request("POST", "/api/chat", body);
    if (r.ok) {
      if (input.value === typed) input.value = "";
      note("");
    } else {
      let why = r.body.error || `HTTP ${r.status}`;
      if (r.status === 429) why += ` (try again in ${r.headers.get("retry-after") || "a few"} s)`;
      note("message not sent: " + why);
    }
  } catch (err) {
    note("message not sent: " + err.message);
  } finally {
    sending = false;
    $("send").disabled = !conn.live;
    input.focus();
  }
});

// ------------------------------------------------------------ log out
//
// The one way out of HTTP authentication that works in Chromium and Firefox
// without a dialog (tests/browser/README.md b.): an XHR to /logout with the
// user name "logout", which the server answers 200 -- the browser then keeps
// those as the realm's credentials instead of ours.  The event stream is
// closed (an open stream stays authenticated and keeps us online), then the
// page goes to location.origin + "/" -- never a relative URL, which on a page
// opened as http://user:pw@host/ would carry the URL's credentials again.

$("logout").addEventListener("click", () => {
  const button = $("logout");
  button.disabled = true;
  text(button, "Logging out\u2026");
  const xhr = new XMLHttpRequest();
  xhr.open("GET", url("/logout"), true, "logout", "logout");
  xhr.timeout = 5000;
  xhr.addEventListener("loadend", () => {
    conn.stop();
    operators.stop();
    location.href = url("/");
  });
  xhr.send();
});

$("reconnect").addEventListener("click", () => conn.reconnect());

// For the browser's console (and the tests): the parts, to look at.
window.boatwistConsole = Object.freeze({ conn, controls, floor, operators, activity, state });

// ---------------------------------------------------------------- start

Promise.all([getJSON("/api/reasons"), loadWho()])
  .then(([r]) => { state.reasons = r.reasons || {}; state.floorWords = r.floor || {}; state.kinds = r.kinds || {}; })
  .catch(e => note("the device's description could not be loaded: " + e.message))
  .finally(() => conn.start());
