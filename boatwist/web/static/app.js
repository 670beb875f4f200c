// The operator's page: who is online, the chat room, and every event, live.
// Text from the server is only ever put into the page with textContent, never
// as HTML: an operator's message must not be able to run script in another's browser.
"use strict";

const REASONS = {
  login: "logged in", closed: "left", reset: "connection reset",
  "keepalive-timeout": "no answer to keepalive probes", "heartbeat-timeout": "missed heartbeat",
  "tcp-state": "connection half-closed", "slow-reader": "too slow to read events",
  kicked: "removed by an operator", idle: "idle", refused: "refused",
  probes: "keepalive probes outstanding", retransmits: "retransmitting", recovered: "link recovered",
};

function item(list, text, cls) {
  const li = document.createElement("li");
  li.textContent = text;
  if (cls) li.className = cls;
  list.appendChild(li);
  list.scrollTop = list.scrollHeight;
  while (list.children.length > 500) list.removeChild(list.firstChild);
}

function time(at) { return new Date(at * 1000).toLocaleTimeString(); }

async function getJSON(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}

async function refreshPresence() {
  const p = await getJSON("api/presence");
  document.getElementById("seats").textContent = p.seats.used + " of " + p.seats.limit + " seats taken";
  const list = document.getElementById("users");
  list.replaceChildren();
  for (const u of p.users) {
    const rtt = u.connections.map(c => c.rtt_ms).filter(r => r !== null && r !== undefined);
    const suffix = rtt.length ? " (rtt " + Math.min(...rtt).toFixed(1) + " ms)" : "";
    item(list, u.user + " — " + u.state + suffix, u.state);
  }
}

function showChat(m) {
  const line = m.action ? "* " + m.user + " " + m.text : "<" + m.user + "> " + m.text;
  item(document.getElementById("messages"), time(m.at) + " " + line + (m.via === "chat" ? " (telnet)" : ""));
}

async function loadHistory() {
  const history = await getJSON("api/chat?limit=50");
  for (const m of history.messages) showChat(m);
}

function connect() {
  const events = new EventSource("api/events");
  const log = document.getElementById("events");
  events.addEventListener("presence", e => {
    const d = JSON.parse(e.data);
    let text = time(d.at) + " " + d.user + " is " + d.state + " (" + (REASONS[d.reason] || d.reason);
    if (d.detected_after !== undefined && d.detected_after !== null && d.state === "offline" && d.reason !== "closed")
      text += ", detected after " + d.detected_after.toFixed(1) + " s";
    if (d.reason === "refused") text += ": " + d.used + " of " + d.limit;
    item(log, text + ")", d.state);
    refreshPresence().catch(() => {});
  });
  events.addEventListener("chat", e => showChat(JSON.parse(e.data)));
  events.addEventListener("control", e => {
    const d = JSON.parse(e.data);
    item(log, time(d.at) + " " + d.user + ": " + (d.text || JSON.stringify(d)));
  });
}

document.getElementById("say").addEventListener("submit", async e => {
  e.preventDefault();
  const input = document.getElementById("text");
  const text = input.value;
  if (!text.trim()) return;
  const response = await fetch("api/chat", {
    method: "POST", credentials: "same-origin",
    headers: { "content-type": "application/json" }, body: JSON.stringify({ text }),
  });
  if (response.ok) input.value = "";
  else item(document.getElementById("events"), "message not sent: " + ((await response.json()).error || response.status));
});

getJSON("api/whoami").then(w => { document.getElementById("whoami").textContent = "logged in as " + w.user; });
refreshPresence().catch(() => {});
loadHistory().catch(() => {});
connect();
