// The activity: one timeline of operations, floor changes, presence and chat,
// loaded from the server's history (/api/activity) and continued live.
//
// Thousands of entries stay smooth: at most MAX_KEPT are kept in memory and at
// most MAX_DOM are in the page.  The page shows a window of the (filtered)
// entries: while it ends at the newest ("following"), live entries are added at
// the bottom in one batch per frame and the oldest leave the top; a reader who
// scrolled back is not moved: new entries are counted on a "newer" button.
// "Older" moves the window back, and asks the server for the page before the
// oldest entry kept when there is nothing older in memory.

import { $, dayOf, dayTitle, formatValue, getJSON, h, text, timeEl } from "./util.js";

const MAX_KEPT = 5000;
const MAX_DOM = 300;
const PAGE = 100;
const KIND_LABELS = { control: "Operations", floor: "Floor", presence: "Presence", chat: "Chat" };

export class Activity {
  constructor(ctx) {
    this.ctx = ctx;            // {me, words(reason), kindWords(kind), floorWords, control(name)}
    this.items = [];           // oldest first
    this.keys = new Set();
    this.filtered = [];        // the items that pass the filters, oldest first
    this.start = 0;            // the window [start, end) of this.filtered in the DOM
    this.end = 0;
    this.cursor = undefined;   // the server's cursor for older items; null: none left
    this.kinds = new Set(Object.keys(KIND_LABELS));
    this.person = "";
    this.queue = [];
    this.unseen = 0;
    this.frame = 0;
    this.list = $("events");
    this.buildFilters();
    $("older").addEventListener("click", () => this.older());
    $("newer").addEventListener("click", () => this.jumpToLatest());
  }

  get following() { return this.end === this.filtered.length; }

  buildFilters() {
    const box = $("kinds");
    for (const [kind, label] of Object.entries(KIND_LABELS)) {
      box.append(h("button", {
        type: "button", class: "chip", "aria-pressed": "true", dataset: { kind },
        onclick: e => {
          const on = !this.kinds.has(kind);
          if (on) this.kinds.add(kind); else this.kinds.delete(kind);
          e.currentTarget.setAttribute("aria-pressed", String(on));
          this.refilter();
        },
      }, label));
    }
    $("person").addEventListener("change", e => { this.person = e.target.value; this.refilter(); });
  }

  // ------------------------------------------------------------- the model

  // Replace everything with a page of history; keep the live entries that came after it:
  // those received since `since` (the number of entries when the page was asked
  // for) with a higher event id than the page had seen.
  loadHistory(page, since) {
    const later = this.items.slice(since).filter(i => i.eventId && i.eventId > page.last_event_id);
    this.items = [];
    this.keys.clear();
    for (const raw of page.items) this.addItem(fromHistory(raw));
    for (const item of later) this.addItem(item);
    this.cursor = page.before;
    this.refilter();
  }

  addItem(item) {
    if (this.keys.has(item.key)) return false;
    this.keys.add(item.key);
    this.items.push(item);
    return true;
  }

  // A live event: into the model at once, into the page at the next frame.
  live(kind, data, eventId) {
    if (!KIND_LABELS[kind]) return;
    const item = fromEvent(kind, data, eventId);
    if (!this.addItem(item)) return;
    this.noticePerson(item);
    if (!this.matches(item)) return;
    this.queue.push(item);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    const batch = this.queue;
    this.queue = [];
    if (!batch.length) return;
    const wasFollowing = this.following;
    this.filtered.push(...batch);
    if (wasFollowing) {
      const atBottom = this.atBottom();
      const fragment = document.createDocumentFragment();
      let last = this.lastRendered();
      for (const item of batch) {
        fragment.append(...this.render(item, last));
        last = item;
      }
      this.list.append(fragment);
      this.end = this.filtered.length;
      this.trimTop();
      if (atBottom) this.list.scrollTop = this.list.scrollHeight;
    } else {
      this.unseen += batch.length;
      this.showButtons();
    }
    this.trimMemory();
  }

  trimTop() {
    while (this.end - this.start > MAX_DOM) {
      this.start += 1;
      this.removeFirstEntry();
    }
    this.showButtons();
  }

