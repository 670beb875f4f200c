// The operator's page: who is online, the chat room, and every event, live.
// Text from the server is only ever put into the page with textContent (or as
// text nodes), never as HTML: an operator's message must not be able to run
// script in another's browser.  No inline style either: the CSP forbids it.
"use strict";

const REASONS = {
  login: "logged in", closed: "left", reset: "connection reset",
  "keepalive-timeout": "no answer to keepalive probes", "heartbeat-timeout": "missed heartbeat",
  "tcp-state": "connection half-closed", "slow-reader": "too slow to read events",
  kicked: "removed by an operator", revoked: "password changed or account removed", idle: "idle", refused: "refused",
  probes: "keepalive probes outstanding", retransmits: "retransmitting", recovered: "link recovered",
};
const KINDS = { web: "web", chat: "telnet", http: "http" };
const MAX_ITEMS = 500;

let me = null;               // the logged-in user, from api/whoami
const shownChat = new Set(); // ids of chat messages on the page: history and stream overlap
let lastChatId = 0;
let presenceAsked = 0;       // sequence of presence requests, so a late answer never
let presenceShown = 0;       // overwrites a newer one

const $ = id => document.getElementById(id);

function time(at) { return new Date(at * 1000).toLocaleTimeString(); }

// A list item: an optional <time>, then plain text.  Keeps the list scrolled to
// the bottom if it was there (a reader scrolled up is not yanked down) and
// at most MAX_ITEMS long.  `before` is an item to insert before (else append).
function item(list, text, cls, at, before) {
  const li = document.createElement("li");
  if (at !== undefined && at !== null) {
    const t = document.createElement("time");
    t.dateTime = new Date(at * 1000).toISOString();
    t.textContent = time(at);
    li.append(t, " ");
  }
  li.append(text);
  if (cls) li.className = cls;
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.insertBefore(li, before || null);
  while (list.children.length > MAX_ITEMS) list.removeChild(list.firstChild);
  if (atBottom) list.scrollTop = list.scrollHeight;
  return li;
}

// Something the page itself has to say (not from the server), in the events list.
function note(text, cls) { item($("events"), text, cls || "error", Date.now() / 1000); }

async function getJSON(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

async function refreshPresence() {
  const asked = ++presenceAsked;
  const p = await getJSON("api/presence");
  if (asked < presenceShown) return;
  presenceShown = asked;
  $("seats").textContent = p.seats.used + " of " + p.seats.limit + " seats taken";
  const list = $("users");
  list.replaceChildren();
  for (const u of p.users) {
    const kinds = [...new Set(u.connections.map(c => KINDS[c.kind] || c.kind))];
    const rtt = u.connections.map(c => c.rtt_ms).filter(r => typeof r === "number");
    let text = u.user + (u.user === me ? " (you)" : "") + " \u2014 " + u.state;
    if (kinds.length) text += " \u00b7 " + kinds.join(", ");
    if (rtt.length) text += " (rtt " + Math.min(...rtt).toFixed(1) + " ms)";
    item(list, text, u.state);
  }
}

function showChat(m) {
  if (typeof m.id === "number") {
    if (shownChat.has(m.id)) return;
    shownChat.add(m.id);
    lastChatId = Math.max(lastChatId, m.id);
  }
  const text = (m.action ? "* " + m.user + " " + m.text : "<" + m.user + "> " + m.text) +
    (m.via === "chat" ? " (telnet)" : "");
  const list = $("messages");
  // Keep id order: history may arrive after newer messages from the stream.
  let before = null;
  if (typeof m.id === "number") {
    for (let li = list.lastElementChild; li && Number(li.dataset.id) > m.id; li = li.previousElementSibling) before = li;
  }
  const li = item(list, text, m.user === me ? "mine" : "", m.at, before);
  if (typeof m.id === "number") li.dataset.id = String(m.id);
}

async function loadHistory() {
  // First time: the latest messages.  After a reconnect: whatever came since.
  const query = lastChatId ? "after=" + lastChatId + "&limit=500" : "limit=50";
  const history = await getJSON("api/chat?" + query);
  for (const m of history.messages) showChat(m);
}

function setStatus(cls, text) {
  const status = $("status");
  status.className = cls;
  status.textContent = text;
}

let retryDelay = 5;

function connect() {
  setStatus("connecting", "connecting\u2026");
  const events = new EventSource("api/events");
  events.addEventListener("open", () => {
    retryDelay = 5;
    setStatus("live", "live");
    // After the stream is open nothing is missed; what came before is in the history.
    refreshPresence().catch(e => note("presence: " + e.message));
    loadHistory().catch(e => note("chat history: " + e.message));
  });
  events.addEventListener("error", () => {
    if (events.readyState === EventSource.CLOSED) {
      // Refused (seats full, 401, 503) or not an event stream: the browser gives up; we retry.
      events.close();
      setStatus("offline", "disconnected; retrying in " + retryDelay + " s");
      setTimeout(connect, retryDelay * 1000);
      retryDelay = Math.min(retryDelay * 2, 60);
    } else {
      setStatus("connecting", "reconnecting\u2026"); // the browser retries by itself
    }
  });
  events.addEventListener("presence", e => {
    const d = JSON.parse(e.data);
    let text = d.user + " is " + d.state + " (" + (REASONS[d.reason] || d.reason);
    if (typeof d.detected_after === "number" && d.state === "offline" && d.reason !== "closed")
      text += ", detected after " + d.detected_after.toFixed(1) + " s";
    if (d.reason === "refused") text += ": " + d.used + " of " + d.limit + " seats taken";
    item($("events"), text + ")", d.state, d.at);
    refreshPresence().catch(() => {});
  });
  events.addEventListener("chat", e => showChat(JSON.parse(e.data)));
  events.addEventListener("control", e => {
    const d = JSON.parse(e.data);
    item($("events"), d.user + ": " + (d.text || JSON.stringify(d)), "control", d.at);
  });
}

let sending = false;

$("say").addEventListener("submit", async e => {
  e.preventDefault();
  const input = $("text");
  const button = e.target.querySelector("button");
  const text = input.value;
  if (!text.trim() || sending) return;
  sending = true;
  button.disabled = true;
  try {
    const response = await fetch("api/chat", {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json" }, body: JSON.stringify({ text }),
    });
    if (response.ok) {
      if (input.value === text) input.value = "";
    } else {
      let why = "HTTP " + response.status;
      try { why = (await response.json()).error || why; } catch (_) { /* not JSON */ }
      note("message not sent: " + why);
    }
  } catch (err) {
    note("message not sent: " + err.message);
  } finally {
    sending = false;
    button.disabled = false;
    input.focus();
  }
});

getJSON("api/whoami")
  .then(w => { me = w.user; $("whoami").textContent = "logged in as " + w.user; })
  .catch(e => note("who am I: " + e.message))
  .finally(connect);
