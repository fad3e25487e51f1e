// dnsreg dashboard: lists from the API, then lives on /v1/events (Server-Sent Events).
// No polling: the page asks the server again only when an event says something moved,
// or a `reset` event says the server could not replay what this page missed.
// All data goes into the page through textContent, never as HTML.
"use strict";

const TOKEN_KEY = "dnsreg.token";
const KINDS = ["registered", "replaced", "deregistered", "expired", "health", "maintenance"];
const OUTPUT_SHOWN = 160; // characters of a check's output shown on its card
const $ = (id) => document.getElementById(id);

const state = {
  services: {},        // name -> counts from GET /v1/services
  selected: null,      // the service whose instances are shown
  instances: new Map(),// id -> instance JSON of the selected service
  revision: 0,         // the registry revision the page has seen
  skew: 0,             // server clock minus browser clock, in ms
  source: null,        // the EventSource
  relist: null,        // pending debounced re-list
  recent: new Map(),   // id -> {revision, instance} of events on the selected service
};

// ------------------------------------------------------------------ API
function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (token()) headers.Authorization = "Bearer " + token();
  const resp = await fetch(path, { ...options, headers, cache: "no-store" });
  const date = Date.parse(resp.headers.get("Date") || "");
  if (!Number.isNaN(date)) {
    // The Date header has whole seconds, truncated (RFC 9110 §5.6.7): the server's
    // clock is somewhere in [date, date + 1 s). Take the middle, and treat less than a
    // second either way as no skew, or a 30 s lease on this very machine shows "31s left".
    const skew = date + 500 - Date.now();
    state.skew = Math.abs(skew) < 1000 ? 0 : skew;
  }
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  if (!resp.ok) {
    const why = body && body.error ? body.error : resp.status + " " + resp.statusText;
    throw new Error(why);
  }
  return body;
}

// The last few errors, newest last: a failed re-list right after a refused write must
// not hide the refusal (the operator needs to see both).
const recentErrors = [];

function renderErrors() {
  const box = $("error");
  box.textContent = recentErrors.join("\n");
  box.hidden = recentErrors.length === 0;
}

function showError(message) {
  if (!message) {
    recentErrors.length = 0;
  } else {
    recentErrors.push(message);
    if (recentErrors.length > 3) recentErrors.shift();
    setTimeout(() => {
      const at = recentErrors.indexOf(message);
      if (at >= 0) recentErrors.splice(at, 1);
      renderErrors();
    }, 8000);
  }
  renderErrors();
}

function announce(text) {
  $("announce").textContent = text;
}

// ------------------------------------------------------------------ loading
async function loadServices() {
  const body = await api("/v1/services");
  state.services = body.services;
  state.revision = body.revision; // the list is the truth, even after a server restart
  renderServices();
  return body.revision;
}

async function loadInstances(service) {
  const body = await api("/v1/services/" + encodeURIComponent(service));
  if (state.selected !== service) return;
  const instances = new Map(body.instances.map((i) => [i.id, i]));
  // Events that arrived while the list was on its way are newer than it when their
  // revision is: a list read before a registration must not wipe the registration.
  for (const [id, seen] of state.recent) {
    if (seen.revision <= body.revision) continue;
    if (seen.instance) instances.set(id, seen.instance);
    else instances.delete(id);
  }
  state.instances = instances;
  renderInstances();
}

async function relistAll() {
  try {
    await loadServices();
    if (state.selected) await loadInstances(state.selected);
  } catch (err) {
    showError("Could not load: " + err.message);
  }
}

function scheduleRelist() {
  // Many events in a burst (a deploy) cost one re-list of the counts.
  if (state.relist) return;
  state.relist = setTimeout(async () => {
    state.relist = null;
    try { await loadServices(); } catch (err) { showError("Could not load: " + err.message); }
  }, 150);
}

// ------------------------------------------------------------------ live events
function connect(since) {
  if (state.source) state.source.close();
  // EventSource cannot send an Authorization header; with a token (closed reads) the
  // same stream is read through fetch, which can.
  if (token()) {
    connectWithToken(since);
    return;
  }
  // The browser re-sends Last-Event-ID by itself when it reconnects (HTML §9.2);
  // `since` covers the very first connection, so nothing between the list and the
  // stream is lost.
  const source = new EventSource("/v1/events?since=" + since);
  state.source = source;
  source.onopen = () => setConn(true, "live");
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // The server refused the stream (restarted, or an error status): start over.
      setConn(false, "disconnected, retrying…");
      setTimeout(async () => {
        // Re-list what may have changed meanwhile, then follow from that revision.
        await relistAll();
        connect(state.revision);
      }, 2000);
    } else {
      setConn(false, "reconnecting…");
    }
  };
  for (const kind of KINDS) source.addEventListener(kind, onChange);
  source.addEventListener("reset", () => {
    announce("Missed changes; reloaded the list.");
    relistAll();
  });
}