  removeFirstEntry() {
    let first = this.list.firstElementChild;
    while (first && first.classList.contains("day")) { first.remove(); first = this.list.firstElementChild; }
    if (first) first.remove();
    // The day heading of what is now first.
    const next = this.list.firstElementChild;
    if (next && !next.classList.contains("day") && this.filtered[this.start]) {
      next.before(dayItem(this.filtered[this.start].at));
    }
  }

  // Past MAX_KEPT entries (following the newest), the oldest tenth leaves memory;
  // the server still has them ("older" asks for them again).
  trimMemory() {
    if (this.items.length <= MAX_KEPT || !this.following) return;
    const drop = this.items.length - Math.floor(MAX_KEPT * 0.9);
    const dropped = this.items.splice(0, drop);
    for (const item of dropped) this.keys.delete(item.key);
    this.cursor = cursorBefore(this.items, dropped, this.cursor);
    const before = this.filtered.length;
    this.filtered = this.items.filter(i => this.matches(i));
    const removed = before - this.filtered.length;
    if (removed > this.start) {
      this.end = this.filtered.length;
      this.start = Math.max(0, this.end - PAGE);
      this.renderWindow(this.atBottom());
    } else {
      this.start -= removed;
      this.end = this.filtered.length;
    }
  }

  matches(item) {
    return this.kinds.has(item.kind) && (!this.person || item.people.includes(this.person));
  }

  noticePerson(item) {
    const select = $("person");
    for (const name of item.people) {
      if (!name || [...select.options].some(o => o.value === name)) continue;
      const options = [...select.options].slice(1).map(o => o.value).concat(name).sort();
      const at = options.indexOf(name) + 1;
      select.insertBefore(h("option", { value: name }, name), select.options[at] || null);
    }
  }

  refilter() {
    for (const item of this.items) this.noticePerson(item);
    this.filtered = this.items.filter(i => this.matches(i));
    this.end = this.filtered.length;
    this.start = Math.max(0, this.end - Math.min(MAX_DOM, 200));
    this.unseen = 0;
    this.renderWindow(true);
  }

  // ------------------------------------------------------------ the window

  async older() {
    const button = $("older");
    if (this.start === 0 && this.cursor) {
      button.disabled = true;
      text(button, "Loading older entries\u2026");
      try {
        await this.fetchOlder();
      } catch (e) {
        this.ctx.note("older entries could not be loaded: " + e.message);
      } finally {
        button.disabled = false;
      }
    }
    if (this.start === 0) { this.showButtons(); return; }
    const anchor = this.list.querySelector("li.entry");
    const anchorTop = anchor ? anchor.getBoundingClientRect().top : 0;
    this.start = Math.max(0, this.start - PAGE);
    this.end = Math.min(this.end, this.start + MAX_DOM);
    this.renderWindow(false);
    // Keep the entry that was first where it was: the reader continues upwards.
    const same = anchor && anchor.dataset.key ? this.list.querySelector(`li[data-key="${CSS.escape(anchor.dataset.key)}"]`) : null;
    if (same) this.list.scrollTop += same.getBoundingClientRect().top - anchorTop;
  }

  async fetchOlder() {
    const page = await getJSON("/api/activity?limit=" + PAGE + "&before=" + encodeURIComponent(this.cursor));
    const older = page.items.map(fromHistory).filter(i => !this.keys.has(i.key));
    for (const item of older) { this.keys.add(item.key); this.noticePerson(item); }
    this.items = older.concat(this.items);
    this.cursor = page.before;
    const shown = older.filter(i => this.matches(i));
    this.filtered = shown.concat(this.filtered);
    this.start += shown.length;
    this.end += shown.length;
  }

  jumpToLatest() {
    this.end = this.filtered.length;
    this.start = Math.max(0, this.end - PAGE);
    this.unseen = 0;
    this.renderWindow(true);
  }

