// sagakit dashboard: plain JavaScript over the JSON API (openapi.json describes it).
// Every text from the server goes into the page through textContent, never as HTML.
// Every URL is relative to the page, so the app works mounted under any prefix (/sagas/).
"use strict";

const TOKEN_KEY = "sagakit.token";
const ACTOR_KEY = "sagakit.actor";
const STATUSES = ["pending", "running", "compensating", "completed", "compensated", "failed", "aborted"];
const TERMINAL = new Set(["completed", "compensated", "failed", "aborted"]);
const STATES = ["done", "running", "waiting", "failed", "compensated", "remaining"];
const SVG_NS = "http://www.w3.org/2000/svg";
const PAGE = 25;

let info = null;
let generation = 0; // bumped on every navigation: stale polls stop drawing

// ---------------------------------------------------------------- helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) if (c) node.append(c);
  return node;
}

function time(t) {
  if (t === null || t === undefined) return "";
  return new Date(t * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// "3 min ago" / "in 20 s", with the absolute time (UTC) on hover.
function ago(t) {
  if (t === null || t === undefined) return "";
  const d = Date.now() / 1000 - t;
  const a = Math.abs(d);
  let text;
  if (a < 1) text = "now";
  else if (a < 60) text = `${Math.round(a)} s`;
  else if (a < 3600) text = `${Math.round(a / 60)} min`;
  else if (a < 86400 * 2) text = `${Math.round(a / 3600)} h`;
  else text = `${Math.round(a / 86400)} days`;
  if (text === "now") return text;
  return d >= 0 ? `${text} ago` : `in ${text}`;
}

function when(t, attrs) {
  if (t === null || t === undefined) return el("span", attrs || {});
  const cls = ["rel", attrs && attrs.class].filter(Boolean).join(" ");
  return el("time", { ...(attrs || {}), class: cls, datetime: new Date(t * 1000).toISOString(), title: time(t), text: ago(t) });
}

function duration(s) {
  if (s === null || s === undefined) return "";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(2)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

// The marker of a choreographed saga: its stages are participants' events observed, not commands sent.
function choreoMark(id) {
  return el("span", { class: "badge choreo", id, text: "choreographed",
    title: "choreographed: the services react to each other's events; this saga observes them" });
}

function badge(status, id) {
  return el("span", { class: `badge st-${status}`, id, "data-status": status, text: status });
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const init = { method: options.method || "GET", headers, credentials: "omit", cache: "no-store" };
  if (options.body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body);
  }
  const res = await fetch(path, init);
  let payload = null;
  try {
    payload = await res.json();
  } catch (e) {
    payload = null;
  }
  if (!res.ok) {
    const err = new Error((payload && payload.error && payload.error.message) || `${res.status} ${res.statusText}`);
    err.status = res.status;
    err.payload = payload;
    throw err;
  }
  return payload;
}

function flash(message, ok) {
  const box = document.getElementById("flash");
  box.textContent = message;
  box.className = `flash ${ok ? "ok" : "bad"}`;
  box.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { box.hidden = true; }, 12000);
}

function problem(err) {
  const status = err.status ? `${err.status}` : "network";
  const code = err.payload && err.payload.error ? ` ${err.payload.error.code}` : "";
  return `refused (${status}${code}): ${err.message}`;
}

// Poll fn every `ms` until the view changes; fn returns a number to change the period.
function poll(fn, ms) {
  const mine = generation;
  const tick = async () => {
    if (mine !== generation) return;
    let next = ms;
    try {
      const r = await fn(mine);
      if (typeof r === "number") next = r;
    } catch (e) {
      if (mine === generation) flash(`could not refresh: ${e.message}`, false);
    }
    if (mine === generation) setTimeout(tick, document.hidden ? Math.max(next, 5000) : next);
  };
  tick();
}

// ---------------------------------------------------------------- token

function showToken() {
  const has = Boolean(token());
  document.getElementById("token-state").textContent = has ? "token set" : "no token";
  document.getElementById("token-forget").hidden = !has;
}

function setupToken() {
  const dialog = document.getElementById("token-dialog");
  document.getElementById("token-set").addEventListener("click", () => {
    document.getElementById("token-input").value = "";
    dialog.showModal();
  });
  document.getElementById("token-cancel").addEventListener("click", () => dialog.close());
  document.getElementById("token-form").addEventListener("submit", () => {
    const value = document.getElementById("token-input").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    showToken();
    if (value && !info) loadInfo().then(route);  // reads were refused without it
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showToken();
    flash("token forgotten: actions will be refused until you set it again", true);
  });
  showToken();
}

// ---------------------------------------------------------------- routing

function route() {
  generation += 1;
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const view = document.getElementById("view");
  view.replaceChildren();
  for (const a of document.querySelectorAll("header nav a")) a.classList.remove("active");
  if (path.startsWith("/saga/")) {
    document.getElementById("nav-sagas").classList.add("active");
    sagaPage(view, decodeURIComponent(path.slice("/saga/".length)));
  } else if (path.startsWith("/sagas")) {
    document.getElementById("nav-sagas").classList.add("active");
    listPage(view, params);
  } else if (path.startsWith("/workers")) {
    document.getElementById("nav-workers").classList.add("active");
    workersPage(view);
  } else if (path.startsWith("/locks")) {
    document.getElementById("nav-locks").classList.add("active");
    locksPage(view);
  } else if (path.startsWith("/definitions")) {
    document.getElementById("nav-definitions").classList.add("active");
    definitionsPage(view);
  } else if (path.startsWith("/schedules")) {
    document.getElementById("nav-schedules").classList.add("active");
    schedulesPage(view);
  } else {
    document.getElementById("nav-overview").classList.add("active");
    overviewPage(view);
  }
}

// ---------------------------------------------------------------- overview

function overviewPage(view) {
  const counts = el("div", { class: "counts", id: "counts" });
  const chart = el("div", { class: "card", id: "throughput" });
  const stuck = el("div", { id: "stuck" });
  const resources = el("div", { id: "resources" });
  view.append(
    el("h1", { text: "Overview" }),
    counts,
    el("h2", { text: "Throughput (last 15 minutes, per minute)" }),
    chart,
    el("h2", { text: "Stuck sagas: failed, or overdue by more than 60 s" }),
    stuck,
    el("h2", { text: "Resources" }),
    resources,
  );
  poll(async (mine) => {
    const [o, r] = await Promise.all([api("api/overview"), api("api/resources")]);
    if (mine !== generation) return;
    resources.replaceChildren(resourcesTable(r.resources));
    counts.replaceChildren(
      el("a", { class: "count", href: "#/sagas" }, el("div", { class: "n", text: o.total }), el("div", { class: "label", text: "all" })),
      ...STATUSES.map((s) =>
        el("a", { class: `count st-${s}`, href: `#/sagas?status=${s}`, "data-count": s },
          el("div", { class: "n", text: o.counts[s] }), el("div", { class: "label", text: s }))),
    );
    chart.replaceChildren(throughputChart(o.throughput), legend(["started", "completed", "compensated", "failed", "aborted"]));
    stuck.replaceChildren(o.stuck.items.length
      ? sagaTable(o.stuck.items, true)
      : el("p", { class: "muted", text: "Nothing is stuck." }));
    if (o.stuck.total > o.stuck.items.length) {
      stuck.append(el("p", {}, el("a", { href: "#/sagas?stuck=60", text: `all ${o.stuck.total} stuck sagas` })));
    }
  }, 2000);
}

function resourcesTable(items) {
  if (!items.length) return el("p", { class: "muted", id: "no-resources", text: "No step has asked for a resource permit." });
  const limit = (x) => [x.concurrency === null ? null : `${x.concurrency} at once`,
    x.rate === null ? null : `${x.rate} per ${x.per} s`].filter(Boolean).join(", ");
  return el("div", { class: "table-wrap" }, el("table", { id: "resources-table" },
    el("thead", {}, el("tr", {}, ["Resource", "Limit", "In use", "Waiting", "Started this window"].map((h) => el("th", { text: h })))),
    el("tbody", {}, items.map((x) => el("tr", { class: "resource", "data-resource": x.name },
      el("td", { class: "mono", text: x.name }),
      el("td", { text: limit(x) }),
      el("td", { class: "num in-use", text: x.in_use }),
      el("td", { class: "num waiting", text: x.waiting }),
      el("td", { class: "num", text: x.rate === null ? "" : x.recent }))))));
}

function throughputChart(buckets) {
  const w = 1300, h = 170, pad = 24;
  const finished = (b) => b.completed + b.compensated + b.failed + b.aborted;
  const max = Math.max(1, ...buckets.map((b) => Math.max(finished(b), b.started)));
  const bw = (w - pad * 2) / Math.max(1, buckets.length);
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": "sagas per minute" });
  root.append(svg("line", { class: "axis", x1: pad, y1: h - pad, x2: w - pad, y2: h - pad }));
  root.append(svg("text", { x: 2, y: 12, text: String(max) }));
  const points = [];
  buckets.forEach((b, i) => {
    let y = h - pad;
    for (const s of ["completed", "compensated", "failed", "aborted"]) {
      const bh = ((h - pad * 2) * b[s]) / max;
      if (bh > 0) {
        y -= bh;
        root.append(svg("rect", { class: `bar-${s}`, x: pad + i * bw + 2, y, width: Math.max(1, bw - 4), height: bh },
          svg("title", { text: `${b[s]} ${s}, ${time(b.start)}` })));
      }
    }
    points.push(`${pad + i * bw + bw / 2},${h - pad - ((h - pad * 2) * b.started) / max}`);
    if (i % 5 === 0) root.append(svg("text", { x: pad + i * bw, y: h - 8, text: time(b.start).slice(11, 16) }));
  });
  root.append(svg("polyline", { class: "started", points: points.join(" ") }));
  return root;
}

function legend(names) {
  return el("div", { class: "legend" }, names.map((n) => el("span", {}, el("i", { class: `l-${n}` }), n)));
}

// ---------------------------------------------------------------- list

const FILTER_FIELDS = [
  ["name", "Name", "text"],
  ["version", "Version", "number"],
  ["correlation_id", "Correlation id", "text"],
  ["key", "Business key (name=value)", "text"],
  ["created_after", "Created after (ISO or Unix)", "text"],
  ["created_before", "Created before", "text"],
  ["updated_after", "Updated after", "text"],
  ["updated_before", "Updated before", "text"],
  ["stuck", "Stuck for more than (s)", "number"],
];

function listPage(view, params) {
  const chosen = new Set(params.getAll("status").flatMap((s) => s.split(",")));
  const form = el("form", { class: "search", id: "search-form" },
    el("fieldset", {}, el("legend", { text: "Status" }),
      STATUSES.map((s) => el("label", {},
        el("input", { type: "checkbox", name: "status", value: s, id: `filter-status-${s}`, checked: chosen.has(s) }), s))),
    FILTER_FIELDS.map(([name, label, type]) => el("label", {}, label,
      el("input", { name, type, id: `filter-${name}`, value: params.get(name) || "", autocomplete: "off" }))),
    el("div", { class: "buttons" },
      el("button", { type: "submit", class: "primary", id: "search-button", text: "Search" }),
      el("button", { type: "button", id: "search-clear", text: "Clear", onclick: () => { location.hash = "#/sagas"; } })),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const box of form.querySelectorAll("input[name=status]:checked")) q.append("status", box.value);
    for (const [name] of FILTER_FIELDS) {
      const v = form.elements[name].value.trim();
      if (v) q.append(name, v);
    }
    location.hash = `#/sagas?${q.toString()}`;
  });
  const results = el("div", { id: "results" });
  const selected = new Set();
  const bulk = bulkBar(selected);
  view.append(el("h1", { text: "Sagas" }), form, bulk.bar, results);
  const offset = Number(params.get("offset") || 0);
  const query = new URLSearchParams(params);
  query.set("limit", String(PAGE));
  query.set("offset", String(offset));
  poll(async (mine) => {
    let page;
    try {
      page = await api(`api/sagas?${query.toString()}`);
    } catch (e) {
      if (mine === generation) results.replaceChildren(el("p", { class: "error", id: "search-error", text: e.message }));
      return 5000;
    }
    if (mine !== generation) return undefined;
    const pager = el("div", { class: "pager" },
      el("span", { id: "result-count", class: "muted",
        text: page.total ? `${offset + 1}-${offset + page.items.length} of ${page.total}` : "no sagas match" }),
      el("button", { type: "button", class: "small", id: "page-prev", disabled: offset === 0,
        onclick: () => go(Math.max(0, offset - PAGE)), text: "Previous" }),
      el("button", { type: "button", class: "small", id: "page-next", disabled: offset + PAGE >= page.total,
        onclick: () => go(offset + PAGE), text: "Next" }));
    const shown = new Set(page.items.map((s) => s.id));
    for (const id of [...selected]) if (!shown.has(id)) selected.delete(id);  // left the page
    bulk.update();
    results.replaceChildren(page.items.length
      ? sagaTable(page.items, false, { selected, onchange: bulk.update })
      : el("p", { class: "muted", text: "No sagas match." }), pager);
    return 2000;
  }, 2000);

  function go(to) {
    const q = new URLSearchParams(params);
    q.set("offset", String(to));
    location.hash = `#/sagas?${q.toString()}`;
  }
}

