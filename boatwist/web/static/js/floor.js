// The floor: who holds it and since when; take / request (with a message) /
// release; the holder sees a request with the requester's message and a
// countdown to the automatic handover, and hands over or refuses; an admin
// may break it.  Countdowns run from handover_in / idle_release_in (seconds
// measured by the device's monotonic clock), never from its wall clock.

import { $, duration, h, request, text, when } from "./util.js";

const MODES = {
  off: "no floor: anyone whose role allows it operates",
  optional: "anyone operates while the floor is free; only its holder while it is held",
  required: "only the holder of the floor operates",
};

export class Floor {
  constructor(ctx) {
    this.ctx = ctx;        // {me, role, live, words, onChange}
    this.f = null;         // the last /api/floor answer
    this.got = 0;          // performance.now() when it arrived
    this.last = null;      // the last floor event
    this.busy = false;
    this.error = "";
    setInterval(() => this.tick(), 250);
    $("floor-form").addEventListener("submit", e => { e.preventDefault(); this.act(e.submitter); });
  }

  set(f) {
    this.f = f;
    this.got = performance.now();
    this.render();
    this.ctx.onChange();
  }

  event(d) {
    this.last = d;
  }

  left(seconds) {
    return typeof seconds === "number" ? Math.max(0, seconds - (performance.now() - this.got) / 1000) : null;
  }

  async act(button) {
    if (!button) return;
    const action = button.value;
    const message = $("floor-message").value.trim();
    let r;
    this.busy = true;
    this.error = "";
    this.render();
    try {
      if (action === "release" || action === "break") r = await request("DELETE", "/api/floor");
      else if (action === "request") r = await request("POST", "/api/floor", { action: "request", message });
      else r = await request("POST", "/api/floor", { action });
    } catch (e) {
      r = { ok: false, body: { error: "not sent: " + e.message } };
    }
    this.busy = false;
    if (r.ok) {
      if (action === "request") $("floor-message").value = "";
      this.set(r.body);
    } else {
      this.error = r.body.error || `HTTP ${r.status}`;
      this.render();
    }
  }

  tick() {
    const f = this.f;
    if (!f) return;
    const handover = this.left(f.handover_in);
    if (handover !== null) {
      text($("floor-countdown"), `${Math.ceil(handover)} s`);
      $("floor-countdown-bar").value = handover;
      if (handover <= 0 && !this.refetching) {
        this.refetching = true;
        this.ctx.refetch().finally(() => { this.refetching = false; });
      }
    }
    const idle = this.left(f.idle_release_in);
    if (idle !== null) text($("floor-idle"), `frees in ${duration(idle)} without an operation by its holder`);
    if (f.since && f.holder) text($("floor-for"), duration(this.ctx.serverNow() - f.since));
  }

  render() {
    const f = this.f;
    const me = this.ctx.me();
    const live = this.ctx.live();
    const panel = $("floor");
    panel.classList.toggle("stale", !live);
    if (!f) return;
    const held = !!f.holder;
    const mine = f.holder === me;
    panel.dataset.state = f.mode === "off" ? "off" : f.state;
    panel.classList.toggle("mine", mine);

    const state = $("floor-state");
    state.replaceChildren();
    if (f.mode === "off") {
      state.append("No floor on this device");
    } else if (!held) {
      state.append(h("strong", {}, "Free"), f.mode === "required" ? " \u2014 take it to operate" : " \u2014 anyone may operate");
    } else {
      state.append("Held by ", h("strong", { class: "holder" }, f.holder + (mine ? " (you)" : "")),
        " since ", f.since ? when(f.since) : "?", " (", h("span", { id: "floor-for" }, ""), ")");
    }
    text($("floor-mode"), `Mode ${f.mode}: ${MODES[f.mode] || ""}`);

    // A pending request: who asks, their message, the countdown.
    const req = $("floor-request");
    req.hidden = !f.requested_by;
    if (f.requested_by) {
      const who = f.requested_by === me ? "You ask" : `${f.requested_by} asks`;
      const to = mine ? "you" : f.holder;
      text($("floor-request-who"), `${who} ${to} for the floor`);
      const msg = $("floor-request-message");
      msg.hidden = !f.request_message;
      text(msg, f.request_message ? `\u201c${f.request_message}\u201d` : "");
      const auto = typeof f.handover_in === "number";
      $("floor-auto").hidden = !auto;
      if (auto) $("floor-countdown-bar").max = Math.max(1, f.handover_in + (performance.now() - this.got) / 1000);
    }
    const idle = $("floor-idle");
    idle.hidden = !(mine && typeof f.idle_release_in === "number");

    // The buttons that make sense now, for this person.
    const role = this.ctx.role();
    const canHold = role !== "viewer";
    const show = {
      take: f.mode !== "off" && !held && canHold,
      request: f.mode !== "off" && held && !mine && canHold && !f.requested_by,
      withdraw: f.requested_by === me,
      "hand-over": mine && !!f.requested_by,
      refuse: mine && !!f.requested_by,
      release: mine,
      break: held && !mine && role === "admin",
    };
    for (const button of $("floor-form").querySelectorAll("button")) {
      button.hidden = !show[button.value];
      button.disabled = !live || this.busy;
    }
    $("floor-ask").hidden = !show.request;
    $("floor-message").disabled = !live || this.busy;
    let why = "";
    if (f.mode !== "off" && !canHold) why = "Viewers do not take the floor.";
    text($("floor-why"), why);
    const err = $("floor-error");
    text(err, this.error);
    err.hidden = !this.error;

    const last = this.last;
    const lastEl = $("floor-last");
    lastEl.hidden = !last;
    if (last) {
      lastEl.replaceChildren("Last change: ", this.ctx.floorLine(last), " \u00b7 ", when(last.at));
    }
    this.tick();
  }
}
