// The operators: who is online, with their role, state, connections in plain
// words and each link's quality (round-trip time, keepalive probes and
// retransmissions outstanding) -- polled from /api/operators every 2 s, so the
// numbers are the server's, fresh, not frozen at the last presence event.
// Operators who left during this session stay listed below, with why.

import { $, duration, getJSON, h, rtt, text, when } from "./util.js";

export const POLL = 2000;
const GONE_KEPT = 8;

export class Operators {
  constructor(ctx) {
    this.ctx = ctx;     // {me, words, live, polled(ok)}
    this.doc = null;
    this.got = 0;
    this.gone = new Map();   // user -> presence event data of their going offline
    this.timer = 0;
    this.inflight = false;
    this.asked = 0;
    this.shown = 0;
  }

  start() {
    clearInterval(this.timer);
    this.timer = setInterval(() => this.poll().catch(() => {}), POLL); // a failure is told through polled()
    return this.poll();
  }

  stop() { clearInterval(this.timer); }

  async poll() {
    if (this.inflight) return;
    this.inflight = true;
    const asked = ++this.asked;
    try {
      const doc = await getJSON("/api/operators", POLL * 2);
      if (asked > this.shown) {
        this.shown = asked;
        this.doc = doc;
        this.got = performance.now();
        this.ctx.polled(true, doc.now);
        this.render();
      }
    } catch (e) {
      this.ctx.polled(false);
      throw e;
    } finally {
      this.inflight = false;
    }
  }

  presence(d) {
    if (d.state === "offline" && d.reason !== "refused") this.gone.set(d.user, d);
    if (d.state !== "offline") this.gone.delete(d.user);
    while (this.gone.size > GONE_KEPT) this.gone.delete(this.gone.keys().next().value);
    this.poll().catch(() => {});
  }

  render() {
    const doc = this.doc;
    const live = this.ctx.live();
    $("presence").classList.toggle("stale", !live);
    if (!doc) return;
    const me = this.ctx.me();
    text($("seats"), `${doc.seats.used} of ${doc.seats.limit} seats taken`);
    const meter = $("seats-meter");
    meter.max = doc.seats.limit;
    meter.value = doc.seats.used;
    const online = new Set(doc.operators.map(o => o.user));
    const items = doc.operators.map(o => this.operator(o, o.user === me, doc.now));
    $("users").replaceChildren(...items);
    for (const name of online) this.gone.delete(name);
    const gone = [...this.gone.values()].reverse();
    $("gone-box").hidden = !gone.length;
    $("gone").replaceChildren(...gone.map(d => h("li", { class: "offline", dataset: { user: d.user } },
      h("strong", {}, d.user), " offline since ", when(d.at), " \u2014 ", this.ctx.words(d.reason) +
      (typeof d.detected_after === "number" && d.reason !== "closed" ? `, detected after ${d.detected_after.toFixed(1)} s` : ""))));
  }

  operator(o, mine, now) {
    const quality = linkQuality(o.connections);
    const head = h("div", { class: "op-head" },
      h("span", { class: `dot ${o.state}`, "aria-hidden": "true" }),
      h("strong", {}, o.user), mine ? " (you)" : "",
      " ", h("span", { class: "role" }, o.role),
      o.floor === "holder" ? h("span", { class: "badge floor" }, "holds the floor") : null,
      o.floor === "requester" ? h("span", { class: "badge" }, "asks for the floor") : null,
      " ", h("span", { class: "stale-tag" }, "stale"));
    // Since when in this state (unstable since 12:01:07), and the login when that was earlier.
    const since = typeof o.state_since === "number" ? o.state_since : o.since;
    const state = h("div", { class: "op-state" },
      h("span", { class: "state " + o.state }, o.state), ` since ${when(since)} (${duration(now - since)})`,
      since - o.since >= 1 ? ` \u00b7 logged in ${when(o.since)}` : "",
      quality ? h("span", { class: "quality " + quality.cls }, " \u00b7 ", quality.words) : null);
    const conns = h("ul", { class: "conns" }, o.connections.map(c => h("li", { class: c.unstable ? "unstable" : "" },
      connectionLine(c))));
    return h("li", { class: `op ${o.state}`, dataset: { user: o.user } }, head, state, conns);
  }
}

function connectionLine(c) {
  const parts = [c.words || c.kind];
  if (c.peer) parts.push(c.peer);
  if (c.kind !== "http") parts.push("RTT " + rtt(c.rtt_ms));
  if (c.probes) parts.push(`${c.probes} keepalive probe${c.probes > 1 ? "s" : ""} unanswered`);
  if (c.retransmits) parts.push(`${c.retransmits} retransmission${c.retransmits > 1 ? "s" : ""} outstanding`);
  if (typeof c.idle_s === "number" && c.idle_s >= 5) parts.push(`silent for ${duration(c.idle_s)}`);
  if (c.kind === "http" && typeof c.expires_in === "number") parts.push(`online for ${Math.ceil(c.expires_in)} s more without a request`);
  return parts.join(" \u00b7 ");
}

function linkQuality(connections) {
  const links = connections.filter(c => c.kind !== "http");
  if (!links.length) return null;
  if (links.some(c => c.probes || c.retransmits || c.unstable)) return { cls: "poor", words: "link troubled" };
  const rtts = links.map(c => c.rtt_ms).filter(r => typeof r === "number");
  if (!rtts.length) return null;
  const best = Math.min(...rtts);
  if (best > 300) return { cls: "fair", words: "slow link" };
  return { cls: "good", words: "link good" };
}
