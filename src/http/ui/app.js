// chainledger dashboard: plain JavaScript against the /v1 API, the token in session
// storage and sent as a bearer header (never in a URL).
"use strict";

const KEY = "chainledger.token";
const ALL_TYPES = "account.*,address.*,block.*,deposit.*,withdrawal.*,subscriber.*";
const $ = (id) => document.getElementById(id);
const state = { tab: "status", subscriber: null, account: null, log: null, accountsAfter: 0 };

function token() { return sessionStorage.getItem(KEY); }

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + token() } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) { signOut("The token was refused."); throw new Error("unauthorized"); }
  const text = await r.text();
  const json = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((json && json.error && json.error.message) || r.statusText);
  return json;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}
const badge = (s) => el("span", { class: "badge " + s }, s);
const btc = (sats) => (Number(sats) / 1e8).toFixed(8);
const when = (t) => (t ? new Date(t).toLocaleString() : "");
function fill(tbody, rows) { tbody.replaceChildren(...rows); }

// --- sign in / out ---------------------------------------------------------------
async function signIn(t) {
  sessionStorage.setItem(KEY, t);
  try {
    await api("GET", "/v1/status");
  } catch (e) {
    signOut(e.message === "unauthorized" ? "The token was refused." : e.message);
    return;
  }
  $("signin").hidden = true;
  $("tabs").hidden = false;
  show(state.tab);
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  stopLog();
  document.querySelectorAll(".tab").forEach((s) => (s.hidden = true));
  $("tabs").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
}

function show(tab) {
  state.tab = tab;
  document.querySelectorAll("#tabs button[data-tab]").forEach((b) => b.classList.toggle("on", b.dataset.tab === tab));
  document.querySelectorAll(".tab").forEach((s) => (s.hidden = s.id !== tab));
  if (tab !== "log") stopLog();
  ({ status: loadStatus, log: startLog, subscribers: loadSubscribers, accounts: loadAccounts })[tab]();
}

// --- status ----------------------------------------------------------------------
async function loadStatus() {
  const s = await api("GET", "/v1/status");
  const lease = s.leader_lease;
  const facts = [
    ["network", s.network],
    ["node tip", s.node_tip],
    ["synced tip", s.synced_tip],
    ["last position", s.last_position],
    ["leader", lease ? `${lease.holder} (epoch ${lease.epoch}, since ${when(lease.since)})${lease.live ? "" : " — lease expired"}` : "none yet"],
    ["this instance", `${s.instance_id}${s.leader ? " (leads)" : ""}`],
    ["node push", s.zmq.mode === "off" ? "polling only (BITCOIND_ZMQ=off)" : s.zmq.connected ? `ZMQ connected, ${s.zmq.messages} messages, ${s.zmq.gaps} gaps` : "ZMQ not connected: polling"],
    ["last error", s.last_error || "none"],
  ];
  $("status-list").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-fact": k }, v)]));
  fill($("rescans"), s.rescans.map((r) => {
    const span = Math.max(1, r.to_height - r.from_height + 1);
    const pct = Math.min(100, Math.round((100 * (r.next_height - r.from_height)) / span));
    return el("tr", {}, el("td", {}, r.id), el("td", { class: "mono" }, r.address), el("td", {}, `${r.from_height}–${r.to_height}`),
      el("td", {}, `${pct}%`), el("td", {}, badge(r.status), r.error ? " " + r.error : ""));
  }));
}

// --- live log (SSE read with fetch, so the token goes in a header) ----------------
function stopLog() {
  if (state.log) { state.log.abort(); state.log = null; }
}

async function startLog() {
  stopLog();
  const s = await api("GET", "/v1/status");
  // Without a filter the stream leaves out operational events (subscriber.*): ask for
  // every category, so the operator sees those too.
  const types = $("log-types").value.trim() || ALL_TYPES;
  const after = Math.max(0, s.last_position - 50);
  const ctrl = new AbortController();
  state.log = ctrl;
  $("log-pause").textContent = "Pause";
  $("log-state").textContent = "live";
  fill($("log-rows"), []);
  const url = `/v1/events/stream?after=${after}&types=${encodeURIComponent(types)}`;
  try {
    const r = await fetch(url, { headers: { Authorization: "Bearer " + token() }, signal: ctrl.signal });
    if (r.status === 401) return signOut("The token was refused.");
    if (!r.ok) { $("log-state").textContent = (await r.json()).error.message; return; }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const message = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const data = message.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (data) addLogRow(JSON.parse(data));
      }
    }
    $("log-state").textContent = "ended";
  } catch (e) {
    if (e.name !== "AbortError") $("log-state").textContent = "error: " + e.message;
  }
}