// The event stream read with fetch: the EventSource parsing rules (HTML §9.2.6) and its
// reconnect behaviour, resuming with the Last-Event-ID header.
function connectWithToken(since) {
  const abort = new AbortController();
  state.source = { close: () => abort.abort() };
  let last = String(since);
  let retry = 1000;
  const dispatch = (kind, data) => {
    if (kind === "reset") {
      announce("Missed changes; reloaded the list.");
      relistAll();
    } else if (KINDS.includes(kind)) {
      onChange({ data });
    }
  };
  const read = async () => {
    while (!abort.signal.aborted) {
      try {
        const resp = await fetch("/v1/events", {
          headers: { Accept: "text/event-stream", Authorization: "Bearer " + token(),
                     "Last-Event-ID": last },
          cache: "no-store",
          signal: abort.signal,
        });
        if (resp.status === 401 || resp.status === 403) {
          const body = await resp.json().catch(() => ({}));
          setConn(false, "not allowed to follow changes");
          showError("Live updates refused: " + (body.error || resp.status));
          return;
        }
        if (!resp.ok || !resp.body) throw new Error("HTTP " + resp.status);
        setConn(true, "live");
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        let ev = { event: "", data: [], id: null };
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let m;
          while ((m = /\r\n|\r|\n/.exec(buf)) !== null) {
            if (m[0] === "\r" && m.index === buf.length - 1) break; // maybe \r\n split
            const line = buf.slice(0, m.index);
            buf = buf.slice(m.index + m[0].length);
            if (line === "") {
              if (ev.id !== null) last = ev.id;
              if (ev.data.length) dispatch(ev.event || "message", ev.data.join("\n"));
              ev = { event: "", data: [], id: null };
              continue;
            }
            if (line.startsWith(":")) continue;
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let val = colon < 0 ? "" : line.slice(colon + 1);
            if (val.startsWith(" ")) val = val.slice(1);
            if (field === "data") ev.data.push(val);
            else if (field === "event") ev.event = val;
            else if (field === "id") ev.id = val;
            else if (field === "retry" && /^\d+$/.test(val)) retry = Number(val);
          }
        }
      } catch (_) {
        if (abort.signal.aborted) return;
      }
      setConn(false, "reconnecting…");
      await new Promise((resolve) => setTimeout(resolve, retry));
    }
  };
  read();
}

function setConn(live, text) {
  const el = $("conn");
  el.textContent = text;
  el.className = "conn " + (live ? "live" : "down");
}

function onChange(ev) {
  let data;
  try { data = JSON.parse(ev.data); } catch (_) { return; }
  state.revision = Math.max(state.revision, data.revision);
  if (data.service === state.selected) {
    state.recent.set(data.id, { revision: data.revision, instance: data.instance || null });
    if (data.instance) state.instances.set(data.id, data.instance);
    else state.instances.delete(data.id);
    queueRender(data.id);
  }
  announce(describeChange(data));
  scheduleRelist();
}

function describeChange(data) {
  const who = data.id + " of " + data.service;
  if (!data.instance) return who + " " + data.kind;
  const i = data.instance;
  if (data.kind === "maintenance") {
    return who + (i.maintenance.enabled ? " in maintenance" : " out of maintenance");
  }
  return who + " " + data.kind + ", " + i.health + (i.served ? "" : ", not served");
}

// ------------------------------------------------------------------ rendering
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

function filterText() {
  return $("filter").value.trim().toLowerCase();
}

function renderServices() {
  const list = $("services");
  const f = filterText();
  const names = Object.keys(state.services).sort();
  const shown = names.filter((n) => !f || n.includes(f) || n === state.selected);
  const focused = document.activeElement && document.activeElement.dataset.service;
  list.replaceChildren(...shown.map((name) => serviceItem(name, state.services[name])));
  $("service-count").textContent = "(" + names.length + ")";
  $("no-services").hidden = names.length > 0;
  if (focused) {
    const again = list.querySelector('[data-service="' + CSS.escape(focused) + '"]');
    if (again) again.focus();
  }
  if (state.selected) renderSummary();
}