// A saga table; with `select` ({ selected: Set of ids, onchange }) each row has a checkbox.
function sagaTable(items, overdue, select) {
  const head = ["Id", "Name", "Status", "Steps", "Created", "Updated", overdue ? "Overdue" : null, "Error"].filter(Boolean);
  let all = null;
  if (select) {
    all = el("input", { type: "checkbox", id: "select-all", "aria-label": "select every saga on this page",
      checked: items.length > 0 && items.every((s) => select.selected.has(s.id)),
      onchange: (ev) => {
        for (const s of items) {
          if (ev.target.checked) select.selected.add(s.id);
          else select.selected.delete(s.id);
        }
        for (const box of ev.target.closest("table").querySelectorAll("input.select-row")) box.checked = ev.target.checked;
        select.onchange();
      } });
  }
  const pick = (s) => el("td", { class: "pick" }, el("input", {
    type: "checkbox", class: "select-row", "aria-label": `select saga ${s.id}`, checked: select.selected.has(s.id),
    onchange: (ev) => {
      if (ev.target.checked) select.selected.add(s.id);
      else select.selected.delete(s.id);
      all.checked = items.every((x) => select.selected.has(x.id));
      select.onchange();
    } }));
  return el("div", { class: "table-wrap" }, el("table", { class: "sagas" },
    el("thead", {}, el("tr", {}, select ? el("th", { class: "pick" }, all) : null, head.map((h) => el("th", { text: h })))),
    el("tbody", {}, items.map((s) => el("tr", { class: "saga-row", "data-id": s.id, "data-status": s.status },
      select ? pick(s) : null,
      el("td", { class: "mono id" }, el("a", { href: `#/saga/${encodeURIComponent(s.id)}`, class: "saga-link", text: s.id })),
      el("td", {}, `${s.name} v${s.version}`, s.choreographed ? choreoMark() : null),
      el("td", {}, badge(s.status)),
      el("td", { class: "num", text: `${s.steps_done}/${s.steps_total}` }),
      el("td", {}, when(s.created_at, { class: "created" })),
      el("td", {}, when(s.updated_at, { class: "updated" })),
      overdue
        ? el("td", {
            text: (s.overdue_seconds === null ? "" : duration(s.overdue_seconds)) + (s.parked ? ` — ${s.parked}` : ""),
          })
        : null,
      el("td", { class: "err", text: s.error || "" })))),
  ));
}