function addLogRow(e) {
  const rows = $("log-rows");
  const summary = JSON.stringify(e.data).slice(0, 160);
  rows.prepend(el("tr", { "data-position": e.position }, el("td", { class: "num" }, e.position), el("td", {}, e.type),
    el("td", { class: "mono" }, e.stream), el("td", { class: "mono" }, summary)));
  while (rows.children.length > 500) rows.lastChild.remove();
}

// --- subscribers -----------------------------------------------------------------
// Where a subscriber delivers: its URL, Redis stream (the URL's password comes redacted) or command.
const target = (s) => s.url || (s.redis && `${s.redis.url} stream ${s.redis.stream}`) || (s.command || []).join(" ");

async function loadSubscribers() {
  const { subscribers } = await api("GET", "/v1/subscribers");
  fill($("subscriber-rows"), subscribers.map((s) => {
    const tr = el("tr", { class: "pick" + (s.id === state.subscriber ? " chosen" : ""), "data-id": s.id, onclick: () => pickSubscriber(s) },
      el("td", { class: "mono" }, target(s)), el("td", {}, s.format), el("td", {}, (s.types || ["every ledger type"]).join(", ")),
      el("td", {}, badge(s.status)), el("td", { class: "num" }, s.lag), el("td", {}, when(s.next_attempt_at)), el("td", {}, s.last_error || ""));
    return tr;
  }));
  const chosen = subscribers.find((s) => s.id === state.subscriber);
  if (chosen) pickSubscriber(chosen); else $("subscriber-detail").hidden = true;
}

async function pickSubscriber(s) {
  state.subscriber = s.id;
  document.querySelectorAll("#subscriber-rows tr").forEach((tr) => tr.classList.toggle("chosen", tr.dataset.id === s.id));
  $("subscriber-detail").hidden = false;
  $("subscriber-title").textContent = `${target(s)} — cursor ${s.cursor}, ${s.status}`;
  const [{ deliveries }, status] = await Promise.all([api("GET", `/v1/subscribers/${s.id}/deliveries?limit=20`), api("GET", "/v1/status")]);
  fill($("delivery-rows"), deliveries.map((d) => el("tr", {}, el("td", { class: "num" }, d.position),
    el("td", { class: "num" }, d.redelivery ? "redelivery" : d.attempt),
    el("td", {}, badge(d.outcome)), el("td", { class: "num" }, d.status_code ?? ""), el("td", { class: "num" }, d.latency_ms + " ms"),
    el("td", {}, d.error || ""), el("td", {}, when(d.attempted_at)),
    el("td", {}, el("button", { class: "small", "data-redeliver": d.position, onclick: () => redeliver(s.id, d.position) }, "Redeliver")))));
  // Its operational events (disabled, enabled, recovered) among the last 10,000 positions.
  const page = await api("GET", `/v1/events?types=subscriber.*&after=${Math.max(0, status.last_position - 10000)}&limit=1000`);
  const mine = page.events.filter((e) => e.stream === `subscriber-${s.id}`).slice(-20).reverse();
  fill($("operational-rows"), mine.map((e) => el("tr", { "data-type": e.type }, el("td", { class: "num" }, e.position), el("td", {}, e.type),
    el("td", {}, e.data.reason || (e.data.failed_attempts ? `delivered after ${e.data.failed_attempts} failed attempts` : `cursor ${e.data.cursor}`)),
    el("td", {}, when(e.recorded_at)))));
  $("operational-none").hidden = mine.length > 0;
  $("operational-table").hidden = mine.length === 0;
}

