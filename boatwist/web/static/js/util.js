// Small helpers every part of the console shares: building elements (text
// only: nothing from the server is ever parsed as HTML), formatting times and
// values, and requests.
//
// Every request URL is built from location.origin: on a page opened as
// http://user:password@host/ a relative URL resolves against document.baseURI,
// which keeps the credentials, and fetch() refuses such URLs in both browsers.

export const origin = location.origin;
export const url = path => origin + path;

export const $ = id => document.getElementById(id);

// h("li", {class: "x", dataset: {user: "bob"}, onclick: f}, "text", child, ...)
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

export function text(el, value) {
  const s = String(value);
  if (el.textContent !== s) el.textContent = s;
}

const two = n => String(n).padStart(2, "0");
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

export const clock = d => `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
export const dayOf = d => `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}`;

// "12:01:07" today, "28 Nov 12:01:07" another day.
export function when(at) {
  const d = new Date(at * 1000);
  return dayOf(d) === dayOf(new Date()) ? clock(d) : `${d.getDate()} ${MONTHS[d.getMonth()]} ${clock(d)}`;
}

export function dayTitle(d) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  const label = d.toLocaleDateString(undefined, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
  if (dayOf(d) === dayOf(today)) return "Today, " + label;
  if (dayOf(d) === dayOf(yesterday)) return "Yesterday, " + label;
  return label;
}

export function timeEl(at) {
  const d = new Date(at * 1000);
  return h("time", { datetime: d.toISOString(), title: d.toLocaleString() }, when(at));
}

// 75 -> "1 min 15 s", 7300 -> "2 h 1 min", 200000 -> "2 d 7 h" (no line break inside a number and its unit)
export function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const u = (n, unit) => `${n}\u00a0${unit}`;
  if (s < 60) return u(s, "s");
  if (s < 3600) return u(Math.floor(s / 60), "min") + (s < 600 && s % 60 ? " " + u(s % 60, "s") : "");
  if (s < 86400) return u(Math.floor(s / 3600), "h") + " " + u(Math.floor((s % 3600) / 60), "min");
  return u(Math.floor(s / 86400), "d") + " " + u(Math.floor((s % 86400) / 3600), "h");
}

export function rtt(ms) {
  if (typeof ms !== "number") return "not measured yet";
  if (ms < 1) return `${ms.toFixed(ms < 0.1 ? 3 : 2)} ms`;
  return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
}

function decimals(step) {
  if (typeof step !== "number" || !isFinite(step)) return null;
  const s = String(step);
  return s.includes(".") ? s.split(".")[1].length : 0;
}

// A value as operators read it: on/off, a number at its step's precision, with the unit.
export function formatValue(value, control) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "boolean") return value ? "on" : "off";
  if (typeof value === "number") {
    const d = control ? decimals(control.step) : null;
    const n = d !== null ? value.toFixed(d) : String(Math.round(value * 1000) / 1000);
    return control && control.unit ? `${n} ${control.unit}` : n;
  }
  return String(value);
}

export class HttpError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

// fetch with a deadline; resolves {status, ok, body} (body parsed as JSON when it is JSON).
export async function request(method, path, body, timeout = 8000) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeout);
  try {
    const init = { method, credentials: "same-origin", signal: ctl.signal, headers: {} };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(url(path), init);
    let parsed = null;
    if ((response.headers.get("content-type") || "").includes("json")) parsed = await response.json().catch(() => null);
    return { status: response.status, ok: response.ok, body: parsed || {}, headers: response.headers };
  } catch (e) {
    throw new HttpError(0, { error: e.name === "AbortError" ? "no answer in time" : "connection failed" });
  } finally {
    clearTimeout(timer);
  }
}

export async function getJSON(path, timeout) {
  const r = await request("GET", path, undefined, timeout);
  if (!r.ok) throw new HttpError(r.status, r.body);
  return r.body;
}