// ---------------------------------------------------------------- bulk actions

const BULK_ACTIONS = ["retry", "compensate", "abort"];
const DOES = { retry: "retries", skip: "skips a step of", compensate: "compensates", abort: "aborts", fork: "forks" };

// The bar above the list: how many rows are selected and the actions to apply to them.
function bulkBar(selected) {
  const count = el("span", { id: "bulk-count", class: "muted" });
  const buttons = BULK_ACTIONS.map((name) => el("button", {
    type: "button", class: `small${name === "abort" ? " danger" : ""}`, id: `bulk-${name}`, "data-action": name,
    text: `${name[0].toUpperCase()}${name.slice(1)} selected`,
    onclick: () => confirmBulk(name, [...selected], clearSelection),
  }));
  function clearSelection() {
    selected.clear();
    for (const box of document.querySelectorAll("input.select-row, #select-all")) box.checked = false;
    update();
  }
  const clear = el("button", { type: "button", class: "small", id: "bulk-clear", text: "Clear selection",
    onclick: clearSelection });
  const bar = el("div", { class: "bulk-bar", id: "bulk-bar" }, count, buttons, clear);
  function update() {
    const n = selected.size;
    count.textContent = n ? `${n} selected` : "Select sagas to act on several at once";
    const off = !n || Boolean(info && !info.actions_enabled);
    for (const b of buttons) {
      b.disabled = off;
      b.title = info && !info.actions_enabled ? "actions are disabled on this server" : "";
    }
    clear.hidden = !n;
  }
  update();
  return { bar, update };
}