function serviceItem(name, c) {
  const badges = el("span", { class: "badges" });
  const add = (n, label, cls) => { if (n) badges.append(el("span", { class: "badge " + cls, text: n + " " + label })); };
  add(c.passing, "passing", "passing");
  add(c.warning, "warning", "warning");
  add(c.critical, "critical", "critical");
  add(c.maintenance, "maintenance", "maint");
  badges.append(el("span", { class: "badge plain", text: c.served + "/" + c.instances + " served" + (c.panic ? " (panic)" : "") }));
  const button = el("button", {
    class: "service", type: "button", "data-service": name,
    "aria-current": String(name === state.selected),
  }, el("span", { class: "name", text: name }), badges);
  button.addEventListener("click", () => select(name, true));
  return el("li", {}, button);
}

function renderSummary() {
  const c = state.services[state.selected];
  $("service-summary").textContent = c
    ? c.instances + " instances, " + c.served + " served" + (c.panic ? " — PANIC MODE: every live instance is served" : "")
    : "no instances registered now";
}

function matches(i, f) {
  if (!f || state.selected.includes(f)) return true;
  const hay = [i.id, i.address, String(i.port), ...i.tags,
    ...Object.entries(i.meta).map(([k, v]) => k + "=" + v)].join(" ").toLowerCase();
  return hay.includes(f);
}

function renderInstances() {
  const list = $("instances");
  const f = filterText();
  const active = document.activeElement;
  const focusId = active && list.contains(active) ? active.closest("[data-id]").dataset.id : null;
  const items = [...state.instances.values()]
    .sort((a, b) => a.id.localeCompare(b.id))
    .filter((i) => matches(i, f))
    .map((i) => instanceItem(i, false));
  list.replaceChildren(...items);
  $("pick").hidden = true;
  if (!state.instances.size) $("pick").textContent = "No instances of " + state.selected + " now.";
  $("pick").hidden = state.instances.size > 0;
  renderSummary();
  if (focusId) {
    const again = list.querySelector('[data-id="' + CSS.escape(focusId) + '"] .toggle');
    if (again) again.focus();
  }
  tick();
}

// Changes are drawn once per frame, and only the cards that changed: a deploy of a
// thousand instances must not redraw a thousand cards a thousand times.
const pending = new Set();
let frame = 0;

function queueRender(id) {
  pending.add(id);
  if (!frame) frame = requestAnimationFrame(flush);
}

function flush() {
  frame = 0;
  const ids = [...pending];
  pending.clear();
  if (ids.length > 100) {
    renderInstances();
    return;
  }
  for (const id of ids) patchInstance(id);
  $("pick").textContent = "No instances of " + state.selected + " now.";
  $("pick").hidden = state.instances.size > 0;
  renderSummary();
  tick();
}

function patchInstance(id) {
  const list = $("instances");
  const old = list.querySelector('[data-id="' + CSS.escape(id) + '"]');
  const i = state.instances.get(id);
  if (!i || !matches(i, filterText())) {
    if (old) old.remove();
    return;
  }
  const node = instanceItem(i, true);
  const hadFocus = old && old.contains(document.activeElement);
  if (old) {
    old.replaceWith(node);
  } else {
    const after = [...list.children].find((li) => li.dataset.id.localeCompare(id) > 0);
    list.insertBefore(node, after || null);
  }
  if (hadFocus) node.querySelector(".toggle").focus();
}

function healthClass(i) {
  return i.maintenance.enabled ? "maint" : i.health;
}

