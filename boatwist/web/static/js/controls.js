// The controls panel: one card per control, one widget per type.
//
//   switch   a toggle button (role=switch)
//   number   a slider and a number box with unit, range and step: typing and Enter (or Set)
//            sends one operation; a slider drag sends ONE operation when released (the
//            change event), arrow keys on the slider one after a short pause
//   choice   a row of buttons, one per choice (never radios: arrow keys would operate)
//   action   a button
//   sensor   a readout
//
// Each card shows the value, its quality (good / stale / error with the error),
// who changed it last and when, a pending state while its operation runs, the
// error inline when it fails, and why it is disabled (role, the floor, the
// link).  A control that asks for confirmation answers 428 with the server's
// question: the dialog asks it, and the same request is sent again with the token.

import { $, formatValue, h, request, text, when } from "./util.js";
import { confirmOperation } from "./dialog.js";

const KEY_PAUSE = 600; // ms after the last arrow key on a slider before its value is sent

export class Controls {
  constructor(ctx) {
    this.ctx = ctx;   // {me, role, floor(), live(), note}
    this.cards = new Map();
    this.list = $("control-list");
  }

  get(name) { const c = this.cards.get(name); return c ? c.c : null; }

  load(doc) {
    const seen = new Set();
    for (const c of doc.controls) {
      seen.add(c.name);
      const card = this.cards.get(c.name);
      if (card && card.c.type === c.type) {
        card.c = Object.assign(card.c, c);
        card.update();
      } else {
        const fresh = new Card(c, this);
        if (card) card.el.replaceWith(fresh.el); else this.list.append(fresh.el);
        this.cards.set(c.name, fresh);
        fresh.update();
      }
    }
    for (const [name, card] of this.cards) if (!seen.has(name)) { card.el.remove(); this.cards.delete(name); }
    text($("controls-count"), `${doc.controls.length} control${doc.controls.length === 1 ? "" : "s"}`);
    if (!doc.controls.length) this.list.replaceChildren(h("p", { class: "empty" }, "This device declares no controls."));
  }

  // An operation (control event): the value, who and when -- or another's failure.
  operation(d) {
    const card = this.cards.get(d.control);
    if (!card) return;
    if (d.result === "ok") {
      if (card.c.type !== "action") card.c.value = d.value;
      card.c.changed_at = d.at;
      card.c.changed_by = d.via === "safe-state" ? "safe state" : d.user;
      if (card.c.quality === "error") { card.c.quality = "good"; card.c.error = null; }
    }
    card.update();
  }

  // A reading or a change of quality (value event).
  value(d) {
    const card = this.cards.get(d.control);
    if (!card) return;
    Object.assign(card.c, {
      value: d.value, quality: d.quality, error: d.error,
      changed_at: d.changed_at === undefined ? card.c.changed_at : d.changed_at,
      changed_by: d.changed_by === undefined ? card.c.changed_by : d.changed_by,
    });
    card.update();
  }

  refresh() { for (const card of this.cards.values()) card.update(); }

  // Why the user cannot operate control c now, or "" when they can.
  blocked(c) {
    if (c.type === "sensor") return "read-only";
    const role = this.ctx.role();
    if (!c.writable) {
      return role === "viewer" ? "viewers watch: operating needs the operator role"
        : `needs the ${c.role} role (you are ${role})`;
    }
    const f = this.ctx.floor();
    if (f && f.mode !== "off") {
      const me = this.ctx.me();
      if (f.holder && f.holder !== me) return `the floor is held by ${f.holder}`;
      if (!f.holder && f.mode === "required") return "take the floor first";
    }
    return "";
  }