function confirmBulk(name, ids, done) {
  if (!ids.length) return;
  const dialog = document.getElementById("confirm-dialog");
  const error = document.getElementById("dialog-error");
  document.getElementById("dialog-title").textContent = `${name} ${ids.length} saga(s)?`;
  const listed = ids.slice(0, 8).join(", ") + (ids.length > 8 ? `, and ${ids.length - 8} more` : "");
  document.getElementById("dialog-text").textContent =
    `This ${DOES[name]} each selected saga (${listed}), one by one. A saga whose state does not allow it is left as it is and reported. ` +
    "Each one records your name and reason in its history.";
  document.getElementById("dialog-step-row").hidden = true;
  document.getElementById("dialog-result-row").hidden = true;
  document.getElementById("dialog-reason").value = "";
  document.getElementById("dialog-actor").value = localStorage.getItem(ACTOR_KEY) || "";
  document.getElementById("dialog-token").value = "";
  document.getElementById("dialog-token-row").hidden = Boolean(token());
  error.hidden = true;
  document.getElementById("confirm-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const body = { ids, reason: document.getElementById("dialog-reason").value };
    const actor = document.getElementById("dialog-actor").value.trim();
    if (actor) {
      body.actor = actor;
      localStorage.setItem(ACTOR_KEY, actor);
    }
    const typed = document.getElementById("dialog-token").value.trim();
    if (typed) {
      sessionStorage.setItem(TOKEN_KEY, typed);
      showToken();
    }
    dialog.close();
    try {
      const out = await api(`api/bulk/${name}`, { method: "POST", body });
      const rejected = out.outcomes.filter((o) => o.outcome !== "ok");
      const why = rejected.slice(0, 3).map((o) => `${o.saga_id}: ${o.reason || o.code}`).join("; ");
      flash(`${name}: ${out.ok} ok, ${out.rejected} rejected${why ? ` (${why})` : ""}`, out.rejected === 0);
      done();
    } catch (e) {
      flash(`${name} ${problem(e)}`, false);
    }
  };
  document.getElementById("dialog-cancel").onclick = () => dialog.close();
  dialog.showModal();
}

// ---------------------------------------------------------------- workers

function leasesTable(leases, id) {
  return el("table", { class: "leases", id },
    el("thead", {}, el("tr", {}, ["Saga", "Definition", "Lease ends"].map((h) => el("th", { text: h })))),
    el("tbody", {}, leases.map((l) => el("tr", { class: "lease", "data-saga": l.saga_id },
      el("td", { class: "mono" }, el("a", { href: `#/saga/${encodeURIComponent(l.saga_id)}`, text: l.saga_id })),
      el("td", { text: `${l.name} v${l.version}` }),
      el("td", {}, when(l.expires_at))))));
}

function workersPage(view) {
  const list = el("div", { id: "workers" });
  const orphans = el("div", { id: "orphan-leases" });
  view.append(
    el("h1", { text: "Workers" }),
    el("p", { class: "muted", text: "Engines running now, as they announce themselves to the store: the definitions each runs, its last heartbeat, and the sagas it holds leases on (it is running their steps)." }),
    list, orphans);
  const opened = new Set();  // workers whose leases are unfolded: kept so across refreshes
  const leaseDetails = (x) => {
    const d = el("details", { open: opened.has(x.worker_id) }, el("summary", { text: "sagas" }), leasesTable(x.leases));
    d.addEventListener("toggle", () => { if (d.open) opened.add(x.worker_id); else opened.delete(x.worker_id); });
    return d;
  };
  poll(async (mine) => {
    const w = await api("api/workers");
    if (mine !== generation) return;
    list.replaceChildren(w.workers.length
      ? el("div", { class: "table-wrap" }, el("table", { id: "workers-table" },
        el("thead", {}, el("tr", {}, ["Worker", "Definitions", "Last heartbeat", "Alive until", "Leases"].map((h) => el("th", { text: h })))),
        el("tbody", {}, w.workers.map((x) => el("tr", { class: "worker", "data-worker": x.worker_id },
          el("td", { class: "mono", text: x.worker_id }),
          el("td", { text: x.definitions.map((d) => `${d.name} v${d.version}`).join(", ") || "none" }),
          el("td", {}, x.last_heartbeat === null ? el("span", { class: "muted", text: "unknown" }) : when(x.last_heartbeat, { class: "heartbeat" })),
          el("td", {}, when(x.alive_until)),
          el("td", { class: "leases-cell" },
            el("span", { class: "lease-count", text: `${x.leases.length}` }),
            x.leases.length ? leaseDetails(x) : null))))))
      : el("p", { class: "muted", id: "no-workers", text: "No worker is running: pending sagas wait until one starts." }));
    orphans.replaceChildren(...(w.orphan_leases.length
      ? [el("h2", { text: "Leases of workers that stopped answering" }),
        el("p", { class: "muted", text: "These sagas are taken over by another worker when the lease ends." }),
        leasesTable(w.orphan_leases, "orphans-table")]
      : []),
    ...(w.leases_truncated ? [el("p", { class: "muted", text: "Only the first 1000 leases are shown." })] : []));
  }, 3000);
}

// ---------------------------------------------------------------- semantic locks

function sagaLink(x) {
  return el("a", { class: "mono", href: `#/saga/${encodeURIComponent(x.saga_id)}`, text: x.saga_id });
}

function locksTable(locks, id) {
  return el("div", { class: "table-wrap" }, el("table", { id, class: "locks" },
    el("thead", {}, el("tr", {}, ["Key", "Held by", "Since", "Queued (first in line first)"].map((h) => el("th", { text: h })))),
    el("tbody", {}, locks.map((k) => el("tr", { class: "lock", "data-key": k.key },
      el("td", { class: "mono", text: k.key }),
      el("td", { class: "holder" }, k.holder ? el("span", {}, sagaLink(k.holder), el("span", { class: "muted", text: ` ${k.holder.name || ""}` })) : el("span", { class: "muted", text: "nobody" })),
      el("td", {}, k.holder ? when(k.holder.since) : null),
      el("td", { class: "queue" }, k.queue.length
        ? el("ol", {}, k.queue.map((q) => el("li", { class: "waiter", "data-saga": q.saga_id }, sagaLink(q), el("span", { class: "muted" }, " waiting since ", when(q.since)))))
        : el("span", { class: "muted", text: "none" })))))));
}

function locksPage(view) {
  const list = el("div", { id: "locks" });
  view.append(
    el("h1", { text: "Locks" }),
    el("p", { class: "muted", text: "Business keys held by sagas (locks= on a saga or a step), and the sagas queued for each, first come, first served. A saga holds its keys until it ends, whichever worker runs it." }),
    list);
  poll(async (mine) => {
    const page = await api("api/locks");
    if (mine !== generation) return;
    list.replaceChildren(page.locks.length
      ? locksTable(page.locks, "locks-table")
      : el("p", { class: "muted", id: "no-locks", text: "No saga holds or waits for a lock." }),
    ...(page.truncated ? [el("p", { class: "muted", text: "Only the first 1000 lock entries are shown." })] : []));
  }, 2000);
}