function instanceItem(i, flash) {
  const host = i.address.includes(":") ? "[" + i.address + "]" : i.address;
  const head = el("div", { class: "row" },
    el("h3", { class: "iid", text: i.id }),
    el("span", { class: "addr", text: host + ":" + i.port + "/" + i.proto }),
    el("span", { class: "badge " + i.health, text: i.health }),
    i.maintenance.enabled ? el("span", { class: "badge maint", text: "maintenance" }) : null,
    el("span", { class: "badge plain", text: i.served ? "in DNS" : "not in DNS" }),
    el("span", { class: "lease", "data-deadline": i.lease_deadline == null ? "" : String(i.lease_deadline) }));
  const facts = el("dl", { class: "facts" });
  const fact = (k, v) => facts.append(el("dt", { text: k }), el("dd", { text: v }));
  fact("tags", i.tags.length ? i.tags.join(", ") : "—");
  const meta = Object.entries(i.meta).map(([k, v]) => k + "=" + v);
  fact("meta", meta.length ? meta.join(", ") : "—");
  fact("weight / priority", i.weight + " / " + i.priority);
  if (i.maintenance.enabled) fact("maintenance", i.maintenance.reason || "");
  const checks = el("ul", { class: "checks", "aria-label": "health checks" });
  i.check_status.forEach((c, n) => {
    // The checker's output names its target ("HTTP GET <url>: 500 ..."); say it only if not.
    const what = c.output.includes(c.target) ? "" : c.kind + " " + c.target + ": ";
    const long = c.output.length > OUTPUT_SHOWN;
    const output = el("span", {
      class: "output", text: long ? c.output.slice(0, OUTPUT_SHOWN) + "…" : c.output,
    });
    if (long) output.title = c.output;
    checks.append(el("li", {},
      el("span", { class: "badge " + c.state, text: "c" + n + " " + c.state }), " ",
      what ? el("span", { text: what }) : null, output));
  });
  const toggle = el("button", {
    class: "toggle", type: "button", "aria-pressed": String(i.maintenance.enabled),
    "aria-label": "Maintenance for " + i.id,
  }, i.maintenance.enabled ? "Maintenance: on" : "Maintenance: off");
  toggle.addEventListener("click", () => setMaintenance(i, !i.maintenance.enabled, toggle));
  const item = el("li", {
    class: "instance is-" + healthClass(i) + (flash ? " flash" : ""), "data-id": i.id,
    "aria-label": i.id + ", " + i.health + (i.served ? "" : ", not served"),
  }, head, facts, i.check_status.length ? checks : null, el("div", { class: "actions" }, toggle));
  return item;
}

async function setMaintenance(i, enable, button) {
  button.disabled = true;
  const path = "/v1/services/" + encodeURIComponent(i.service) + "/instances/" +
    encodeURIComponent(i.id) + "/maintenance";
  try {
    await api(path, {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ enable, reason: enable ? "set from the dashboard" : "" }),
    });
    // The change comes back as a `maintenance` event and re-renders the card.
  } catch (err) {
    showError("Maintenance for " + i.id + " not changed: " + err.message);
  } finally {
    button.disabled = false;
  }
}

function tick() {
  // Lease countdowns: a local clock, corrected by the server's Date header.
  const now = (Date.now() + state.skew) / 1000;
  for (const span of document.querySelectorAll(".lease[data-deadline]")) {
    const d = span.dataset.deadline;
    if (!d) { span.textContent = "no lease"; continue; }
    const left = Math.max(0, Number(d) - now);
    span.textContent = "lease " + left.toFixed(0) + "s left";
  }
}

// ------------------------------------------------------------------ selection
async function select(name, focus) {
  state.selected = name;
  state.instances = new Map();
  state.recent = new Map();
  if (location.hash !== "#" + encodeURIComponent(name)) {
    history.replaceState(null, "", "#" + encodeURIComponent(name));
  }
  $("instances-heading").textContent = "Instances of " + name;
  renderServices();
  renderInstances();
  $("pick").hidden = false;
  $("pick").textContent = "Loading…";
  if (focus) $("instances-heading").focus();
  try { await loadInstances(name); } catch (err) { showError("Could not load " + name + ": " + err.message); }
}

// ------------------------------------------------------------------ start
function initToken() {
  const input = $("token");
  input.value = token();
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
    else sessionStorage.removeItem(TOKEN_KEY);
    announce(input.value ? "Token set for this tab." : "Token cleared.");
    restart();
  });
  $("token-clear").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    input.value = "";
    announce("Token cleared.");
    restart();
  });
}

async function restart() {
  // A new token may see what the old one could not: list again, follow from there.
  showError("");
  await relistAll();
  connect(state.revision);
}

async function start() {
  initToken();
  $("filter").addEventListener("input", () => {
    renderServices();
    if (state.selected) renderInstances();
  });
  setInterval(tick, 1000);
  try {
    const status = await api("/v1/status");
    $("zone").textContent = "zone " + status.zone + " · v" + status.version;
  } catch (_) { /* the list below reports the error */ }
  let since = 0;
  try {
    since = await loadServices();
  } catch (err) {
    showError("Could not load services: " + err.message);
  }
  const fromHash = () => {
    const wanted = decodeURIComponent(location.hash.slice(1));
    if (wanted && wanted !== state.selected) select(wanted, false);
  };
  window.addEventListener("hashchange", fromHash); // links, back and forward
  fromHash();
  connect(since);
}

document.addEventListener("DOMContentLoaded", start);
