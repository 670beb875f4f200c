// The console's link to the device, and an honest word about it.
//
//   live                                    the event stream is open, the state was (re)loaded
//                                           since it opened, and the last poll answered
//   reconnecting… (data as of 12:01:07)     the stream broke or polls stopped answering; the
//                                           browser (or we) are retrying; what is shown is old
//   offline — …                             the browser is offline, the server refused the
//                                           stream (401, 503: we retry with a back-off), or
//                                           reconnecting has not worked for OFFLINE_AFTER s
//                                           (the browser goes on retrying)
//
// While not live, <body data-conn> says so: every value and the operator list
// are marked stale and every action is disabled (the parts re-render on change).
//
// Event ids are consecutive across all kinds, and the stream carries all kinds,
// so a jump in ids means events were missed (the server's buffer did not reach
// back far enough on a reconnect): the state is reloaded.  A restart of the
// daemon is recognised by its start time (whoami) and reloads the same way.

import { $, clock, origin, text } from "./util.js";

const KINDS = ["presence", "chat", "control", "value", "floor"];
const POLL_FAILURES = 2;   // failed polls in a row that make a stream we believe open "reconnecting"
const OFFLINE_AFTER = 15;  // seconds of reconnecting without success after which the page says offline

export class Connection {
  constructor({ onEvent, onOpen, onChange, onGap }) {
    this.onGap = onGap;          // () events were missed: what is rebuilt from events must be reloaded
    this.onEvent = onEvent;      // (kind, data, id)
    this.onOpen = onOpen;        // async () -> reload state; throws when that failed
    this.onChange = onChange;    // (state) after every change of state
    this.state = "connecting";
    this.asOf = null;            // Date of the last moment the data was known current
    this.lastId = null;
    this.es = null;
    this.retryDelay = 2;
    this.retryTimer = null;
    this.offlineTimer = null;
    this.pollFailures = 0;
    this.loading = false;
    this.again = false;
    this.stopped = false;
    addEventListener("offline", () => this.set("offline", "the browser is offline"));
    addEventListener("online", () => this.reconnect());
  }

  get live() { return this.state === "live"; }

  start() { this.open(); }

  open() {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    if (this.es) this.es.close();
    const es = new EventSource(origin + "/api/events");
    this.es = es;
    es.addEventListener("open", () => this.opened(es));
    es.addEventListener("error", () => this.failed(es));
    for (const kind of KINDS) {
      es.addEventListener(kind, e => {
        if (es !== this.es) return;
        const id = Number(e.lastEventId);
        const gap = this.lastId !== null && id > this.lastId + 1;
        if (id) this.lastId = id;
        this.fresh();
        let data;
        try { data = JSON.parse(e.data); } catch (_) { return; }
        this.onEvent(kind, data, id);
        if (gap) { this.onGap(); this.reload(); }
      });
    }
  }

  async opened(es) {
    if (es !== this.es) return;
    this.retryDelay = 2;
    await this.reload();
  }

  async reload() {
    if (this.loading) { this.again = true; return; }
    this.loading = true;
    try {
      do {
        this.again = false;
        await this.onOpen();
      } while (this.again);
      this.pollFailures = 0;
      if (this.es && this.es.readyState === EventSource.OPEN) this.set("live");
    } catch (e) {
      this.set("reconnecting", "the state could not be loaded: " + e.message);
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => { if (this.es) this.reload(); }, 3000);
    } finally {
      this.loading = false;
    }
  }

  failed(es) {
    if (es !== this.es) return;
    if (!navigator.onLine) {
      this.set("offline", "the browser is offline");
    } else if (es.readyState === EventSource.CLOSED) {
      // Refused (401, 503) or not an event stream: the browser gives up; we retry with a back-off.
      es.close();
      this.es = null;
      const delay = this.retryDelay;
      this.retryDelay = Math.min(this.retryDelay * 2, 30);
      this.set("offline", `retrying in ${delay} s`);
      this.retryTimer = setTimeout(() => this.open(), delay * 1000);
    } else if (this.state !== "offline") {
      // The browser retries by itself (the server asks for 2 s).  Once offline, the page
      // says so through the browser's further tries, until a stream opens.
      this.set("reconnecting");
    }
  }

  // A poll answered (or failed): a stream that looks open but whose polls fail is not live.
  polled(ok) {
    if (ok) {
      this.pollFailures = 0;
      if (this.live) this.fresh();
      return;
    }
    this.pollFailures += 1;
    if (this.live && this.pollFailures >= POLL_FAILURES) {
      this.set("reconnecting", "the device does not answer");
      this.open(); // a fresh stream: the old one may be stuck on a dead link
    }
  }

  reconnect() {
    this.retryDelay = 2;
    this.open();
  }

  fresh() {
    if (this.state === "live") this.asOf = new Date();
  }

  set(state, detail) {
    if (state === "live") this.asOf = new Date();
    const changed = state !== this.state;
    this.state = state;
    document.body.dataset.conn = state;
    const status = $("status");
    status.className = state;
    let words = state;
    if (state === "reconnecting") words = "reconnecting\u2026" + (this.asOf ? ` (data as of ${clock(this.asOf)})` : "");
    if (state === "offline") words = "offline" + (detail ? ` \u2014 ${detail}` : "") +
      (this.asOf ? ` (data as of ${clock(this.asOf)})` : "");
    if (state === "connecting") words = "connecting\u2026";
    text(status, words);
    status.title = detail || "";
    $("reconnect").hidden = state !== "offline";
    if (!changed) return;
    clearTimeout(this.offlineTimer);
    if (state === "reconnecting") {
      this.offlineTimer = setTimeout(() => {
        if (this.state === "reconnecting") this.set("offline", (detail ? detail + "; " : "the device does not answer; ") + "retrying");
      }, OFFLINE_AFTER * 1000);
    }
    this.onChange(state);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.es) this.es.close();
    this.es = null;
  }
}