function sagaLocks(page, id) {
  const held = page.locks.filter((k) => k.holder && k.holder.saga_id === id);
  const awaited = page.locks.filter((k) => k.queue.some((q) => q.saga_id === id));
  if (!held.length && !awaited.length) return el("p", { class: "muted", id: "no-saga-locks", text: "This saga holds no lock and waits for none." });
  return el("ul", { id: "saga-locks" },
    ...held.map((k) => el("li", { class: "held", "data-key": k.key }, "holds ", el("code", { text: k.key }), " since ", when(k.holder.since),
      k.queue.length ? el("span", { class: "muted", text: ` (${k.queue.length} waiting)` }) : null)),
    ...awaited.map((k) => {
      const me = k.queue.find((q) => q.saga_id === id);
      return el("li", { class: "awaited", "data-key": k.key }, "waits for ", el("code", { text: k.key }),
        k.holder ? el("span", {}, ", held by ", sagaLink(k.holder)) : el("span", { text: ", behind earlier sagas" }),
        el("span", { class: "muted", text: ` (position ${me.position} in line)` }), " since ", when(me.since));
    }));
}

// ---------------------------------------------------------------- definitions

function definitionsPage(view) {
  const list = el("div", { id: "definitions" });
  view.append(el("h1", { text: "Definitions" }),
    el("p", { class: "muted", text: "Registered with this server or run by a worker: versions, the workers that run them, their sagas per status, their steps." }),
    list);
  let drawn = "";
  poll(async (mine) => {
    const d = await api("api/definitions");
    if (mine !== generation) return;
    const key = JSON.stringify(d);
    if (key === drawn) return;  // unchanged: keep the page (and what is open in it) as it is
    drawn = key;
    list.replaceChildren(...(d.definitions.length ? d.definitions.map((x) => {
      const q = `name=${encodeURIComponent(x.name)}&version=${x.version}`;
      return el("section", { class: "card definition", "data-definition": `${x.name}:${x.version}` },
        el("h2", {}, `${x.name} `, el("span", { class: "muted", text: `v${x.version}` }), " ",
          el("span", { class: `badge ${x.registered ? "st-completed" : "mode"}`, text: x.registered ? "registered here" : "not registered here" }),
          x.choreographed ? choreoMark() : null),
        el("p", { class: "muted", text: `${x.steps === null ? "steps unknown here" : `${x.steps} step(s)`}; run by ${x.workers.length ? x.workers.join(", ") : "no running worker"}` }),
        el("div", { class: "counts small" },
          el("a", { class: "count", href: `#/sagas?${q}`, "data-count": "all" }, el("div", { class: "n", text: x.total }), el("div", { class: "label", text: "all" })),
          ...STATUSES.map((s) => el("a", { class: `count st-${s}`, href: `#/sagas?${q}&status=${s}`, "data-count": s },
            el("div", { class: "n", text: x.counts[s] }), el("div", { class: "label", text: s })))),
        x.graph ? el("div", { class: "graph-wrap" }, drawGraph(x.graph, `graph-${x.name}-${x.version}`)) : null);
    }) : [el("p", { class: "muted", text: "No definition is registered here and no worker is running." })]));
  }, 5000);
}

// ---------------------------------------------------------------- schedules

function schedulesPage(view) {
  const recurring = el("div", { id: "schedules" });
  const waiting = el("div", { id: "scheduled-sagas" });
  view.append(el("h1", { text: "Schedules" }),
    el("p", { class: "muted", text: "Recurring starts (one saga per period of a cron expression, UTC) and sagas stored now to begin later. Stopping a schedule leaves the sagas it started as they are; abort a scheduled saga from its page to cancel it." }),
    el("h2", { text: "Recurring" }), recurring,
    el("h2", { text: "Sagas waiting to begin" }), waiting);
  const stop = async (key) => {
    if (!confirm(`Stop the recurring schedule ${key}? The sagas it started are not touched.`)) return;
    try {
      await api(`api/schedules/${encodeURIComponent(key)}`, { method: "DELETE" });
      flash(`schedule ${key} stopped`, true);
      route();
    } catch (e) {
      flash(`stop ${key} ${problem(e)}`, false);
    }
  };
  poll(async (mine) => {
    const d = await api("api/schedules");
    if (mine !== generation) return;
    const disabled = info && !info.actions_enabled;
    recurring.replaceChildren(d.schedules.length
      ? el("div", { class: "table-wrap" }, el("table", { id: "schedules-table" },
        el("thead", {}, el("tr", {}, ["Key", "Saga", "Cron", "Next", "Last", "Last saga", ""].map((h) => el("th", { text: h })))),
        el("tbody", {}, d.schedules.map((x) => el("tr", { class: "schedule", "data-key": x.key },
          el("td", { class: "mono", text: x.key }),
          el("td", { text: x.version === null ? x.name : `${x.name} v${x.version}` }),
          el("td", { class: "mono", text: x.cron }),
          el("td", {}, when(x.next_at, { class: "next" })),
          el("td", {}, x.last_at === null ? el("span", { class: "muted", text: "never" }) : when(x.last_at)),
          el("td", { class: "mono" }, x.last_saga ? el("a", { href: `#/saga/${encodeURIComponent(x.last_saga)}`, text: x.last_saga.slice(0, 12) }) : ""),
          el("td", {}, el("button", {
            type: "button", class: "danger", "data-unschedule": x.key, disabled: Boolean(disabled),
            title: disabled ? "actions are disabled on this server" : "stop this schedule",
            onclick: () => stop(x.key), text: "Stop",
          })))))))
      : el("p", { class: "muted", id: "no-schedules", text: "No recurring schedule." }));
    waiting.replaceChildren(...(d.scheduled_sagas.length
      ? [el("div", { class: "table-wrap" }, el("table", { id: "scheduled-table" },
        el("thead", {}, el("tr", {}, ["Saga", "Definition", "Begins", "Created"].map((h) => el("th", { text: h })))),
        el("tbody", {}, d.scheduled_sagas.map((x) => el("tr", { class: "scheduled-saga", "data-id": x.id },
          el("td", { class: "mono" }, el("a", { href: `#/saga/${encodeURIComponent(x.id)}`, text: x.id })),
          el("td", { text: `${x.name} v${x.version}` }),
          el("td", {}, when(x.start_at, { class: "begins" })),
          el("td", {}, when(x.created_at)))))))]
      : [el("p", { class: "muted", id: "no-scheduled", text: "No saga is waiting for its start time." })]),
    ...(d.scheduled_truncated ? [el("p", { class: "muted", text: "Only the first 500 pending sagas were looked at." })] : []));
  }, 5000);
}