async function redeliver(id, position) {
  const msg = $("subscriber-message");
  try {
    const r = await api("POST", `/v1/subscribers/${id}/redeliver`, { position });
    msg.textContent = `redeliver ${position}: ${r.outcome}` + (r.status_code ? ` (HTTP ${r.status_code})` : "") + (r.error ? ` — ${r.error}` : "");
  } catch (e) {
    msg.textContent = `redeliver ${position}: ` + e.message;
  }
  await loadSubscribers();
}

async function subscriberAction(label, method, path, body) {
  const msg = $("subscriber-message");
  try {
    await api(method, path, body);
    msg.textContent = label + ": done";
  } catch (e) {
    msg.textContent = label + ": " + e.message;
  }
  await loadSubscribers();
}

// --- accounts --------------------------------------------------------------------
async function loadAccounts(more) {
  if (!more) { state.accountsAfter = 0; fill($("account-rows"), []); }
  const page = await api("GET", `/v1/accounts?after=${state.accountsAfter}&limit=100`);
  for (const a of page.accounts) {
    $("account-rows").append(el("tr", { class: "pick", "data-id": a.id, onclick: () => pickAccount(a) }, el("td", {}, a.label),
      el("td", { class: "num" }, btc(a.credited_sats)), el("td", { class: "num" }, btc(a.pending_sats)),
      el("td", { class: "num" }, btc(a.unconfirmed_sats)), el("td", { class: "num" }, a.addresses)));
  }
  state.accountsAfter = page.next_after || state.accountsAfter;
  $("accounts-more").hidden = page.next_after == null;
}

async function pickAccount(a) {
  document.querySelectorAll("#account-rows tr").forEach((tr) => tr.classList.toggle("chosen", tr.dataset.id === a.id));
  const [account, deposits] = await Promise.all([api("GET", `/v1/accounts/${a.id}`), api("GET", `/v1/deposits?account_id=${a.id}&limit=100`)]);
  $("account-detail").hidden = false;
  $("account-title").textContent = `${account.label} (${account.id})`;
  $("account-addresses").replaceChildren(...account.addresses.map((x) => el("li", {}, x)));
  fill($("deposit-rows"), deposits.map((d) => el("tr", {}, el("td", { class: "mono" }, `${d.txid}:${d.vout}`), el("td", { class: "num" }, d.amount),
    el("td", { class: "num" }, d.confirmations), el("td", {}, badge(d.status)))));
}

// --- wiring ----------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("token").value); });
  $("signout").addEventListener("click", () => signOut(""));
  document.querySelectorAll("#tabs button[data-tab]").forEach((b) => b.addEventListener("click", () => show(b.dataset.tab)));
  $("log-apply").addEventListener("click", startLog);
  $("log-pause").addEventListener("click", () => {
    if (state.log) { stopLog(); $("log-pause").textContent = "Resume"; $("log-state").textContent = "paused"; } else startLog();
  });
  $("replay").addEventListener("click", () => subscriberAction("replay", "POST", `/v1/subscribers/${state.subscriber}/replay`, { from_position: Number($("replay-from").value) }));
  $("rotate").addEventListener("click", async () => {
    if (!confirm("Rotate the signing secret? The old one keeps signing beside the new one for a day.")) return;
    try {
      const r = await api("POST", `/v1/subscribers/${state.subscriber}/rotate-secret`, { keep_old_for_secs: 86400 });
      $("subscriber-message").textContent = `new secret (shown once): ${r.secret} — the old one also signs until ${when(r.previous_secret_expires_at)}`;
    } catch (e) {
      $("subscriber-message").textContent = "rotate: " + e.message;
    }
  });
  $("enable").addEventListener("click", () => subscriberAction("enable", "POST", `/v1/subscribers/${state.subscriber}/enable`));
  $("delete").addEventListener("click", () => {
    if (confirm("Delete this subscriber? Its deliveries stop for good.")) {
      subscriberAction("delete", "DELETE", `/v1/subscribers/${state.subscriber}`).then(() => { state.subscriber = null; loadSubscribers(); });
    }
  });
  $("accounts-more").addEventListener("click", () => loadAccounts(true));
  setInterval(() => { if (token() && state.tab === "status") loadStatus().catch(() => {}); }, 5000);
  if (token()) signIn(token());
});
