/*
 * AgentCom LLM Registry — live dashboard.
 *
 * Opens a WebSocket to the path in #llm-registry-section[data-ws-path], keeps a
 * client-side copy of the registry (endpoints keyed by id, resources keyed by
 * host, fleet model counts) and patches only the table rows that changed.
 * A fresh `snapshot` (sent by the server on every (re)connect) replaces all
 * state; `llm_registry_update` frames are deltas. Every string that comes from
 * the network is written with textContent / setAttribute, never as HTML.
 * A one-second tick re-renders relative times and resource staleness against
 * the server's clock (offset taken from `server_time`).
 */
(function () {
  "use strict";

  const section = document.getElementById("llm-registry-section");
  if (!section) return;

  const $ = (id) => document.getElementById(id);
  const els = {
    badge: $("llm-connection-state"),
    fleet: $("llm-fleet-summary"),
    body: $("llm-registry-body"),
    empty: $("llm-empty"),
    alert: $("llm-alert"),
    form: $("llm-add-form"),
    host: $("llm-add-host"),
    port: $("llm-add-port"),
    name: $("llm-add-name"),
    addBtn: section.querySelector("button.llm-add-btn"),
  };

  const GiB = 1024 ** 3;
  const MiB = 1024 ** 2;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;

  const state = {
    canAdd: section.dataset.canAdd === "true",
    canDelete: section.dataset.canDelete === "true",
    entries: new Map(), // endpoint id -> {row, sig, tr, resKey}
    removed: new Set(), // ids removed: a late row for one of them must not bring it back
    resources: new Map(), // key from the wire -> RES
    resByHost: new Map(), // RES.host / key -> RES (lookup index)
    fleetModels: {},
    staleAfterSeconds: 90,
    clockOffsetMs: 0, // server_time - Date.now()
    connection: "connecting",
    ws: null,
    attempt: 0,
    reconnectAt: 0,
    addPending: false,
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

  function fmtPercent(p) {
    return `${(Math.round(p * 10) / 10).toFixed(1).replace(/\.0$/, "")}%`;
  }

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

  function compareRows(a, b) {
    if (a.host !== b.host) return a.host < b.host ? -1 : 1;
    return (a.port || 0) - (b.port || 0);
  }

  // ---- connection badge and alert ----------------------------------------

  function setConnection(kind) {
    state.connection = kind;
    if (!els.badge) return;
    let text = kind === "live" ? "live" : "connecting…";
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

  function setAddPending(pending) {
    state.addPending = pending;
    if (els.addBtn) els.addBtn.disabled = pending;
  }

  // ---- fleet summary -----------------------------------------------------

  function renderFleet() {
    const items = Object.entries(state.fleetModels || {})
      .filter(([, n]) => Number(n) > 0)
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const chips = items.map(([name, n]) =>
      el("span", "llm-fleet-chip", `${name} (${n} ${Number(n) === 1 ? "host" : "hosts"})`)
    );
    if (!chips.length) chips.push(el("span", "fleet-empty", "no models yet"));
    els.fleet.replaceChildren(...chips);
  }

  // ---- resource cells ----------------------------------------------------

  function resourceFor(host) {
    const res = state.resByHost.get(host);
    if (!res || res.stale) return null;
    const t = parseTime(res.reported_at);
    if (t === null || serverNow() - t > state.staleAfterSeconds * 1000) return null;
    return res;
  }

  function rebuildResourceIndex() {
    state.resByHost = new Map();
    for (const [key, res] of state.resources) {
      if (res && res.host) state.resByHost.set(res.host, res);
      if (res && !state.resByHost.has(key)) state.resByHost.set(key, res);
    }
  }

  function bar(kind, percent, title) {
    const p = Math.min(100, Math.max(0, Number(percent) || 0));
    const wrap = el("div", "resource");
    const box = el("div", "resource-bar-container");
    const level = p >= 90 ? "level-crit" : p >= 70 ? "level-warn" : "level-ok";
    const fill = el("div", `resource-bar resource-bar-${kind} ${level}`);
    fill.style.width = `${p}%`;
    box.setAttribute("title", title);
    fill.setAttribute("title", title);
    box.appendChild(fill);
    wrap.append(box, el("span", "resource-label", fmtPercent(p)));
    return wrap;
  }

  function placeholder(className, text, title) {
    const node = el("span", className, text);
    node.setAttribute("title", title);
    return node;
  }

  function gpuDetail(res) {
    return (res.gpus || [])
      .map((g) => {
        const mem = fmtBytes(g.memory_used_bytes || 0, g.memory_total_bytes || 0);
        const util = Number.isFinite(g.utilization_percent) ? `, ${fmtPercent(g.utilization_percent)} busy` : "";
        return `GPU ${g.index}: ${g.name || "GPU"} — ${mem}${util}`;
      })
      .join("\n");
  }

  function resourceNodes(res) {
    if (!res) {
      const why = "unknown — no recent report from this host's sidecar";
      return [1, 2, 3].map(() => placeholder("resource-unknown", "unknown", why));
    }
    const cpu = bar("cpu", res.cpu_percent, fmtPercent(Number(res.cpu_percent) || 0));
    const ramTotal = Number(res.ram_total_bytes) || 0;
    const ram = ramTotal
      ? bar("ram", (100 * res.ram_used_bytes) / ramTotal, fmtBytes(res.ram_used_bytes, ramTotal))
      : placeholder("resource-unknown", "unknown", "RAM not reported");
    let vram;
    if (res.vram_total_bytes === null || res.vram_total_bytes === undefined || !res.vram_total_bytes) {
      vram = placeholder("resource-na", "N/A", "No GPU reported on this host");
    } else {
      const title = [fmtBytes(res.vram_used_bytes || 0, res.vram_total_bytes), gpuDetail(res)]
        .filter(Boolean)
        .join("\n");
      vram = bar("vram", (100 * (res.vram_used_bytes || 0)) / res.vram_total_bytes, title);
    }
    return [cpu, ram, vram];
  }

  function updateResources(entry) {
    const res = resourceFor(entry.row.host);
    const key = res ? JSON.stringify(res) : "unknown";
    if (key === entry.resKey) return;
    entry.resKey = key;
    const cells = entry.tr.querySelectorAll("td.cell-res");
    resourceNodes(res).forEach((node, i) => cells[i].replaceChildren(node));
  }

  // ---- rows --------------------------------------------------------------

  function statusCell(row) {
    const status = ["healthy", "unhealthy"].includes(row.status) ? row.status : "unknown";
    const dot = el("span", `llm-status-dot llm-status-${status}`);
    dot.setAttribute("title", status);
    dot.setAttribute("aria-label", status);
    return dot;
  }

  function hostCell(row) {
    const nodes = [];
    if (row.name) nodes.push(el("div", "llm-name", row.name));
    const host = el("div", row.name ? "llm-host llm-host-secondary" : "llm-host", row.host);
    if (row.url) host.setAttribute("title", row.url);
    nodes.push(host);
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

  function modelTag(m) {
    const tag = el("span", m.loaded ? "llm-model llm-model-loaded" : "llm-model");
    if (m.loaded) {
      const mark = el("span", "llm-model-marker", "●");
      mark.setAttribute("aria-label", "loaded");
      tag.appendChild(mark);
    }
    tag.appendChild(document.createTextNode(m.name || "?"));
    const facts = [m.family, m.parameter_size, m.quantization, m.size ? `${fmtSize(m.size)} on disk` : ""];
    let title = facts.filter(Boolean).join(" · ");
    if (m.loaded) {
      const vram = Number.isFinite(m.size_vram) ? `${fmtSize(m.size_vram)} in VRAM` : "VRAM unknown";
      title = `loaded — ${vram}${title ? `\n${title}` : ""}`;
    }
    if (title) tag.setAttribute("title", title);
    return tag;
  }

  function modelsCell(row) {
    const models = (row.models || []).slice().sort(
      (a, b) => Number(!!b.loaded) - Number(!!a.loaded) || String(a.name).localeCompare(String(b.name))
    );
    if (!models.length) return [el("span", "muted", "—")];
    const box = el("div", "llm-models");
    box.append(...models.map(modelTag));
    return [box];
  }

  function actionsCell(row) {
    if (row.source !== "manual" || !state.canDelete) return [];
    const btn = el("button", "llm-remove-btn", "Remove");
    btn.type = "button";
    btn.setAttribute("aria-label", `Remove endpoint ${row.id}`);
    btn.addEventListener("click", () => {
      if (!window.confirm(`Remove endpoint ${row.id}?`)) return;
      send({ type: "remove_llm_endpoint", id: row.id });
    });
    return [btn];
  }

  function buildRow(row) {
    const tr = el("tr", `llm-row llm-row-${row.status || "unknown"}`);
    tr.setAttribute("data-endpoint-id", String(row.id));
    const cell = (className, nodes) => {
      const td = el("td", className);
      td.append(...nodes);
      tr.appendChild(td);
      return td;
    };
    cell("cell-status", [statusCell(row)]);
    cell("cell-host", hostCell(row));
    cell("cell-port num", [document.createTextNode(String(row.port ?? ""))]);
    cell("cell-models", modelsCell(row));
    cell("cell-source", [el("span", `llm-source llm-source-${row.source}`, row.source || "")]);
    for (let i = 0; i < 3; i++) cell("cell-res", []);
    const checked = el("span", "llm-checked", fmtAgo(row.last_checked_at));
    const abs = parseTime(row.last_checked_at);
    checked.setAttribute("title", abs === null ? "never probed" : new Date(abs).toLocaleString());
    cell("cell-checked", [checked]);
    cell("cell-actions", actionsCell(row));
    return tr;
  }

  function upsertRow(row) {
    if (!row || row.id === undefined || row.id === null || state.removed.has(row.id)) return;
    const sig = JSON.stringify(row);
    const old = state.entries.get(row.id);
    if (old && old.sig === sig) return;
    // Updates from several hub processes may cross; a row older than the one shown is stale.
    if (old && (row.revision ?? 0) < (old.row.revision ?? 0)) return;
    const entry = { row, sig, tr: buildRow(row), resKey: null };
    updateResources(entry);
    if (old) old.tr.replaceWith(entry.tr);
    state.entries.set(row.id, entry);
  }

  function removeRow(id) {
    state.removed.add(id);
    const entry = state.entries.get(id);
    if (!entry) return;
    entry.tr.remove();
    state.entries.delete(id);
  }

  /** Move rows into host/port order, touching only those out of place. */
  function placeRows() {
    const sorted = [...state.entries.values()].sort((a, b) => compareRows(a.row, b.row));
    let cursor = els.body.firstElementChild;
    for (const entry of sorted) {
      if (entry.tr === cursor) cursor = cursor.nextElementSibling;
      else els.body.insertBefore(entry.tr, cursor);
    }
    if (els.empty) els.empty.hidden = sorted.length > 0;
  }

  function refreshAllResources() {
    state.entries.forEach(updateResources);
  }

  // ---- incoming frames ---------------------------------------------------

  function applyResources(resources, replace) {
    if (replace) state.resources = new Map();
    for (const [key, res] of Object.entries(resources || {})) {
      if (res) state.resources.set(key, res);
      else state.resources.delete(key);
    }
    rebuildResourceIndex();
  }

  function applySnapshot(msg) {
    syncClock(msg.server_time);
    if (Number.isFinite(msg.stale_after_seconds)) state.staleAfterSeconds = msg.stale_after_seconds;
    applyResources(msg.resources, true);
    const keep = new Set((msg.endpoints || []).map((r) => r.id));
    [...state.entries.keys()].filter((id) => !keep.has(id)).forEach(removeRow);
    keep.forEach((id) => state.removed.delete(id)); // the snapshot is the truth
    (msg.endpoints || []).forEach(upsertRow);
    state.fleetModels = msg.fleet_models || {};
    renderFleet();
    refreshAllResources();
    placeRows();
  }

  function applyUpdate(msg) {
    syncClock(msg.server_time);
    if (msg.resources) applyResources(msg.resources, false);
    (msg.removed || []).forEach(removeRow);
    (msg.endpoints || []).forEach(upsertRow);
    // Probed, unchanged endpoints: only their "Last Checked" moves (the tick re-renders it).
    for (const [id, at] of Object.entries(msg.checked || {})) {
      const entry = state.entries.get(Number(id));
      if (!entry) continue;
      entry.row.last_checked_at = at;
      const span = entry.tr.querySelector(".llm-checked");
      if (span) span.setAttribute("title", new Date(parseTime(at)).toLocaleString());
    }
    if (msg.fleet_models) {
      state.fleetModels = msg.fleet_models;
      renderFleet();
    }
    refreshAllResources();
    placeRows();
  }

  const handlers = {
    snapshot: applySnapshot,
    llm_registry_update: applyUpdate,
    llm_endpoint_registered(msg) {
      setAddPending(false);
      showAlert("");
      if (els.host) els.host.value = "";
      if (els.name) els.name.value = "";
      if (msg.endpoint) {
        upsertRow(msg.endpoint);
        placeRows();
      }
    },
    llm_endpoint_removed(msg) {
      showAlert("");
      removeRow(msg.id);
      placeRows();
    },
    llm_endpoint_error(msg) {
      setAddPending(false);
      showAlert(String(msg.error || "The server refused the request."));
    },
  };

  function onMessage(event) {
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch (_err) {
      return; // unparseable frame: ignore
    }
    const handler = msg && typeof msg === "object" ? handlers[msg.type] : null;
    if (handler) handler(msg);
  }

  // ---- connection --------------------------------------------------------

  function send(payload) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
      showAlert("Not connected to the server — wait until the badge says live, then try again.");
      return false;
    }
    state.ws.send(JSON.stringify(payload));
    return true;
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const path = section.dataset.wsPath || "/ws/dashboard/";
    setConnection("connecting");
    const ws = new WebSocket(`${scheme}//${window.location.host}${path}`);
    state.ws = ws;
    ws.onopen = () => {
      state.attempt = 0;
      setConnection("live");
    };
    ws.onmessage = onMessage;
    ws.onclose = () => {
      if (state.ws !== ws) return;
      state.ws = null;
      setAddPending(false);
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

  // ---- clock tick --------------------------------------------------------

  function tick() {
    for (const entry of state.entries.values()) {
      const span = entry.tr.querySelector(".llm-checked");
      const text = fmtAgo(entry.row.last_checked_at);
      if (span && span.textContent !== text) span.textContent = text;
      updateResources(entry);
    }
    if (state.connection === "reconnecting") setConnection("reconnecting");
  }

  if (els.form && state.canAdd) els.form.addEventListener("submit", onAddSubmit);
  renderFleet();
  window.setInterval(tick, 1000);
  connect();
})();