// ---------------------------------------------------------------- saga page

function sagaPage(view, id) {
  const enc = encodeURIComponent(id);
  const head = el("div", { class: "saga-head" });
  const fields = el("dl", { class: "fields" });
  const waits = el("div", { id: "resource-waits" });
  const actions = el("div", { class: "actions", id: "actions" });
  const graph = el("div", { id: "graph" });
  const attempts = el("div", { id: "timeline" });
  const admin = el("div", { id: "admin-actions" });
  const events = el("details", { id: "events" });
  const data = el("pre", { class: "json", id: "saga-data" });
  const results = el("div", { id: "step-results" });
  const items = el("div", { id: "for-each-items" });
  const family = el("div", { id: "child-sagas" });
  const locks = el("div", { id: "locks-of-saga" });
  view.append(
    el("p", {}, el("a", { href: "#/sagas", text: "← sagas" })),
    head, fields, waits, actions, family,
    el("h2", { text: "Locks" }), locks,
    el("h2", { text: "Graph" }), graph, legend(STATES),
    el("h2", { text: "Timeline" }), attempts,
    el("h2", { text: "Admin actions" }), admin, events,
    el("div", { class: "grid2" },
      el("div", {}, el("h2", { text: "Data (secrets masked)" }), data),
      el("div", {}, el("h2", { text: "Step results" }), results)),
    items,
  );
  let lastAllowed = null;
  poll(async (mine) => {
    let saga;
    try {
      saga = await api(`api/sagas/${enc}`);
    } catch (e) {
      if (mine === generation) head.replaceChildren(el("h1", { class: "error", id: "saga-error", text: e.message }));
      return e.status === 404 ? 10000 : 3000;
    }
    const [g, t, allowed, held] = await Promise.all([
      api(`api/sagas/${enc}/graph`),
      api(`api/sagas/${enc}/timeline`),
      api(`api/sagas/${enc}/actions`),
      api(`api/locks?saga_id=${enc}`),
    ]);
    if (mine !== generation) return undefined;
    head.replaceChildren(el("h1", { text: `${saga.name} v${saga.version}` }), badge(saga.status, "saga-status"),
      saga.choreographed ? choreoMark("saga-choreographed") : null,
      el("span", { class: "mono muted", id: "saga-id", text: saga.id }));
    fields.replaceChildren(...[
      ["error", saga.error], ["correlation id", saga.correlation_id], ["idempotency key", saga.idempotency_key],
      ["created", saga.created_at], ["updated", saga.updated_at],
      saga.status === "pending" && saga.history.some((h) => h.kind === "scheduled") ? ["begins at", saga.wake_at] : ["wakes at", saga.wake_at],
      ["definition", saga.definition_registered ? "registered here" : "not registered here: actions are refused (serve with --app)"],
    ].filter(([, v]) => v).flatMap(([k, v]) => [el("dt", { text: k }),
      typeof v === "number" ? el("dd", {}, when(v)) : el("dd", { class: k === "error" ? "error" : "", text: v })]));
    if (saga.parent) {
      fields.append(el("dt", { text: "parent saga" }), el("dd", { id: "parent-saga" },
        el("a", { href: `#/saga/${encodeURIComponent(saga.parent.id)}`, class: "mono", text: saga.parent.id }),
        ` ${saga.parent.name || ""} (step ${saga.parent.step}) `, badge(saga.parent.status)));
    }
    family.replaceChildren(...(saga.children && saga.children.length ? [childTable(saga.children)] : []));
    const waiting = Object.entries(saga.steps).filter(([, s]) => s.waiting_for && !TERMINAL.has(saga.status));
    waits.replaceChildren(...waiting.map(([n, s]) => el("p", { class: "resource-wait", "data-step": n, "data-resource": s.waiting_for },
      `Step ${n} is waiting for resource `, el("code", { text: s.waiting_for }), ": its attempt starts when a permit is free.")));
    const key = JSON.stringify(allowed);
    if (key !== lastAllowed) {
      lastAllowed = key;
      actions.replaceChildren(...actionButtons(saga, allowed));
    }
    locks.replaceChildren(sagaLocks(held, saga.id));
    graph.replaceChildren(drawGraph(g));
    attempts.replaceChildren(timelineTable(t), t.choreographed ? observedTable(t.observed) : "");
    admin.replaceChildren(t.admin_actions.length ? adminTable(t.admin_actions) : el("p", { class: "muted", text: "None." }));
    events.replaceChildren(el("summary", { text: `All ${t.events.length} history entries` }), eventsTable(t.events));
    data.textContent = json(saga.data);
    results.replaceChildren(resultsTable(saga.steps));
    items.replaceChildren(...itemsTables(saga.steps));
    return TERMINAL.has(saga.status) ? 3000 : 1000;
  }, 1000);
}

function actionButtons(saga, allowed) {
  const disabled = info && !info.actions_enabled;
  return ["retry", "skip", "compensate", "abort", "fork"].map((name) => {
    const a = allowed[name];
    const title = disabled ? "actions are disabled on this server" : (a.allowed ? "" : a.reason || "");
    return el("button", {
      type: "button", "data-action": name, id: `action-${name}`, "data-allowed": String(a.allowed),
      class: [name === "abort" ? "danger" : "", a.allowed ? "" : "not-allowed"].join(" ").trim(),
      title, disabled: Boolean(disabled),
      onclick: () => confirmAction(saga, name, a),
      text: name[0].toUpperCase() + name.slice(1),
    });
  });
}