  // Send an operation; the 428 answer asks the dialog; errors go inline.
  async operate(card, value, confirm) {
    const c = card.c;
    if (card.pending && !confirm) return; // one operation at a time per control
    const body = c.type === "action" ? {} : { value };
    if (confirm) body.confirm = confirm;
    card.pending = true;
    card.error = "";
    card.update();
    let r;
    try {
      r = await request("POST", "/api/controls/" + encodeURIComponent(c.name), body, 20000);
    } catch (e) {
      r = { status: 0, ok: false, body: { error: "not sent: " + e.message } };
    }
    card.pending = false;
    if (r.ok) {
      const op = r.body.operation || {};
      if (c.type !== "action" && op.result === "ok") c.value = op.value;
      if (op.result === "ok") { c.changed_at = op.at; c.changed_by = op.user; }
      card.dirty = false;
      card.update();
      return;
    }
    if (r.status === 428 && r.body.confirm) {
      card.update();
      const yes = await confirmOperation({
        control: c, value, question: r.body.question || "Are you sure?", expiresIn: r.body.expires_in || 15,
      });
      if (yes) return this.operate(card, value, r.body.confirm);
      card.error = "not done: the question was not confirmed";
      card.dirty = false;
      card.update();
      return;
    }
    card.error = describeRefusal(r);
    card.dirty = false;
    card.update();
  }
}

function describeRefusal(r) {
  const b = r.body || {};
  let why = b.error || (r.status ? `HTTP ${r.status}` : "not sent");
  if (r.status === 429 && r.headers) why += ` (try again in ${r.headers.get("retry-after") || "a few"} s)`;
  return why;
}

class Card {
  constructor(c, panel) {
    this.c = c;
    this.panel = panel;
    this.pending = false;
    this.error = "";
    this.dirty = false;   // the person is editing: incoming values do not overwrite the widget
    const id = "control-" + c.name;
    this.valueEl = h("span", { class: "v" });
    this.qualityEl = h("span", { class: "quality" });
    this.metaEl = h("p", { class: "meta" });
    this.whyEl = h("p", { class: "why" });
    this.errorEl = h("p", { class: "error", role: "alert" });
    this.widget = this.buildWidget(id);
    this.el = h("article", { class: `control type-${c.type}`, id, dataset: { name: c.name }, "aria-labelledby": id + "-label" },
      h("header", {},
        h("h3", { id: id + "-label" }, c.label || c.name),
        h("span", { class: "name" }, c.name),
        this.qualityEl),
      h("p", { class: "value" },
        this.valueEl, h("span", { class: "stale-tag" }, "stale")),
      this.widget,
      this.whyEl, this.errorEl, this.metaEl);
  }

  buildWidget(id) {
    const c = this.c;
    const label = c.label || c.name;
    if (c.type === "switch") {
      this.switchEl = h("button", {
        type: "button", class: "switch", role: "switch", "aria-label": label,
        onclick: () => this.panel.operate(this, !(this.c.value === true)),
      }, h("span", { class: "knob", "aria-hidden": "true" }), h("span", { class: "state" }));
      return h("div", { class: "widget" }, this.switchEl);
    }
    if (c.type === "number") {
      const attrs = { min: c.min, max: c.max, step: c.step || "any" };
      this.range = h("input", { type: "range", ...attrs, "aria-label": label + " (slider)", id: id + "-range" });
      this.number = h("input", { type: "number", ...attrs, inputmode: "decimal", "aria-label": label, id: id + "-number" });
      this.setBtn = h("button", { type: "submit", "aria-label": "Set " + label }, "Set");
      let keyTimer = 0;
      let byKey = false;
      this.range.addEventListener("keydown", () => { byKey = true; });
      this.range.addEventListener("pointerdown", () => { byKey = false; this.dirty = true; });
      this.range.addEventListener("input", () => { this.dirty = true; this.number.value = this.range.value; });
      this.range.addEventListener("change", () => {
        const send = () => this.panel.operate(this, Number(this.range.value));
        clearTimeout(keyTimer);
        if (byKey) keyTimer = setTimeout(send, KEY_PAUSE); else send();
      });
      this.number.addEventListener("input", () => {
        this.dirty = true;
        if (this.number.value !== "") this.range.value = this.number.value;
      });
      this.number.addEventListener("blur", () => {
        if (this.dirty && !this.pending && Number(this.number.value) === this.c.value) { this.dirty = false; this.update(); }
      });
      const form = h("form", { class: "widget number", onsubmit: e => {
        e.preventDefault();
        if (this.number.value === "" || !this.number.checkValidity()) {
          this.error = `enter a number from ${c.min} to ${c.max}` + (c.step ? ` in steps of ${c.step}` : "");
          this.update();
          return;
        }
        this.panel.operate(this, Number(this.number.value));
      } }, this.range, h("span", { class: "entry" }, this.number, c.unit ? h("span", { class: "unit" }, c.unit) : null,
        this.setBtn),
      h("span", { class: "range-ends", "aria-hidden": "true" },
        h("span", {}, formatValue(c.min, c)), h("span", {}, formatValue(c.max, c))));
      return form;
    }
    if (c.type === "choice") {
      this.choiceEls = (c.choices || []).map(choice => h("button", {
        type: "button", class: "choice", "aria-pressed": "false", dataset: { value: choice },
        onclick: () => { if (this.c.value !== choice) this.panel.operate(this, choice); },
      }, choice));
      return h("div", { class: "widget choices", role: "group", "aria-label": label }, this.choiceEls);
    }
    if (c.type === "action") {
      this.actionEl = h("button", { type: "button", class: "action", "aria-label": "Press: " + label,
        onclick: () => this.panel.operate(this, null) }, "Press");
      return h("div", { class: "widget" }, this.actionEl);
    }
    return h("div", { class: "widget readout", "aria-hidden": "true" });
  }