  renderWindow(toBottom) {
    this.list.setAttribute("aria-busy", "true"); // not read out entry by entry
    const fragment = document.createDocumentFragment();
    let last = null;
    for (let i = this.start; i < this.end; i++) {
      fragment.append(...this.render(this.filtered[i], last));
      last = this.filtered[i];
    }
    this.list.replaceChildren(fragment);
    if (!this.filtered.length) {
      this.list.append(h("li", { class: "empty" }, this.items.length ? "Nothing matches the filters." : "Nothing yet."));
    }
    if (toBottom) this.list.scrollTop = this.list.scrollHeight;
    this.showButtons();
    this.list.setAttribute("aria-busy", "false");
  }

  lastOf(kind) {
    for (let i = this.items.length - 1; i >= 0; i--) if (this.items[i].kind === kind) return this.items[i];
    return null;
  }

  showButtons() {
    const older = $("older");
    older.hidden = this.start === 0 && !this.cursor;
    if (!older.disabled) text(older, this.start > 0 ? "Show older entries" : "Load older entries");
    const newer = $("newer");
    newer.hidden = this.following;
    text(newer, this.unseen ? `${this.unseen} newer \u2014 jump to the latest` : "Jump to the latest");
    text($("shown"), `${this.end - this.start} of ${this.filtered.length} shown` +
      (this.cursor ? ", older on the server" : ""));
  }

  atBottom() {
    const l = this.list;
    return l.scrollTop + l.clientHeight >= l.scrollHeight - 8;
  }

  lastRendered() {
    return this.end > this.start ? this.filtered[this.end - 1] : null;
  }

  // One entry (and the day heading before it when the day changes): list items.
  render(item, previous) {
    const out = [];
    const day = dayOf(new Date(item.at * 1000));
    if (!previous || dayOf(new Date(previous.at * 1000)) !== day) out.push(dayItem(item.at));
    let cls = `entry kind-${item.kind}`;
    if (item.kind === "chat") cls += " chat" + (item.data.user === this.ctx.me() ? " mine" : "");
    if (item.kind === "presence") cls += " " + (item.data.state || "");
    if (item.kind === "control") cls += item.data.result === "ok" ? " ok" : " failed";
    const li = h("li", { class: cls, dataset: { key: item.key, kind: item.kind } },
      timeEl(item.at), " ", h("span", { class: "tag", "aria-hidden": "true" }, TAGS[item.kind]),
      " ", ...this.describe(item));
    out.push(li);
    return out;
  }

  describe(item) {
    const d = item.data;
    const ctx = this.ctx;
    const via = v => (v && v !== "web") ? [" ", h("span", { class: "via" }, "via " + (VIA[v] || v))] : [];
    if (item.kind === "chat") {
      const who = h("strong", { class: "who" }, d.user);
      return d.action ? ["* ", who, " ", d.text, ...via(d.via)] : [who, ": ", d.text, ...via(d.via)];
    }
    if (item.kind === "control") return [operationLine(d, ctx), ...via(d.via === "safe-state" ? null : d.via)];
    if (item.kind === "floor") return [d.text || floorLine(d, ctx)];
    return [presenceLine(d, ctx), ...via(d.via)];
  }
}

const TAGS = { control: "op", floor: "floor", presence: "who", chat: "chat" };
const VIA = { chat: "chat port", api: "API", mqtt: "MQTT", http: "plain requests", web: "browser" };

function dayItem(at) {
  return h("li", { class: "day" }, dayTitle(new Date(at * 1000)));
}

function people(kind, d) {
  const names = [d.user, d.previous, d.by, d.requested_by, d.holder].filter(Boolean);
  return [...new Set(names)];
}

function fromEvent(kind, data, eventId) {
  let key = "ev:" + eventId;
  if (kind === "chat" && data.id) key = "chat:" + data.id;
  if (kind === "control" && data.id) key = "op:" + data.id;
  return { key, kind, at: data.at, data, eventId, people: people(kind, data) };
}

function fromHistory(raw) {
  return { key: raw.key, kind: raw.kind, at: raw.at, data: raw.data, eventId: null, people: people(raw.kind, raw.data) };
}