function confirmAction(saga, name, allowed) {
  const dialog = document.getElementById("confirm-dialog");
  const stepRow = document.getElementById("dialog-step-row");
  const resultRow = document.getElementById("dialog-result-row");
  const select = document.getElementById("dialog-step");
  const error = document.getElementById("dialog-error");
  document.getElementById("dialog-title").textContent = `${name} saga ${saga.id.slice(0, 12)}?`;
  document.getElementById("dialog-text").textContent = allowed.allowed
    ? `This ${DOES[name]} the saga ${saga.name} (now ${saga.status}). It is recorded in its history with your name and reason.`
    : `The state machine will likely refuse this: ${allowed.reason}`;
  stepRow.hidden = !(name === "skip" || name === "fork");
  resultRow.hidden = name !== "skip";
  select.replaceChildren(...((allowed.steps && allowed.steps.length ? allowed.steps : Object.keys(saga.steps))
    .map((s) => el("option", { value: s, text: s }))));
  document.getElementById("dialog-reason").value = "";
  document.getElementById("dialog-actor").value = localStorage.getItem(ACTOR_KEY) || "";
  document.getElementById("dialog-token").value = "";
  document.getElementById("dialog-token-row").hidden = Boolean(token());
  error.hidden = true;
  const form = document.getElementById("confirm-form");
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    const body = { reason: document.getElementById("dialog-reason").value };
    const actor = document.getElementById("dialog-actor").value.trim();
    if (actor) {
      body.actor = actor;
      localStorage.setItem(ACTOR_KEY, actor);
    }
    if (name === "skip") {
      body.step = select.value;
      try {
        body.result = JSON.parse(document.getElementById("dialog-result").value || "null");
      } catch (e) {
        error.textContent = `the result is not JSON: ${e.message}`;
        error.hidden = false;
        return;
      }
    }
    if (name === "fork") body.from_step = select.value;
    const typed = document.getElementById("dialog-token").value.trim();
    if (typed) {
      sessionStorage.setItem(TOKEN_KEY, typed);
      showToken();
    }
    dialog.close();
    try {
      const out = await api(`api/sagas/${encodeURIComponent(saga.id)}/${name}`, { method: "POST", body });
      flash(`${name}: ok${out.status ? ` (saga is ${out.status})` : ""}${out.new_id ? `, new saga ${out.new_id}` : ""}`, true);
      if (out.new_id) location.hash = `#/saga/${encodeURIComponent(out.new_id)}`;
    } catch (e) {
      flash(`${name} ${problem(e)}`, false);
    }
  };
  document.getElementById("dialog-cancel").onclick = () => dialog.close();
  dialog.showModal();
}