  update() {
    const c = this.c;
    const live = this.panel.ctx.live();
    const blocked = this.panel.blocked(c);
    // Not disabled while pending: a disabled button loses the keyboard focus.
    const disabled = !live || !!blocked;
    const el = this.el;
    el.classList.toggle("pending", this.pending);
    el.classList.toggle("stale", !live);
    el.classList.toggle("blocked", !!blocked && c.type !== "sensor");
    el.setAttribute("aria-busy", String(this.pending));
    for (const q of ["good", "stale", "error"]) el.classList.toggle("q-" + q, c.quality === q);

    text(this.valueEl, c.type === "action" ? "running\u2026" : formatValue(c.value, c));
    this.valueEl.parentElement.hidden = c.type === "action" && !this.pending;
    const quality = c.quality === "error" ? "error" : c.quality === "stale" ? "stale reading" : c.type === "action" ? "ready" : "good";
    text(this.qualityEl, quality);
    this.qualityEl.className = "quality q-" + c.quality;
    this.qualityEl.title = c.quality === "error" ? c.error || "" : "";

    if (this.switchEl) {
      this.switchEl.setAttribute("aria-checked", String(c.value === true));
      text(this.switchEl.querySelector(".state"), c.value === true ? "Switch off" : "Switch on");
      el.classList.toggle("on", c.value === true);
      this.switchEl.disabled = disabled;
    }
    if (this.range) {
      if (!this.dirty && typeof c.value === "number") {
        this.range.value = String(c.value);
        if (document.activeElement !== this.number) this.number.value = String(c.value);
      }
      this.range.disabled = this.number.disabled = this.setBtn.disabled = disabled;
    }
    if (this.choiceEls) {
      for (const b of this.choiceEls) {
        b.setAttribute("aria-pressed", String(b.dataset.value === c.value));
        b.disabled = disabled;
      }
    }
    if (this.actionEl) {
      this.actionEl.disabled = disabled;
      text(this.actionEl, this.pending ? "Running\u2026" : "Press");
    }

    let why = "";
    if (c.type !== "sensor" && blocked) why = blocked;
    else if (c.type !== "sensor" && !live) why = "disconnected: actions wait for the link";
    if (c.confirm && !why) why = "asks for confirmation";
    text(this.whyEl, why);
    this.whyEl.className = "why" + (blocked && c.type !== "sensor" ? " blocked" : "");

    let error = this.error;
    if (!error && c.quality === "error" && c.error) error = "device: " + c.error;
    text(this.errorEl, error);
    this.errorEl.hidden = !error;

    const meta = [];
    if (this.pending) meta.push("sending\u2026");
    if (c.changed_at && c.changed_by) {
      meta.push(`${c.type === "action" ? "pressed" : "changed"} by ${c.changed_by} at ${when(c.changed_at)}`);
    } else if (c.changed_at) {
      meta.push(`changed at ${when(c.changed_at)} (read from the device)`);
    }
    if (c.poll && c.type === "sensor") meta.push(`read every ${c.poll} s`);
    text(this.metaEl, meta.join(" \u00b7 "));
  }
}