// The server's cursor for what is older than every entry kept (after dropping the
// oldest from memory): per source, the oldest id kept; else one past the newest
// dropped; else what the previous cursor said (0: nothing older there).
const SOURCES = [["chat:", "c"], ["op:", "o"], ["audit:", "a"]];
function cursorBefore(kept, dropped, previous) {
  const old = {};
  for (const m of (previous || "").matchAll(/([coa])(\d+)/g)) old[m[1]] = Number(m[2]);
  const ids = (items, prefix) => items.filter(i => i.key.startsWith(prefix)).map(i => Number(i.key.slice(prefix.length)));
  const parts = SOURCES.map(([prefix, letter]) => {
    const k = ids(kept, prefix), d = ids(dropped, prefix);
    const id = k.length ? Math.min(...k) : d.length ? Math.max(...d) + 1 : (previous ? old[letter] || 0 : 0);
    return letter + id;
  });
  return parts.join(".");
}

export function presenceLine(d, ctx) {
  const words = ctx.words(d.reason);
  if (d.reason === "refused") {
    // The chat port's words (boatwist.chat.room.refusal_sentence).
    if (!d.refusal) return `${d.user} was refused`;
    const detail = d.refusal === "full" ? `${d.used} of ${d.limit} operators online`
      : d.refusal === "too-many-connections" ? `${d.used} of ${d.limit} allowed per operator` : "";
    return `${d.user} was refused: ${ctx.words(d.refusal)}` + (detail ? ` (${detail})` : "");
  }
  let s = `${d.user} is ${d.state} (${words}`;
  if (typeof d.detected_after === "number" && d.state === "offline" && d.reason !== "closed")
    s += `, detected after ${d.detected_after.toFixed(1)} s`;
  if (d.by) s += `, by ${d.by}`;
  return s + ")";
}

export function operationLine(d, ctx) {
  const control = ctx.control(d.control) || { label: d.label || d.control, unit: d.unit, type: d.type };
  const name = control.label || d.label || d.control;
  const value = formatValue(d.value, control);
  const ok = d.result === "ok";
  const error = d.error || "failed";
  if (d.via === "safe-state") {
    const why = d.reason ? `safe state: ${d.user} is offline, ${ctx.words(d.reason)}` : `safe state: ${d.user} vanished`;
    return ok ? `${name} set to ${value} (${why})` : `!! ${name} could not be set to its safe value ${value}: ${error} (${why})`;
  }
  if ((d.type || control.type) === "action") return ok ? `${d.user} pressed ${name}` : `${d.user} could not press ${name}: ${error}`;
  if (!ok) return `${d.user} could not set ${name} to ${value}: ${error}`;
  const was = d.old !== null && d.old !== undefined ? ` (was ${formatValue(d.old, control)})` : "";
  return `${d.user} set ${name} to ${value}${was}`;
}

// The words of boatwist.controls.floor.describe, for live events (history items carry the server's own line).
export function floorLine(d, ctx) {
  const quoted = d.message ? ` (\u201c${d.message}\u201d)` : "";
  const dropped = d.request_dropped ? `; ${d.request_dropped}'s request is dropped` : "";
  const presence = () => {
    let w = ctx.words(d.reason) || d.reason;
    if (typeof d.detected_after === "number") w += `, detected after ${d.detected_after.toFixed(1)} s`;
    return w;
  };
  switch (d.state) {
    case "taken":
      if (d.reason === "handover") return `${d.previous} handed the floor over to ${d.user}`;
      if (d.reason === "handover-timeout") return `${d.user} has the floor: ${d.previous} did not answer the request`;
      return `${d.user} took the floor`;
    case "requested": return `${d.user} asks ${d.holder} for the floor${quoted}`;
    case "refused": return `${d.by} keeps the floor: ${d.user}'s request is refused`;
    case "withdrawn":
      return d.reason === "withdrawn" ? `${d.user} withdrew the request for the floor`
        : `${d.user}'s request for the floor is dropped: ${d.user} is offline (${presence()})`;
    case "released":
      if (d.reason === "idle") return `the floor is free: ${d.user} did not operate for a while${dropped}`;
      if (d.reason === "broken") return `${d.by} broke ${d.user}'s floor: the floor is free${dropped}`;
      return `${d.user} released the floor${dropped}`;
    default:
      if (d.reason === "kicked") return `the floor is free: ${d.user} was removed${d.by ? " by " + d.by : ""}${dropped}`;
      return `the floor is free: ${d.user} is offline (${presence()})${dropped}`;
  }
}