function drawGraph(g, id) {
  const W = 170, H = 54, GX = 60, GY = 22, PAD = 16;
  const width = PAD * 2 + Math.max(1, g.layers) * W + Math.max(0, g.layers - 1) * GX;
  const height = PAD * 2 + Math.max(1, g.rows) * H + Math.max(0, g.rows - 1) * GY;
  const pos = {};
  for (const n of g.nodes) pos[n.name] = { x: PAD + n.layer * (W + GX), y: PAD + n.row * (H + GY) };
  const root = svg("svg", { class: "graph", id: id || "graph-svg", viewBox: `0 0 ${width} ${height}`, width, height,
    role: "img", "aria-label": `steps of ${g.name}` });
  const arrow = `${id || "graph-svg"}-arrow`;
  root.append(svg("defs", {}, svg("marker", { id: arrow, viewBox: "0 0 10 10", refX: 9, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { class: "arrow", d: "M0,0 L10,5 L0,10 z" }))));
  for (const e of g.edges) {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) continue;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mid = (x1 + x2) / 2;
    root.append(svg("path", { class: "edge", d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2 - 2},${y2}`,
      "marker-end": `url(#${arrow})`, "data-from": e.from, "data-to": e.to }));
  }
  for (const n of g.nodes) {
    const p = pos[n.name];
    const sub = [n.status, n.attempts ? `×${n.attempts}` : "", n.compensation ? "↺" : "", n.pivot ? "pivot" : "", n.kind !== "local" ? n.kind : ""]
      .filter(Boolean).join(" · ");
    const tip = `${n.name}: ${n.state} (${n.status})${n.error ? `\n${n.error}` : ""}${n.after.length ? `\nafter ${n.after.join(", ")}` : ""}`;
    root.append(svg("g", { class: `node state-${n.state}${n.pivot ? " pivot" : ""}`, "data-step": n.name, "data-state": n.state,
      transform: `translate(${p.x},${p.y})` },
      svg("title", { text: tip }),
      svg("rect", { width: W, height: H, rx: 8 }),
      svg("text", { x: 10, y: 22, text: n.name.length > 22 ? `${n.name.slice(0, 21)}…` : n.name }),
      svg("text", { class: "sub", x: 10, y: 40, text: sub })));
  }
  if (!g.definition_known) {
    return el("div", {}, root, el("p", { class: "muted", text: "The definition is not registered here: steps shown in stored order, without dependencies." }));
  }
  return root;
}

function timelineTable(t) {
  if (!t.attempts.length) return el("p", { class: "muted", text: "No attempts yet." });
  // A choreographed saga's stage waits for its event: its span runs from its turn to the event.
  const direction = (a) => (t.choreographed && a.direction === "action" ? "stage" : a.direction);
  return el("div", { class: "table-wrap" }, el("table", { id: "timeline-attempts" },
    el("thead", {}, el("tr", {}, ["Step", "Direction", "#", "Started", "Duration", "Outcome", "Error"].map((h) => el("th", { text: h })))),
    el("tbody", {}, t.attempts.map((a) => el("tr", { class: "attempt", "data-step": a.step, "data-outcome": a.outcome },
      el("td", { text: a.step }),
      el("td", { text: direction(a) }),
      el("td", { class: "num", text: a.attempt }),
      el("td", {}, when(a.started_at)),
      el("td", { class: "num", text: a.duration === null ? "" : duration(a.duration) }),
      el("td", { class: `outcome-${a.outcome}`, text: a.outcome }),
      el("td", { class: "err" }, a.error || "", a.traceback ? tracebackView(a) : "")))),
  ));
}

// A choreographed saga's observed events: when each came and what it did (a stage passed, kept for its turn, ...).
function observedTable(observed) {
  const title = el("h3", { text: "Observed events" });
  if (!observed.length) return el("div", { id: "observed" }, title, el("p", { class: "muted", text: "No event observed yet." }));
  return el("div", { id: "observed" }, title, el("div", { class: "table-wrap" }, el("table", { id: "observed-events" },
    el("thead", {}, el("tr", {}, ["At", "Stage", "What", "Event"].map((h) => el("th", { text: h })))),
    el("tbody", {}, observed.map((o) => el("tr", { class: "observed", "data-stage": o.stage || "", "data-kind": o.kind },
      el("td", {}, when(o.at)), el("td", { text: o.stage || "(the flow)" }), el("td", { text: o.what }),
      el("td", { text: o.message })))))));
}

// A failed attempt's traceback, folded under its error (kept open across refreshes while open).
const openTracebacks = new Set();
function tracebackView(a) {
  const key = `${a.step}/${a.direction}/${a.attempt}`;
  const details = el("details", { class: "traceback", "data-attempt": key },
    el("summary", { text: "traceback" }), el("pre", { text: a.traceback }));
  details.open = openTracebacks.has(key);
  details.addEventListener("toggle", () => {
    if (details.open) openTracebacks.add(key); else openTracebacks.delete(key);
  });
  return details;
}

function adminTable(items) {
  return el("div", { class: "table-wrap" }, el("table", { id: "admin-table" },
    el("thead", {}, el("tr", {}, ["At", "Action", "Who", "Why"].map((h) => el("th", { text: h })))),
    el("tbody", {}, items.map((a) => el("tr", { class: "admin-action", "data-action": a.action },
      el("td", {}, when(a.at)), el("td", { text: a.action }), el("td", { text: a.actor || "" }),
      el("td", { text: a.reason || "" })))),
  ));
}

function eventsTable(events) {
  return el("table", {},
    el("thead", {}, el("tr", {}, ["At", "Event", "Step", "#", "Message"].map((h) => el("th", { text: h })))),
    el("tbody", {}, events.map((h) => el("tr", {},
      el("td", {}, when(h.at)), el("td", { text: h.kind }), el("td", { text: h.step || "" }),
      el("td", { class: "num", text: h.attempt === null ? "" : h.attempt }), el("td", { text: h.message })))));
}

function childTable(children) {
  return el("div", {}, el("h2", { text: "Child sagas" }), el("div", { class: "table-wrap" }, el("table", { id: "child-table" },
    el("thead", {}, el("tr", {}, ["Step", "Child saga", "Name", "Status"].map((h) => el("th", { text: h })))),
    el("tbody", {}, children.map((c) => el("tr", { "data-child": c.id },
      el("td", { text: c.step }),
      el("td", { class: "mono" }, el("a", { href: `#/saga/${encodeURIComponent(c.id)}`, class: "child-link", text: c.id })),
      el("td", { text: c.name || "" }), el("td", {}, badge(c.status))))))));
}

function resultsTable(steps) {
  return el("div", { class: "table-wrap" }, el("table", {},
    el("thead", {}, el("tr", {}, ["Step", "Status", "Result"].map((h) => el("th", { text: h })))),
    el("tbody", {}, Object.entries(steps).map(([name, s]) => el("tr", {},
      el("td", { text: name }), el("td", { text: s.waiting_for ? `${s.status} (waiting for ${s.waiting_for})` : s.status }),
      el("td", {}, s.result === null ? "" : el("code", { text: JSON.stringify(s.result) })))))));
}

// The items of each for-each step: one table per step, a row per item.
function itemsTables(steps) {
  return Object.entries(steps).filter(([, s]) => Array.isArray(s.items)).map(([name, s]) => {
    const counts = {};
    for (const it of s.items) counts[it.status] = (counts[it.status] || 0) + 1;
    const summary = Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(", ") || "no items";
    return el("section", { class: "for-each", "data-step": name },
      el("h2", { text: `Items of ${name}` }),
      el("p", { class: "muted", text: `for-each step, ${s.status}: ${summary}` }),
      el("div", { class: "table-wrap" }, el("table", { id: `items-${name}` },
        el("thead", {}, el("tr", {}, ["#", "Key", "Item", "Status", "Attempts", "Compensation attempts", "Error"]
          .map((h) => el("th", { text: h })))),
        el("tbody", {}, s.items.map((it) => el("tr", { class: "item", "data-index": String(it.index), "data-status": it.status },
          el("td", { class: "num", text: String(it.index) }),
          el("td", { class: "mono", text: it.key }),
          el("td", {}, el("code", { text: JSON.stringify(it.item) })),
          el("td", {}, badge(it.status), it.uncertain ? el("span", { class: "muted uncertain", text: " uncertain" }) : null),
          el("td", { class: "num", text: String(it.attempts) }),
          el("td", { class: "num", text: String(it.compensation_attempts) }),
          el("td", { class: "error", text: it.error || "" })))))));
  });
}

// ---------------------------------------------------------------- start

async function loadInfo() {
  try {
    info = await api("api/info");
    const badgeEl = document.getElementById("mode-badge");
    if (info.read_only || !info.actions_enabled) {
      badgeEl.textContent = info.read_only ? "read-only" : "actions disabled (no token configured)";
      badgeEl.className = "badge mode";
      badgeEl.hidden = false;
    }
  } catch (e) {
    // A server reachable from the network asks the token for reads too.
    const reads = e.status === 401 ? "this server needs the token to show sagas: press Set token" : null;
    flash(reads || `cannot reach the API: ${e.message}`, false);
  }
}

async function start() {
  setupToken();
  await loadInfo();
  window.addEventListener("hashchange", route);
  route();
}

document.addEventListener("DOMContentLoaded", start);
