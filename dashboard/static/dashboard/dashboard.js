/*
 * AgentCom LLM Registry — live dashboard.
 *
 * Opens a WebSocket to #llm-registry-section[data-ws-path] and keeps a copy of the registry
 * (endpoints by id, resources by host, the fleet summary). A `snapshot` frame (then its
 * `snapshot_part` frames) replaces it; `llm_registry_update` frames are deltas.
 *
 * At 5,000 endpoints the page stays quick because it only ever builds the rows on screen:
 * the table is windowed (spacer rows above and below the rows in view, all rows one height),
 * the order is recomputed only when a sort key or a filter result changed, and a delta for one
 * row touches that row alone. Filters, search and sort live in the URL (?status= &q= &sort=
 * &dir=) so a link shows the same view.
 *
 * Every string from the network is written with textContent / setAttribute, never as HTML.
 */
(function () {
  "use strict";

  const section = document.getElementById("llm-registry-section");
  if (!section) return;

  const $ = (id) => document.getElementById(id);
  const els = {
    badge: $("llm-connection-state"),
    fleet: $("llm-fleet-summary"),
    table: section.querySelector("table.llm-table"),
    body: $("llm-registry-body"),
    empty: $("llm-empty"),
    alert: $("llm-alert"),
    notice: $("llm-notice"),
    form: $("llm-add-form"),
    host: $("llm-add-host"),
    port: $("llm-add-port"),
    name: $("llm-add-name"),
    addBtn: section.querySelector("button.llm-add-btn"),
    search: $("llm-search"),
    resultCount: $("llm-result-count"),
    summary: $("llm-summary"),
    live: $("llm-summary-live"),
    details: $("llm-details"),
    detailsTitle: $("llm-details-title"),
    detailsBody: $("llm-details-body"),
  };

  const GiB = 1024 ** 3;
  const MiB = 1024 ** 2;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const chipsShown = () => (window.innerWidth < 760 ? 1 : 3); // model chips per row before "+N more"
  const fleetChipsShown = () => (window.innerWidth < 760 ? 4 : 12);
  const OVERSCAN = 8; // rows built above and below the window
  const STATUS_RANK = { unhealthy: 0, unknown: 1, healthy: 2 };

  const state = {
    canAdd: section.dataset.canAdd === "true",
    canDelete: section.dataset.canDelete === "true",
    entries: new Map(), // endpoint id -> entry (see makeEntry)
    byHost: new Map(), // host -> Set of ids
    removed: new Set(), // ids removed: a late row for one of them must not bring it back
    resources: new Map(), // host -> ResourcesRow
    fleetModels: {},
    fleetLoaded: {},
    fleetExpanded: false,
    staleAfterSeconds: 90,
    clockOffsetMs: 0, // server_time - Date.now()
    connection: "connecting",
    ws: null,
    attempt: 0,
    reconnectAt: 0,
    addPending: false,
    pendingRemove: null, // {id, label}
    view: { status: "", q: "", sort: "status", dir: "asc" },
    order: [], // entries in view order (filtered, sorted)
    orderDirty: true,
    rowHeight: 0,
    rendered: new Map(), // id -> tr currently in the DOM
    counts: null,
    lastAnnounced: "",
    announceTimer: 0,
    detailsFor: null, // {id, trigger}
    timeline: null, // the open popover's timeline: {id, revision, box, seq}
    metrics: { apply: [], frames: 0, maxFrameChars: 0, firstRowsAt: null },
  };
  window.llmDashboard = state;

  // ---- small helpers ------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  const serverNow = () => Date.now() + state.clockOffsetMs;

  function parseTime(iso) {
    const t = iso ? Date.parse(iso) : NaN;
    return Number.isFinite(t) ? t : null;
  }

  function syncClock(serverTime) {
    const t = parseTime(serverTime);
    if (t !== null) state.clockOffsetMs = t - Date.now();
  }

  const fmtPercent = (p) => `${(Math.round(p * 10) / 10).toFixed(1).replace(/\.0$/, "")}%`;

  function fmtBytes(used, total) {
    const unit = total >= GiB ? GiB : MiB;
    const f = (b) => (Math.round((b / unit) * 10) / 10).toFixed(1).replace(/\.0$/, "");
    return `${f(used)} / ${f(total)} ${unit === GiB ? "GiB" : "MiB"}`;
  }

  function fmtSize(bytes) {
    if (!Number.isFinite(bytes)) return "";
    return bytes >= GiB ? `${(bytes / GiB).toFixed(1)} GiB` : `${Math.round(bytes / MiB)} MiB`;
  }

  function fmtAgo(iso) {
    const t = parseTime(iso);
    if (t === null) return "never";
    const s = Math.max(0, Math.floor((serverNow() - t) / 1000));
    if (s < 60) return `${s}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m ago`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
    return `${Math.floor(s / 86400)}d ago`;
  }

  /** A string that sorts as people read: digit runs padded, so 127.0.10.2 < 127.0.10.100. */
  const naturalKey = (text) => String(text || "").toLowerCase().replace(/\d+/g, (d) => d.padStart(12, "0"));

  /** How the operator names an endpoint: its name and host:port, or host:port alone. */
  function endpointLabel(row) {
    const where = String(row.url || "").replace(/^https?:\/\//, "") || `${row.address}:${row.port}`;
    return row.name ? `"${row.name}" (${where})` : where;
  }

  // ---- connection badge, alert, notice --------------------------------------

  function setConnection(kind) {
    state.connection = kind;
    if (!els.badge) return;
    let text = kind === "live" ? "live" : kind === "loading" ? "loading…" : "connecting…";
    if (kind === "reconnecting") {
      const secs = Math.max(1, Math.ceil((state.reconnectAt - Date.now()) / 1000));
      text = `reconnecting in ${secs}s…`;
    }
    els.badge.className = `conn-badge conn-${kind}`;
    if (els.badge.textContent !== text) els.badge.textContent = text;
  }

  function showAlert(message) {
    if (!els.alert) return;
    els.alert.textContent = message || "";
    els.alert.hidden = !message;
  }

  function showNotice(message) {
    if (els.notice) els.notice.textContent = message || "";
  }

  function setAddPending(pending) {
    state.addPending = pending;
    if (els.addBtn) els.addBtn.disabled = pending;
  }

  // ---- entries: rows plus what sorting and searching need -------------------

  function resourceFor(host) {
    const res = state.resources.get(host);
    if (!res || res.stale) return null;
    if (res._t === undefined) Object.defineProperty(res, "_t", { value: parseTime(res.reported_at) });
    const t = res._t;
    if (t === null || serverNow() - t > state.staleAfterSeconds * 1000) return null;
    return res;
  }

  const isStale = (host) => state.resources.has(host) && resourceFor(host) === null;

  function gpuPercents(res) {
    const gpus = (res.gpus || []).filter((g) => Number(g.memory_total_bytes) > 0);
    if (gpus.length) return gpus.map((g) => (100 * (g.memory_used_bytes || 0)) / g.memory_total_bytes);
    if (res.vram_total_bytes) return [(100 * (res.vram_used_bytes || 0)) / res.vram_total_bytes];
    return [];
  }

  /** Numbers the resource columns sort by (-1: unknown, sorts last ascending). */
  function resourceNumbers(host) {
    const res = resourceFor(host);
    if (!res) return { cpu: -1, ram: -1, vram: -1 };
    const ramTotal = Number(res.ram_total_bytes) || 0;
    const gpus = gpuPercents(res);
    return {
      cpu: Number(res.cpu_percent) || 0,
      ram: ramTotal ? (100 * res.ram_used_bytes) / ramTotal : -1,
      vram: gpus.length ? Math.max(...gpus) : -1, // as full as the fullest GPU
    };
  }

  function makeEntry(row, old) {
    const models = (row.models || []).slice().sort(
      (a, b) => Number(!!b.loaded) - Number(!!a.loaded) || String(a.name).localeCompare(String(b.name))
    );
    const search = [row.host, row.address, row.name, row.url, ...models.map((m) => m.name)].join("\n").toLowerCase();
    const errors = old ? old.errors : [];
    if (row.last_error && (!old || old.row.last_error !== row.last_error)) {
      errors.unshift({ at: row.last_checked_at, error: row.last_error });
      errors.length = Math.min(errors.length, 5);
    }
    return {
      row,
      models,
      search,
      errors,
      hostKey: `${naturalKey(row.host)}\u0000${String(row.port).padStart(5, "0")}`,
      sig: JSON.stringify(row),
    };
  }

  function indexHost(id, host, add) {
    let ids = state.byHost.get(host);
    if (add) {
      if (!ids) state.byHost.set(host, (ids = new Set()));
      ids.add(id);
    } else if (ids) {
      ids.delete(id);
      if (!ids.size) state.byHost.delete(host);
    }
  }

  function matches(entry) {
    const v = state.view;
    if (v.status === "stale") {
      if (!isStale(entry.row.host)) return false;
    } else if (v.status && entry.row.status !== v.status) return false;
    return !v.q || entry.search.includes(v.q.toLowerCase());
  }

  function sortValue(entry) {
    const s = state.view.sort;
    if (s === "status") return STATUS_RANK[entry.row.status] ?? 1;
    if (s === "checked") return parseTime(entry.row.last_checked_at) ?? -1;
    if (s === "cpu" || s === "ram" || s === "vram") return resourceNumbers(entry.row.host)[s];
    return 0; // host: the tie-break alone
  }

  function recomputeOrder() {
    const dir = state.view.dir === "desc" ? -1 : 1;
    const list = [];
    for (const entry of state.entries.values()) {
      if (!matches(entry)) continue;
      entry.sortValue = sortValue(entry);
      list.push(entry);
    }
    list.sort((a, b) => {
      if (a.sortValue !== b.sortValue) return (a.sortValue < b.sortValue ? -1 : 1) * dir;
      if (a.hostKey === b.hostKey) return 0;
      return (a.hostKey < b.hostKey ? -1 : 1) * (state.view.sort === "host" ? dir : 1);
    });
    state.order = list;
    state.orderDirty = false;
  }

  /** Store a row; return whether the view order or filter result may have changed. */
  function upsertRow(row) {
    if (!row || row.id === undefined || row.id === null || state.removed.has(row.id)) return false;
    const old = state.entries.get(row.id);
    // Updates from several hub processes may cross; a row older than the one shown is stale.
    if (old && (row.revision ?? 0) < (old.row.revision ?? 0)) return false;
    const entry = makeEntry(row, old);
    if (old && old.sig === entry.sig) return false;
    if (old && old.row.host !== row.host) indexHost(row.id, old.row.host, false);
    indexHost(row.id, row.host, true);
    state.entries.set(row.id, entry);
    const tr = state.rendered.get(row.id);
    if (tr) {
      const fresh = buildRow(entry);
      tr.replaceWith(fresh);
      state.rendered.set(row.id, fresh);
    }
    // Re-sort only when this change can move the row or change what the filters show.
    const moved =
      !old ||
      old.hostKey !== entry.hostKey ||
      old.row.status !== row.status ||
      (state.view.q && old.search !== entry.search) ||
      (state.view.sort === "checked" && old.row.last_checked_at !== row.last_checked_at);
    if (moved) state.orderDirty = true;
    return moved;
  }

  function removeRow(id) {
    state.removed.add(id);
    const entry = state.entries.get(id);
    if (!entry) return;
    indexHost(id, entry.row.host, false);
    state.entries.delete(id);
    state.orderDirty = true;
  }

  // ---- cells --------------------------------------------------------------

  function statusCell(row) {
    const status = ["healthy", "unhealthy"].includes(row.status) ? row.status : "unknown";
    const dot = el("span", `llm-status-dot llm-status-${status}`);
    dot.setAttribute("aria-hidden", "true");
    dot.setAttribute("title", status);
    return [dot, el("span", "visually-hidden", status)];
  }

  function hostCell(entry) {
    const row = entry.row;
    const btn = el("button", "llm-host-btn");
    btn.type = "button";
    btn.setAttribute("aria-haspopup", "dialog");
    btn.setAttribute("aria-label", `Details of ${endpointLabel(row)}`);
    if (row.name) btn.appendChild(el("span", "llm-name", row.name));
    const where = el("span", row.name ? "llm-host llm-host-secondary" : "llm-host", row.host);
    btn.appendChild(where);
    btn.addEventListener("click", () => openDetails(row.id, btn));
    const nodes = [btn];
    // A sidecar may name its machine apart from the address its Ollama answers at.
    if (row.address && row.address !== row.host) nodes.push(el("div", "llm-host llm-host-secondary", row.address));
    if (row.status === "unhealthy" && row.last_error) {
      nodes.push(el("div", "llm-last-error", row.last_error));
    } else if (row.status === "healthy") {
      const meta = [row.version ? `v${row.version}` : "", Number.isFinite(row.latency_ms) ? `${row.latency_ms} ms` : ""];
      const text = meta.filter(Boolean).join(" · ");
      if (text) nodes.push(el("div", "llm-meta", text));
    }
    return nodes;
  }

  function modelTag(m, live) {
    const tag = el("span", m.loaded && live ? "llm-model llm-model-loaded" : "llm-model");
    if (m.loaded && live) {
      tag.appendChild(el("span", "llm-model-marker", "●")).setAttribute("aria-hidden", "true");
      tag.appendChild(el("span", "visually-hidden", "loaded: "));
    }
    tag.appendChild(document.createTextNode(m.name || "?"));
    const facts = [m.family, m.parameter_size, m.quantization, m.size ? `${fmtSize(m.size)} on disk` : ""];
    let title = facts.filter(Boolean).join(" · ");
    if (m.loaded && live) {
      const vram = Number.isFinite(m.size_vram) ? `${fmtSize(m.size_vram)} in VRAM` : "VRAM unknown";
      title = `loaded — ${vram}${title ? `\n${title}` : ""}`;
    }
    if (title) tag.setAttribute("title", title);
    return tag;
  }

  function modelsCell(entry) {
    const models = entry.models;
    if (!models.length) return [el("span", "muted", "—")];
    // A down endpoint's models are what it last said, not what it serves now.
    const live = entry.row.status === "healthy";
    const box = el("div", live ? "llm-models" : "llm-models llm-models-stale");
    if (!live) {
      const tag = el("span", "llm-last-known", "last known");
      tag.setAttribute("title", "The endpoint is not answering: these are the models it last listed");
      box.appendChild(tag);
    }
    const cap = chipsShown();
    box.append(...models.slice(0, cap).map((m) => modelTag(m, live)));
    if (models.length > cap) {
      const more = el("button", "llm-models-more", `+${models.length - cap} more`);
      more.type = "button";
      more.setAttribute("aria-haspopup", "dialog");
      more.setAttribute("aria-label", `All ${models.length} models of ${endpointLabel(entry.row)}`);
      more.addEventListener("click", () => openDetails(entry.row.id, more));
      box.appendChild(more);
    }
    return [box];
  }

  function bar(kind, percent, title, extraClass) {
    const p = Math.min(100, Math.max(0, Number(percent) || 0));
    const box = el("div", `resource-bar-container${extraClass ? ` ${extraClass}` : ""}`);
    const level = p >= 90 ? "level-crit" : p >= 70 ? "level-warn" : "level-ok";
    const fill = el("div", `resource-bar resource-bar-${kind} ${level}`);
    fill.style.width = `${Math.round(p * 10) / 10}%`;
    box.setAttribute("title", title);
    box.appendChild(fill);
    return box;
  }

  function labelled(bars, percent, title, sr) {
    const wrap = el("div", "resource");
    wrap.setAttribute("title", title);
    const stack = el("div", "resource-bars");
    stack.append(...bars);
    const label = el("span", "resource-label", fmtPercent(percent));
    wrap.append(stack, label, el("span", "visually-hidden", sr));
    return wrap;
  }

  function placeholder(className, text, title) {
    const node = el("span", className, text);
    node.setAttribute("title", title);
    return node;
  }

  function gpuLine(g) {
    const mem = fmtBytes(g.memory_used_bytes || 0, g.memory_total_bytes || 0);
    const util = Number.isFinite(g.utilization_percent) ? `, ${fmtPercent(g.utilization_percent)} busy` : "";
    return `GPU ${g.index}: ${g.name || "GPU"} — ${mem}${util}`;
  }

  function resourceNodes(host) {
    const res = resourceFor(host);
    if (!res) {
      const why = state.resources.has(host)
        ? "unknown — no recent report from this host's sidecar"
        : "unknown — no sidecar reports for this host";
      return [1, 2, 3].map(() => placeholder("resource-unknown", "unknown", why));
    }
    const cpuP = Number(res.cpu_percent) || 0;
    const cpu = labelled([bar("cpu", cpuP, fmtPercent(cpuP))], cpuP, fmtPercent(cpuP), " CPU");
    const ramTotal = Number(res.ram_total_bytes) || 0;
    let ram;
    if (ramTotal) {
      const p = (100 * res.ram_used_bytes) / ramTotal;
      const title = fmtBytes(res.ram_used_bytes, ramTotal);
      ram = labelled([bar("ram", p, title)], p, title, ` RAM, ${title}`);
    } else ram = placeholder("resource-unknown", "unknown", "RAM not reported");
    const gpus = gpuPercents(res);
    let vram;
    if (!gpus.length) {
      vram = placeholder("resource-na", "N/A", "No GPU reported on this host");
    } else {
      // One mini-bar per GPU; the host is as full as its fullest GPU.
      const cards = (res.gpus || []).filter((g) => Number(g.memory_total_bytes) > 0);
      const titles = cards.length ? cards.map(gpuLine) : [fmtBytes(res.vram_used_bytes || 0, res.vram_total_bytes)];
      const bars = gpus.slice(0, 8).map((p, i) => bar("vram", p, titles[i], "resource-gpu"));
      const top = Math.max(...gpus);
      const sr = cards.length > 1 ? ` VRAM of the fullest of ${cards.length} GPUs` : " VRAM";
      vram = labelled(bars, top, titles.join("\n"), sr);
    }
    return [cpu, ram, vram];
  }

  function removeButton(row, text) {
    const label = endpointLabel(row);
    const btn = el("button", "llm-remove-btn", text);
    btn.type = "button";
    btn.setAttribute("aria-label", `Remove endpoint ${label}`);
    btn.addEventListener("click", () => {
      if (!window.confirm(`Remove endpoint ${label}?`)) return;
      if (send({ type: "remove_llm_endpoint", id: row.id })) state.pendingRemove = { id: row.id, label };
    });
    return btn;
  }

  function actionsCell(row) {
    if (row.source !== "manual" || !state.canDelete) return [];
    return [removeButton(row, "Remove")];
  }

  function applyPermissionClasses() {
    els.table.classList.toggle("no-actions", !state.canDelete);
  }

  function buildRow(entry) {
    const row = entry.row;
    const tr = el("tr", `llm-row llm-row-${row.status || "unknown"}`);
    tr.setAttribute("data-endpoint-id", String(row.id));
    const cell = (className, nodes) => {
      const td = el("td", className);
      td.append(...nodes);
      tr.appendChild(td);
    };
    cell("cell-status", statusCell(row));
    cell("cell-host", hostCell(entry));
    cell("cell-port num", [document.createTextNode(String(row.port ?? ""))]);
    cell("cell-models", modelsCell(entry));
    cell("cell-source", [el("span", `llm-source llm-source-${row.source}`, row.source || "")]);
    const res = resourceNodes(row.host);
    cell("cell-res cell-cpu", withSpark(row.host, 0, res[0]));
    cell("cell-res cell-ram", [res[1]]);
    cell("cell-res cell-vram", withSpark(row.host, 2, res[2]));
    const checked = el("span", "llm-checked", fmtAgo(row.last_checked_at));
    const abs = parseTime(row.last_checked_at);
    checked.setAttribute("title", abs === null ? "never probed" : new Date(abs).toLocaleString());
    cell("cell-checked", [checked]);
    cell("cell-actions", actionsCell(row));
    tr.resKey = resourceKey(row.host);
    return tr;
  }

  function resourceKey(host) {
    const res = resourceFor(host);
    return res ? `${res.reported_at}|${res.cpu_percent}|${res.ram_used_bytes}|${res.vram_used_bytes}` : "none";
  }

  function refreshResources(id) {
    const tr = state.rendered.get(id);
    const entry = state.entries.get(id);
    if (!tr || !entry) return;
    const key = resourceKey(entry.row.host);
    if (key === tr.resKey) return;
    tr.resKey = key;
    const res = resourceNodes(entry.row.host);
    tr.querySelectorAll("td.cell-res").forEach((td, i) => td.replaceChildren(...withSpark(entry.row.host, i, res[i])));
  }

  // ---- the window of rows -------------------------------------------------

  function spacer(className) {
    const tr = el("tr", `llm-spacer ${className}`);
    tr.setAttribute("aria-hidden", "true");
    const td = el("td");
    tr.appendChild(td);
    return tr;
  }
  const topSpacer = spacer("llm-spacer-top");
  const bottomSpacer = spacer("llm-spacer-bottom");

  /** Spacer cells span the columns shown now (narrow screens hide some): a wider span would add phantom columns. */
  function fitSpacers() {
    const shown = [...els.table.querySelectorAll("thead th")].filter((th) => getComputedStyle(th).display !== "none");
    for (const s of [topSpacer, bottomSpacer]) if (s.firstChild.colSpan !== shown.length) s.firstChild.colSpan = shown.length;
  }

  function measureRowHeight() {
    const any = state.rendered.values().next().value;
    if (any && any.offsetHeight) state.rowHeight = any.offsetHeight;
  }

  /** Put the rows that are (nearly) on screen in the table; reuse the ones already there. */
  function renderWindow() {
    if (state.orderDirty) recomputeOrder();
    const order = state.order;
    const rowH = state.rowHeight || 64;
    const top = els.body.getBoundingClientRect().top + window.scrollY;
    const first = Math.max(0, Math.floor((window.scrollY - top) / rowH) - OVERSCAN);
    const count = Math.ceil(window.innerHeight / rowH) + 2 * OVERSCAN;
    const last = Math.min(order.length, first + count);
    const wanted = new Map();
    for (let i = first; i < last; i++) wanted.set(order[i].row.id, order[i]);
    for (const [id, tr] of state.rendered) {
      if (!wanted.has(id)) {
        tr.remove();
        state.rendered.delete(id);
      }
    }
    const rows = [];
    for (const [id, entry] of wanted) {
      let tr = state.rendered.get(id);
      if (!tr) {
        tr = buildRow(entry);
        state.rendered.set(id, tr);
      }
      rows.push(tr);
    }
    // Keep DOM order = view order, moving only rows out of place; spacers only when needed.
    const needTop = first > 0;
    const needBottom = last < order.length;
    if (!needTop) topSpacer.remove();
    else if (els.body.firstElementChild !== topSpacer) els.body.prepend(topSpacer);
    let cursor = needTop ? topSpacer.nextElementSibling : els.body.firstElementChild;
    for (const tr of rows) {
      if (tr === cursor) cursor = cursor.nextElementSibling;
      else els.body.insertBefore(tr, cursor);
    }
    if (!needBottom) bottomSpacer.remove();
    else if (els.body.lastElementChild !== bottomSpacer) els.body.appendChild(bottomSpacer);
    topSpacer.firstChild.style.height = `${first * rowH}px`;
    bottomSpacer.firstChild.style.height = `${Math.max(0, order.length - last) * rowH}px`;
    if (!state.rowHeight && rows.length) {
      measureRowHeight();
      if (state.rowHeight && state.rowHeight !== rowH) renderWindow();
    }
    if (state.metrics.firstRowsAt === null && rows.length) state.metrics.firstRowsAt = performance.now();
    if (rows.length) wantSparks();
  }

  let scrollQueued = false;
  function onScroll() {
    if (scrollQueued) return;
    scrollQueued = true;
    window.requestAnimationFrame(() => {
      scrollQueued = false;
      renderWindow();
    });
  }

  // ---- summary, counts, fleet ----------------------------------------------

  function countAll() {
    const counts = { all: 0, healthy: 0, unhealthy: 0, unknown: 0, stale: 0 };
    for (const entry of state.entries.values()) {
      counts.all += 1;
      const s = entry.row.status in STATUS_RANK ? entry.row.status : "unknown";
      counts[s] += 1;
    }
    for (const host of state.byHost.keys()) if (isStale(host)) counts.stale += 1;
    return counts;
  }

  function renderSummary() {
    const counts = countAll();
    const same = state.counts && Object.keys(counts).every((k) => counts[k] === state.counts[k]);
    state.counts = counts;
    for (const node of els.summary.querySelectorAll("[data-count]")) {
      const text = counts[node.dataset.count].toLocaleString("en");
      if (node.textContent !== text) node.textContent = text;
    }
    els.empty.hidden = counts.all > 0;
    const shown = state.order.length;
    const text =
      shown === counts.all ? "" : `${shown.toLocaleString("en")} of ${counts.all.toLocaleString("en")} endpoints shown`;
    if (els.resultCount.textContent !== text) els.resultCount.textContent = text;
    if (!same && state.connection !== "loading") announce(counts);
  }

  /** Tell screen readers the counts when they change, at most every few seconds, never per row. */
  function announce(counts) {
    const n = (k) => counts[k].toLocaleString("en");
    const text =
      `${n("unhealthy")} unhealthy, ${n("unknown")} unknown, ${n("healthy")} healthy endpoints; ` +
      `${n("stale")} ${counts.stale === 1 ? "host" : "hosts"} with stale resources.`;
    if (text === state.lastAnnounced) return;
    window.clearTimeout(state.announceTimer);
    state.announceTimer = window.setTimeout(() => {
      state.lastAnnounced = text;
      els.live.textContent = text;
    }, 1500);
  }

  function renderFleet() {
    const items = Object.entries(state.fleetModels || {}).filter(([, n]) => Number(n) > 0);
    items.sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const cap = fleetChipsShown();
    const shown = state.fleetExpanded ? items : items.slice(0, cap);
    const chips = shown.map(([name, n]) => {
      const loaded = Number((state.fleetLoaded || {})[name]) || 0;
      const hosts = `${n} ${Number(n) === 1 ? "host" : "hosts"}`;
      const chip = el("button", loaded ? "llm-fleet-chip llm-fleet-chip-loaded" : "llm-fleet-chip");
      chip.type = "button";
      chip.textContent = `${name} (${hosts}${loaded ? `, loaded on ${loaded}` : ""})`;
      chip.setAttribute("title", `Show the endpoints holding ${name}`);
      chip.addEventListener("click", () => setView({ q: name, status: "" }));
      // Where an agent would be sent for this model (GET /api/v1/route), asked when opened.
      const where = el("button", "llm-fleet-route", "▸");
      where.type = "button";
      where.dataset.model = name;
      where.setAttribute("aria-label", `Where to run ${name}`);
      where.setAttribute("title", `Where to run ${name}: the best endpoints, and why`);
      where.addEventListener("click", () => openRoute(name, where));
      const item = el("span", "llm-fleet-item");
      item.append(chip, where);
      return item;
    });
    if (items.length > cap) {
      const more = el("button", "fleet-more", state.fleetExpanded ? "show fewer" : `+${items.length - cap} more`);
      more.type = "button";
      more.setAttribute("aria-expanded", String(state.fleetExpanded));
      more.addEventListener("click", () => {
        state.fleetExpanded = !state.fleetExpanded;
        renderFleet();
      });
      chips.push(more);
    }
    if (!chips.length) chips.push(el("span", "fleet-empty", "no reachable endpoint holds a model yet"));
    els.fleet.replaceChildren(...chips);
  }

  // ---- view state: filter, search, sort, all in the URL ------------------------

  function readView() {
    const params = new URLSearchParams(window.location.search);
    const status = params.get("status") || "";
    const sort = params.get("sort") || "status";
    state.view = {
      status: ["healthy", "unhealthy", "unknown", "stale"].includes(status) ? status : "",
      q: params.get("q") || "",
      sort: ["status", "host", "cpu", "ram", "vram", "checked"].includes(sort) ? sort : "status",
      dir: params.get("dir") === "desc" ? "desc" : "asc",
    };
  }

  function writeView() {
    const params = new URLSearchParams();
    const v = state.view;
    if (v.status) params.set("status", v.status);
    if (v.q) params.set("q", v.q);
    if (v.sort !== "status" || v.dir !== "asc") {
      params.set("sort", v.sort);
      params.set("dir", v.dir);
    }
    const query = params.toString();
    const url = `${window.location.pathname}${query ? `?${query}` : ""}`;
    if (url !== `${window.location.pathname}${window.location.search}`) window.history.replaceState(null, "", url);
  }

  function renderViewControls() {
    const v = state.view;
    for (const btn of els.summary.querySelectorAll("button[data-filter]")) {
      btn.setAttribute("aria-pressed", String(btn.dataset.filter === v.status));
    }
    if (els.search.value !== v.q) els.search.value = v.q;
    for (const th of els.table.querySelectorAll("thead th")) {
      const btn = th.querySelector("button.llm-sort");
      if (!btn) continue;
      th.setAttribute("aria-sort", btn.dataset.sort === v.sort ? (v.dir === "asc" ? "ascending" : "descending") : "none");
    }
  }

  function setView(change) {
    Object.assign(state.view, change);
    state.orderDirty = true;
    writeView();
    renderViewControls();
    renderWindow();
    renderSummary();
  }

  // ---- details popover ---------------------------------------------------

  function detailsSection(title, nodes) {
    const box = el("section", "details-section");
    box.append(el("h4", null, title), ...nodes);
    return box;
  }

  function detailsTable(head, rows) {
    const table = el("table", "details-table");
    const tr = el("tr");
    head.forEach((h) => {
      const th = el("th", null, h);
      th.scope = "col";
      tr.appendChild(th);
    });
    const thead = el("thead");
    thead.appendChild(tr);
    const tbody = el("tbody");
    rows.forEach((cells) => {
      const r = el("tr");
      cells.forEach((c) => r.appendChild(el("td", null, c)));
      tbody.appendChild(r);
    });
    table.append(thead, tbody);
    return table;
  }

  function fillDetails(entry) {
    const row = entry.row;
    els.detailsTitle.textContent = row.name ? `${row.name} — ${endpointLabel({ ...row, name: "" })}` : endpointLabel(row);
    const parts = [];
    const facts = [
      `Status: ${row.status}${row.consecutive_failures ? ` (${row.consecutive_failures} failed probes in a row)` : ""}`,
      `Host: ${row.host}${row.address !== row.host ? ` (answers at ${row.address})` : ""}`,
      `Source: ${row.source}`,
      `Ollama: ${row.version ? `v${row.version}` : "version unknown"}${Number.isFinite(row.latency_ms) ? `, ${row.latency_ms} ms` : ""}`,
      `Last checked: ${fmtAgo(row.last_checked_at)}`,
      `Uptime: ${fmtUptime(row.uptime_24h)} over 24 h, ${fmtUptime(row.uptime_7d)} over 7 days`,
    ];
    parts.push(detailsSection("Endpoint", facts.map((f) => el("p", null, f))));
    const errors = entry.errors.length ? entry.errors : row.last_error ? [{ at: row.last_checked_at, error: row.last_error }] : [];
    if (errors.length) {
      const list = el("ul", "details-errors");
      errors.forEach((e) => list.appendChild(el("li", null, `${fmtAgo(e.at)}: ${e.error}`)));
      parts.push(detailsSection("Recent errors (seen since this page opened)", [list]));
    }
    const live = row.status === "healthy";
    const modelRows = entry.models.map((m) => [
      m.name,
      [m.parameter_size, m.quantization].filter(Boolean).join(" "),
      fmtSize(m.size),
      m.loaded ? (live ? `loaded${Number.isFinite(m.size_vram) ? `, ${fmtSize(m.size_vram)} VRAM` : ""}` : "was loaded") : "",
    ]);
    parts.push(
      detailsSection(live ? `Models (${modelRows.length})` : `Models, last known (${modelRows.length})`, [
        modelRows.length ? detailsTable(["Model", "Size", "On disk", "Loaded"], modelRows) : el("p", null, "none"),
      ])
    );
    const res = state.resources.get(row.host);
    if (res) {
      const fresh = resourceFor(row.host) !== null;
      const lines = [
        `Reported ${fmtAgo(res.reported_at)}${fresh ? "" : " — stale, numbers not current"}`,
        `CPU ${fmtPercent(Number(res.cpu_percent) || 0)}; RAM ${fmtBytes(res.ram_used_bytes || 0, res.ram_total_bytes || 0)}`,
      ];
      const gpus = (res.gpus || []).map((g) => [
        `GPU ${g.index}`,
        g.name || "GPU",
        fmtBytes(g.memory_used_bytes || 0, g.memory_total_bytes || 0),
        g.memory_total_bytes ? fmtPercent((100 * g.memory_used_bytes) / g.memory_total_bytes) : "",
        Number.isFinite(g.utilization_percent) ? fmtPercent(g.utilization_percent) : "",
      ]);
      const nodes = lines.map((l) => el("p", null, l));
      if (gpus.length) nodes.push(detailsTable(["GPU", "Name", "VRAM", "Full", "Busy"], gpus));
      else nodes.push(el("p", null, "No GPU reported"));
      parts.push(detailsSection(`Resources of ${row.host}`, nodes));
    } else {
      parts.push(detailsSection(`Resources of ${row.host}`, [el("p", null, "No sidecar reports for this host.")]));
    }
    parts.push(timelineSection(entry));
    parts.push(historySection(entry));
    if (row.source === "manual" && state.canDelete) {
      const box = el("div", "details-actions");
      box.appendChild(removeButton(row, "Remove this endpoint"));
      parts.push(box);
    }
    els.detailsBody.replaceChildren(...parts);
  }

  // ---- timeline: the open endpoint's events, newest first (GET /api/v1/events) ----------
  // Fetched when the popover opens and again whenever the row's revision moves while it is open
  // (a status or model change is an event); kept in one node across refills of the popover.

  const TIMELINE_LIMIT = 20;

  const fmtUptime = (p) => (Number.isFinite(p) ? `${p.toFixed(1)}%` : "no data yet");

  function fmtDuration(seconds) {
    const s = Math.max(0, Math.round(Number(seconds) || 0));
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    return s < 172800 ? `${Math.round(s / 3600)} h` : `${Math.round(s / 86400)} days`;
  }

  function eventText(e) {
    const d = e.detail || {};
    switch (e.kind) {
      case "status":
        return `${d.from} → ${d.to}${d.reason ? `: ${d.reason}` : ""}`;
      case "model_added":
        return `model ${d.model} added`;
      case "model_removed":
        return `model ${d.model} removed`;
      case "model_loaded":
        return `model ${d.model} loaded`;
      case "model_unloaded":
        return `model ${d.model} unloaded`;
      case "registered":
        return `registered${d.by ? ` by ${d.by}` : ""}`;
      case "removed":
        return `removed${d.by ? ` by ${d.by}` : ""}`;
      case "host_silent":
        return `sidecar of ${e.host} went silent (no report for ${fmtDuration(d.silent_for)})`;
      case "host_back":
        return `sidecar of ${e.host} reporting again after ${fmtDuration(d.silent_for)}`;
      default:
        return e.kind;
    }
  }

  function renderTimeline(tl, events) {
    const nodes = [];
    if (!events.length) nodes.push(el("p", "details-timeline-empty", "Nothing recorded yet."));
    else {
      const list = el("ol", "details-timeline");
      for (const e of events) {
        const li = el("li", `llm-event llm-event-${String(e.kind).replace(/[^a-z_]/g, "")}`);
        const when = el("time", "llm-event-at", fmtAgo(e.at));
        when.dateTime = e.at;
        when.title = new Date(e.at).toLocaleString();
        li.append(when, el("span", "llm-event-text", eventText(e)));
        list.appendChild(li);
      }
      nodes.push(list);
    }
    tl.box.replaceChildren(el("h4", null, "Timeline"), ...nodes);
  }

  async function loadTimeline(tl) {
    const seq = ++tl.seq;
    const url = `${section.dataset.eventsUrl}?endpoint=${encodeURIComponent(tl.id)}&with_host=true&limit=${TIMELINE_LIMIT}`;
    try {
      const reply = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
      const page = await reply.json();
      if (state.timeline === tl && seq === tl.seq) renderTimeline(tl, page.events || []);
    } catch (err) {
      if (state.timeline === tl && seq === tl.seq) {
        tl.box.replaceChildren(el("h4", null, "Timeline"), el("p", "details-timeline-empty", "Could not load the timeline."));
      }
    }
  }

  function timelineSection(entry) {
    let tl = state.timeline;
    if (!tl || tl.id !== entry.row.id) {
      tl = state.timeline = { id: entry.row.id, revision: null, seq: 0, box: el("section", "details-section llm-timeline") };
      tl.box.append(el("h4", null, "Timeline"), el("p", "details-timeline-empty", "Loading…"));
    }
    if (tl.revision !== entry.row.revision) {
      tl.revision = entry.row.revision;
      loadTimeline(tl);
    }
    return tl.box;
  }

  function openDetails(id, trigger) {
    const entry = state.entries.get(id);
    if (!entry || !els.details) return;
    state.detailsFor = { id, trigger };
    state.timeline = null; // fetched afresh on every open
    fillDetails(entry);
    placeDetails(trigger);
  }

  function placeDetails(trigger) {
    if (!els.details.matches(":popover-open")) els.details.showPopover();
    // Beside the trigger on wide screens; a bottom sheet on narrow ones (CSS).
    const r = trigger.getBoundingClientRect();
    const w = els.details.offsetWidth;
    els.details.style.left = `${Math.max(8, Math.min(r.left, window.innerWidth - w - 8))}px`;
    els.details.style.top = `${Math.max(8, Math.min(r.bottom + 6, window.innerHeight - els.details.offsetHeight - 8))}px`;
    const close = els.details.querySelector(".details-close");
    if (close) close.focus();
  }

  // ---- where to run a model (the routing API) --------------------------------

  function routeWhy(r) {
    const w = r.why;
    const parts = [w.loaded ? "loaded" : "on disk"];
    if (w.resources === "fresh") {
      if (!w.loaded) parts.push(w.fits ? "fits a GPU" : "fits no GPU");
      if (Number.isFinite(w.vram_free_bytes)) parts.push(`${fmtSize(w.vram_free_bytes)} VRAM free`);
      else parts.push("no GPU");
      if (Number.isFinite(w.cpu_percent)) parts.push(`CPU ${fmtPercent(w.cpu_percent)}`);
    } else {
      parts.push(w.resources === "stale" ? "resources stale" : "no sidecar reports");
    }
    if (Number.isFinite(w.latency_ms)) parts.push(`${w.latency_ms} ms`);
    return parts.join(", ");
  }

  function routeLabel(r) {
    const address = r.url.replace(/^https?:\/\//, "");
    return r.name ? `"${r.name}" (${address})` : address;
  }

  function fillRoute(model, reply, status) {
    if (!state.detailsFor || state.detailsFor.model !== model) return; // closed or moved on meanwhile
    if (status !== 200) {
      const text = reply && reply.detail ? String(reply.detail) : `The hub answered ${status}.`;
      els.detailsBody.replaceChildren(detailsSection("Top choice", [el("p", "llm-route-none", text)]));
      return;
    }
    const [top, ...rest] = reply.routes;
    const best = el("p", "llm-route-top", `${routeLabel(top)}: ${routeWhy(top)}`);
    best.dataset.endpointId = String(top.id);
    const parts = [detailsSection("Top choice", [best])];
    if (rest.length) {
      const list = el("ol", "llm-route-rest");
      list.start = 2;
      rest.forEach((r) => list.appendChild(el("li", null, `${routeLabel(r)}: ${routeWhy(r)}`)));
      parts.push(detailsSection("Then", [list]));
    }
    const n = reply.candidates;
    parts.push(el("p", "muted", `${n} healthy ${n === 1 ? "endpoint holds" : "endpoints hold"} ${reply.model}; agents ask GET /api/v1/route?model=${reply.model}.`));
    els.detailsBody.replaceChildren(...parts);
  }

  async function openRoute(model, trigger) {
    if (!els.details) return;
    state.detailsFor = { id: null, model, trigger };
    els.detailsTitle.textContent = `Where to run ${model}`;
    els.detailsBody.replaceChildren(el("p", "muted", "Asking the hub…"));
    placeDetails(trigger);
    let status = 0;
    let reply = null;
    try {
      const response = await fetch(`/api/v1/route?model=${encodeURIComponent(model)}&n=3`, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      status = response.status;
      reply = await response.json();
    } catch (_err) {
      reply = { detail: "The hub did not answer; try again in a moment." };
    }
    fillRoute(model, reply, status);
  }

  // ---- history: sparklines in the rows, the day's curves in the details ------------
  // One request for the hosts of the rows on screen (GET /api/v1/hosts/history?names=...),
  // at most every SPARK_REFRESH_MS per host, never per report; drawn as inline SVG paths.

  const SVG_NS = "http://www.w3.org/2000/svg";
  const SPARK_REFRESH_MS = 45000;
  const SPARK_MAX_HOSTS = 100; // the route's limit per request
  const DAY_REFRESH_MS = 60000;
  const curves = { hosts: new Map(), pending: false, timer: 0, day: new Map() };

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  /** The fullest GPU per point (the host is as full as its fullest GPU), else the summed VRAM. */
  function vramCurve(series) {
    if (!series.gpus || !series.gpus.length) return series.vram;
    return series.t.map((_, i) => {
      let top = null;
      for (const g of series.gpus) if (g.used[i] !== null && (top === null || g.used[i] > top)) top = g.used[i];
      return top;
    });
  }

  /** An SVG path through (t, value) points; a gap longer than two steps (or a null) breaks the line. */
  function pathData(t, values, t0, t1, maxValue, w, h, step) {
    let d = "";
    let prev = null;
    const span = Math.max(1, t1 - t0);
    for (let i = 0; i < t.length; i++) {
      const v = values[i];
      if (v === null || v === undefined || t[i] < t0) {
        prev = null;
        continue;
      }
      const x = (((t[i] + step / 2 - t0) / span) * w).toFixed(1);
      const y = (h - (Math.min(maxValue, Math.max(0, v)) / maxValue) * (h - 1) - 0.5).toFixed(1);
      d += `${prev === null || t[i] - prev > 2 * step ? "M" : "L"}${x} ${y}`;
      prev = t[i];
    }
    return d;
  }

  function sparkSvg(kind, series, values) {
    const w = 100;
    const h = 16;
    const t1 = series.until;
    const svg = svgEl("svg", { class: `llm-spark llm-spark-${kind}`, viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none" });
    const known = values.filter((v) => v !== null);
    const label = known.length
      ? `${kind.toUpperCase()} last hour: ${fmtPercent(Math.min(...known))} to ${fmtPercent(Math.max(...known))}`
      : `${kind.toUpperCase()} last hour: no reports`;
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
    const title = svgEl("title");
    title.textContent = label;
    svg.appendChild(title);
    svg.appendChild(svgEl("path", { d: pathData(series.t, values, t1 - 3600, t1, 100, w, h, series.step), "vector-effect": "non-scaling-stroke" }));
    return svg;
  }

  /** The resource node of a CPU (0) or VRAM (2) cell, with that host's last-hour sparkline under it. */
  function withSpark(host, index, node) {
    if (index === 1 || !node.classList.contains("resource")) return [node];
    const series = curves.hosts.get(host);
    if (!series || !series.t.length) return [node];
    return [node, index === 0 ? sparkSvg("cpu", series, series.cpu) : sparkSvg("vram", series, series.vram_top)];
  }

  function redrawSparks(hosts) {
    for (const host of hosts) {
      for (const id of state.byHost.get(host) || []) {
        const tr = state.rendered.get(id);
        if (!tr) continue;
        const res = resourceNodes(host);
        tr.querySelectorAll("td.cell-res").forEach((td, i) => td.replaceChildren(...withSpark(host, i, res[i])));
      }
    }
  }

  /** Ask (soon, once) for the sparklines of rows on screen whose curve is missing or old. */
  function wantSparks() {
    if (curves.timer) return;
    curves.timer = window.setTimeout(fetchSparks, 300);
  }

  async function fetchSparks() {
    curves.timer = 0;
    if (curves.pending || document.hidden) return;
    const now = Date.now();
    const hosts = new Set();
    for (const id of state.rendered.keys()) {
      const entry = state.entries.get(id);
      if (!entry || !state.resources.has(entry.row.host)) continue;
      const known = curves.hosts.get(entry.row.host);
      if (!known || now - known.fetchedAt > SPARK_REFRESH_MS) hosts.add(entry.row.host);
      if (hosts.size >= SPARK_MAX_HOSTS) break;
    }
    if (!hosts.size) return;
    curves.pending = true;
    try {
      const names = encodeURIComponent([...hosts].join(","));
      const reply = await fetch(`/api/v1/hosts/history?names=${names}&since=-1h&step=60`, { credentials: "same-origin" });
      if (!reply.ok) return;
      const body = await reply.json();
      const until = Math.floor(parseTime(body.until) / 1000);
      if (curves.hosts.size > 2000) curves.hosts.clear(); // a long scroll through a big fleet
      for (const host of hosts) {
        const series = body.hosts[host] || { t: [], cpu: [], vram_top: [] };
        curves.hosts.set(host, { ...series, until, step: body.step, fetchedAt: now });
      }
      redrawSparks(hosts);
      state.metrics.sparkFetches = (state.metrics.sparkFetches || 0) + 1;
    } catch (err) {
      // The page works without sparklines; the next refresh tries again.
    } finally {
      curves.pending = false;
    }
  }

  async function dayCurves(key, url) {
    const known = curves.day.get(key);
    if (known && Date.now() - known.at < DAY_REFRESH_MS) return known.body;
    const reply = await fetch(url, { credentials: "same-origin" });
    if (!reply.ok) return null;
    const body = await reply.json();
    if (curves.day.size > 50) curves.day.clear();
    curves.day.set(key, { at: Date.now(), body });
    return body;
  }

  /** A 24 h chart: one line per curve, y from 0 to `maxValue`, with a legend. */
  function dayChart(caption, body, lines, maxValue, unit) {
    const w = 520;
    const h = 90;
    const t1 = Math.floor(parseTime(body.until) / 1000);
    const figure = el("figure", "details-chart");
    const svg = svgEl("svg", { class: "llm-day-chart", viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none" });
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `${caption}, last 24 hours`);
    for (const y of [0.5, h / 2, h - 0.5]) svg.appendChild(svgEl("line", { x1: 0, x2: w, y1: y, y2: y, class: "grid" }));
    for (const line of lines) {
      svg.appendChild(
        svgEl("path", { d: pathData(body.t, line.values, t1 - 86400, t1, maxValue, w, h, body.step), class: `line line-${line.kind}`, "vector-effect": "non-scaling-stroke" })
      );
    }
    const legend = el("figcaption", "details-chart-legend");
    legend.appendChild(el("span", "chart-scale", `${caption} (0–${maxValue}${unit}, 24 h ago → now)`));
    for (const line of lines) {
      const known = line.values.filter((v) => v !== null);
      const last = known.length ? `${Math.round(known[known.length - 1] * 10) / 10}${unit}` : "—";
      legend.appendChild(el("span", `chart-key key-${line.kind}`, `${line.label} ${last}`));
    }
    figure.append(svg, legend);
    return figure;
  }

  function fillHistory(box, id, hostBody, endpointBody) {
    if (!state.detailsFor || state.detailsFor.id !== id) return;
    const nodes = [];
    if (hostBody && hostBody.t.length) {
      const lines = [
        { kind: "cpu", label: "CPU", values: hostBody.cpu },
        { kind: "ram", label: "RAM", values: hostBody.ram },
      ];
      if (hostBody.gpus.length || hostBody.vram.some((v) => v !== null)) lines.push({ kind: "vram", label: "VRAM", values: vramCurve(hostBody) });
      nodes.push(dayChart(`Resources of ${hostBody.host}`, hostBody, lines, 100, "%"));
    }
    if (endpointBody && endpointBody.t.length) {
      const known = endpointBody.latency_max.filter((v) => v !== null);
      const top = Math.max(10, ...known);
      const scale = 10 ** Math.ceil(Math.log10(top));
      const maxValue = top <= scale / 2 ? scale / 2 : scale;
      nodes.push(dayChart("Probe latency", endpointBody, [{ kind: "latency", label: "avg", values: endpointBody.latency }], maxValue, " ms"));
    }
    box.replaceChildren(...(nodes.length ? nodes : [el("p", null, "No history recorded yet.")]));
  }

  /** The details' "Last 24 hours" section: filled when its two requests answer. */
  function historySection(entry) {
    const row = entry.row;
    const box = el("div", "details-history");
    box.appendChild(el("p", "details-loading", "Loading…"));
    const hostUrl = `/api/v1/hosts/${encodeURIComponent(row.host)}/history?since=-24h&step=900`;
    const endpointUrl = `/api/v1/endpoints/${row.id}/history?since=-24h&step=900`;
    Promise.all([
      state.resources.has(row.host) ? dayCurves(`h:${row.host}`, hostUrl).catch(() => null) : null,
      dayCurves(`e:${row.id}`, endpointUrl).catch(() => null),
    ]).then(([hostBody, endpointBody]) => fillHistory(box, row.id, hostBody, endpointBody));
    return detailsSection("Last 24 hours", [box]);
  }

  // ---- incoming frames ---------------------------------------------------

  function applyResources(resources, replace) {
    if (replace) state.resources = new Map();
    const hosts = [];
    for (const [host, res] of Object.entries(resources || {})) {
      if (res) state.resources.set(host, res);
      else state.resources.delete(host);
      hosts.push(host);
    }
    return hosts;
  }

  function afterResources(hosts) {
    if (["cpu", "ram", "vram"].includes(state.view.sort) || state.view.status === "stale") state.orderDirty = true;
    for (const host of hosts) for (const id of state.byHost.get(host) || []) refreshResources(id);
  }

  function setFleet(msg) {
    if (!msg.fleet_models) return;
    const key = JSON.stringify([msg.fleet_models, msg.fleet_loaded || {}]);
    if (key === state.fleetKey) return; // every row change carries the summary; most leave it as it was
    state.fleetKey = key;
    state.fleetModels = msg.fleet_models;
    state.fleetLoaded = msg.fleet_loaded || {};
    renderFleet();
  }

  function applySnapshot(msg) {
    state.attempt = 0;
    syncClock(msg.server_time);
    if (Number.isFinite(msg.stale_after_seconds)) state.staleAfterSeconds = msg.stale_after_seconds;
    // The snapshot is the truth: start over (rows already built are rebuilt as they arrive).
    state.fleetKey = null;
    state.entries = new Map();
    state.byHost = new Map();
    state.removed = new Set();
    for (const tr of state.rendered.values()) tr.remove();
    state.rendered = new Map();
    applyResources(msg.resources, true);
    (msg.endpoints || []).forEach(upsertRow);
    state.orderDirty = true;
    setFleet(msg);
    if (msg.complete === false) setConnection("loading");
    else setConnection("live");
    renderWindow();
    renderSummary();
  }

  function applySnapshotPart(msg) {
    applyResources(msg.resources, false);
    (msg.endpoints || []).forEach(upsertRow);
    state.orderDirty = true;
    // Parts come in view order: once a screenful is shown, sort once, at the end.
    const screenful = Math.ceil(window.innerHeight / (state.rowHeight || 64)) + OVERSCAN;
    if (msg.complete || state.rendered.size < screenful) renderWindow();
    if (msg.complete) setConnection("live");
    renderSummary();
  }

  function applyUpdate(msg) {
    syncClock(msg.server_time);
    const hosts = msg.resources ? applyResources(msg.resources, false) : [];
    for (const id of msg.removed || []) {
      removeRow(id);
      if (state.detailsFor && state.detailsFor.id === id && els.details.matches(":popover-open")) els.details.hidePopover();
    }
    (msg.endpoints || []).forEach(upsertRow);
    // Probed, unchanged endpoints: only their "Last Checked" moves (the tick re-renders it).
    for (const [id, at] of Object.entries(msg.checked || {})) {
      const entry = state.entries.get(Number(id));
      if (!entry) continue;
      entry.row.last_checked_at = at;
      if (state.view.sort === "checked") state.orderDirty = true;
      const tr = state.rendered.get(entry.row.id);
      const span = tr && tr.querySelector(".llm-checked");
      if (span) span.setAttribute("title", new Date(parseTime(at)).toLocaleString());
    }
    afterResources(hosts);
    setFleet(msg);
    // A change that moved no row was patched in place: no re-window, no layout read.
    if (state.orderDirty) renderWindow();
    renderSummary();
    if (state.detailsFor && els.details.matches(":popover-open")) {
      const entry = state.entries.get(state.detailsFor.id);
      if (entry && (msg.endpoints || []).some((r) => r.id === entry.row.id)) fillDetails(entry);
    }
  }

  function applyPermissions(msg) {
    const regained = (msg.can_add && !state.canAdd) || (msg.can_delete && !state.canDelete);
    if (regained) {
      window.location.reload(); // the form is rendered by the server
      return;
    }
    state.canAdd = !!msg.can_add;
    state.canDelete = !!msg.can_delete;
    if (!state.canAdd && els.form) {
      els.form.remove();
      els.form = null;
    }
    applyPermissionClasses();
    fitSpacers();
    if (!state.canDelete && els.details.matches(":popover-open")) els.details.hidePopover();
    // Rebuild the rows on screen without their Remove buttons.
    for (const [id, tr] of state.rendered) {
      const fresh = buildRow(state.entries.get(id));
      tr.replaceWith(fresh);
      state.rendered.set(id, fresh);
    }
    showNotice("Your permissions changed: the controls you may no longer use are gone.");
  }

  const handlers = {
    snapshot: applySnapshot,
    snapshot_part: applySnapshotPart,
    llm_registry_update: applyUpdate,
    llm_permissions: applyPermissions,
    llm_endpoint_registered(msg) {
      setAddPending(false);
      showAlert("");
      if (els.host) els.host.value = "";
      if (els.name) els.name.value = "";
      if (msg.endpoint) {
        upsertRow(msg.endpoint);
        showNotice(`Added ${endpointLabel(msg.endpoint)}.`);
        renderWindow();
        renderSummary();
      }
    },
    llm_endpoint_removed(msg) {
      showAlert("");
      const entry = state.entries.get(msg.id);
      const label = entry ? endpointLabel(entry.row) : state.pendingRemove && state.pendingRemove.label;
      if (label) showNotice(`Removed ${label}.`);
      state.pendingRemove = null;
      removeRow(msg.id);
      renderWindow();
      renderSummary();
    },
    llm_endpoint_error(msg) {
      setAddPending(false);
      let text = String(msg.error || "The server refused the request.");
      // The server names an endpoint by id; the operator knows it by name or host:port.
      if (state.pendingRemove && /does not exist/.test(text)) text = `${state.pendingRemove.label} was already removed.`;
      state.pendingRemove = null;
      showAlert(text);
    },
  };

  function onMessage(event) {
    const started = performance.now();
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch (_err) {
      return; // unparseable frame: ignore
    }
    const handler = msg && typeof msg === "object" ? handlers[msg.type] : null;
    if (!handler) return;
    handler(msg);
    const m = state.metrics;
    m.frames += 1;
    m.maxFrameChars = Math.max(m.maxFrameChars, event.data.length);
    if (msg.type === "llm_registry_update") {
      m.apply.push(performance.now() - started);
      if (m.apply.length > 2000) m.apply.splice(0, 1000);
    }
  }

  // ---- connection and session ------------------------------------------------

  function send(payload) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
      showAlert("Not connected to the server — wait until the badge says live, then try again.");
      return false;
    }
    state.ws.send(JSON.stringify(payload));
    return true;
  }

  function toLogin(reason) {
    const login = section.dataset.loginUrl || "/accounts/login/";
    const next = `${window.location.pathname}${window.location.search}`;
    window.location.assign(`${login}?ended=${reason}&next=${encodeURIComponent(next)}`);
  }

  /** After a refused connection: is the session gone (the page itself redirects to login)? */
  async function sessionGone() {
    try {
      const reply = await fetch(window.location.pathname, { method: "HEAD", redirect: "manual", credentials: "same-origin" });
      return reply.type === "opaqueredirect" || reply.status === 302;
    } catch (_err) {
      return false; // the hub is down: keep trying
    }
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const path = section.dataset.wsPath || "/ws/dashboard/";
    setConnection("connecting");
    const ws = new WebSocket(`${scheme}//${window.location.host}${path}`);
    let opened = false;
    state.ws = ws;
    ws.onopen = () => {
      // The backoff starts over at the first snapshot, not here: a hub whose Redis is down
      // accepts and at once closes with 4503 (try again later), and must not be retried in a tight loop.
      opened = true;
    };
    ws.onmessage = onMessage;
    ws.onclose = async (event) => {
      if (state.ws !== ws) return;
      state.ws = null;
      setAddPending(false);
      if (event.code === 4401) return toLogin("session");
      if (event.code === 4403) return toLogin("deactivated");
      if (!opened && (await sessionGone())) return toLogin("session");
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
    const delay = Math.min(BACKOFF_MAX_MS, base * (0.75 + Math.random() * 0.5)); // jitter ±25 %
    state.attempt += 1;
    state.reconnectAt = Date.now() + delay;
    setConnection("reconnecting");
    window.setTimeout(connect, delay);
  }

  // ---- add form ----------------------------------------------------------

  function onAddSubmit(event) {
    event.preventDefault();
    if (state.addPending) return;
    const rawPort = els.port.value.trim();
    const port = /^\d+$/.test(rawPort) ? parseInt(rawPort, 10) : rawPort;
    const payload = {
      type: "register_llm_endpoint",
      host: els.host.value.trim(),
      port,
      name: els.name ? els.name.value.trim() : "",
    };
    if (send(payload)) setAddPending(true);
  }

  // ---- clock tick: relative times and staleness of the rows on screen ------------

  function tick() {
    for (const [id, tr] of state.rendered) {
      const entry = state.entries.get(id);
      if (!entry) continue;
      const span = tr.querySelector(".llm-checked");
      const text = fmtAgo(entry.row.last_checked_at);
      if (span && span.textContent !== text) span.textContent = text;
      refreshResources(id);
    }
    if (state.view.status === "stale") state.orderDirty = true;
    if (state.orderDirty) renderWindow();
    renderSummary();
    if (state.connection === "reconnecting") setConnection("reconnecting");
  }

  // ---- wiring ------------------------------------------------------------

  if (els.form && state.canAdd) els.form.addEventListener("submit", onAddSubmit);
  els.summary.addEventListener("click", (event) => {
    const btn = event.target.closest("button[data-filter]");
    if (!btn) return;
    const filter = btn.dataset.filter;
    setView({ status: state.view.status === filter ? "" : filter });
  });
  let searchTimer = 0;
  els.search.addEventListener("input", () => {
    window.clearTimeout(searchTimer);
    searchTimer = window.setTimeout(() => setView({ q: els.search.value.trim() }), 120);
  });
  els.table.querySelector("thead").addEventListener("click", (event) => {
    const btn = event.target.closest("button.llm-sort");
    if (!btn) return;
    const sort = btn.dataset.sort;
    const dir = state.view.sort === sort && state.view.dir === "asc" ? "desc" : "asc";
    setView({ sort, dir });
  });
  if (els.details) {
    els.details.addEventListener("toggle", (event) => {
      if (event.newState === "closed" && state.detailsFor) {
        const { trigger } = state.detailsFor;
        state.detailsFor = null;
        if (trigger && trigger.isConnected) trigger.focus();
      }
    });
  }
  window.addEventListener("scroll", onScroll, { passive: true });
  window.addEventListener("resize", () => {
    state.rowHeight = 0; // the layout (and so the row height) changes with the width
    fitSpacers();
    renderWindow();
  });
  window.addEventListener("popstate", () => {
    readView();
    setView({});
  });

  readView();
  applyPermissionClasses();
  fitSpacers();
  renderViewControls();
  renderFleet();
  renderSummary();
  window.setInterval(tick, 1000);
  window.setInterval(wantSparks, SPARK_REFRESH_MS / 3);
  connect();
})();
