"""The status page served at ``GET /`` (``docs/live-view.md#status-page``).

One self-contained document: inline style and script, no external asset.
The script fetches ``/agents`` every few seconds with the bearer token (asked
for when the daemon answers 401, or taken from the URL fragment
``#token=<64 hex>``, which browsers never send to the server; kept in the
tab's ``sessionStorage``) and renders the agents worst first, filtered by
status and unit on the server (``/agents?status=…&unit=…&limit=…``).
:mod:`varta.watch.live` hashes the ``<script>`` and ``<style>`` bodies into
the page's ``Content-Security-Policy``.
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>varta — agents</title>
<style>
:root { color-scheme: light dark; --bad: #c62828; --warn: #ef6c00; --meh: #f9a825;
  --ok: #2e7d32; --dim: #757575; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1rem 1rem; }
header { display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; align-items: baseline;
  padding: .6rem 0; border-bottom: 1px solid #8884; }
h1 { font-size: 1.2rem; margin: 0; }
#meta, #shown { color: var(--dim); }
#controls { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: center; margin: .6rem 0; }
#summary span { margin-right: .8rem; }
#error { margin: .6rem 0; padding: .5rem .8rem; border-left: 4px solid var(--bad);
  background: #c628281a; }
#token-form { margin: .6rem 0; }
#token-form input { width: 34rem; max-width: 90vw; font-family: monospace; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .2rem .6rem; border-bottom: 1px solid #8882;
  white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.wrap { white-space: normal; word-break: break-all; max-width: 30rem; }
.st { font-weight: 600; }
.st-hung, .st-crashed, .st-vanished { color: var(--bad); }
.st-unknown, .st-critical { color: var(--warn); }
.st-degraded { color: var(--meh); }
.st-ok { color: var(--ok); }
.st-exited { color: var(--dim); }
[hidden] { display: none !important; }
</style>
</head>
<body>
<header>
  <h1>varta</h1>
  <span id="meta">connecting…</span>
  <span id="summary"></span>
</header>
<div id="error" role="alert" hidden></div>
<form id="token-form" hidden>
  <label>Bearer token (64 hex digits, the daemon's --prom-token-file):
    <input id="token" type="password" autocomplete="off" spellcheck="false"></label>
  <button type="submit">Use token</button>
</form>
<div id="controls">
  <label>Status <select id="status-filter">
    <option value="">all</option>
    <option value="hung,crashed,vanished,unknown">stalled (any verdict)</option>
    <option value="hung">hung</option><option value="crashed">crashed</option>
    <option value="vanished">vanished</option><option value="unknown">unknown</option>
    <option value="critical">critical</option><option value="degraded">degraded</option>
    <option value="ok">ok</option><option value="exited">exited</option>
  </select></label>
  <label>Unit <input id="unit-filter" list="units" placeholder="any" size="24"></label>
  <datalist id="units"></datalist>
  <label>Refresh <select id="interval">
    <option value="1">1 s</option><option value="2" selected>2 s</option>
    <option value="5">5 s</option><option value="10">10 s</option>
  </select></label>
  <span id="shown"></span>
</div>
<table id="agents">
  <thead><tr>
    <th>status</th><th class="num">pid</th><th>unit</th><th>comm</th><th>container</th>
    <th class="num">last beat</th><th class="num">beats</th><th class="num">stalls</th>
    <th class="num">recoveries</th><th>origin</th><th>peer</th><th>command line</th>
  </tr></thead>
  <tbody></tbody>
</table>
<script>
"use strict";
(function () {
  const LIMIT = 500, KEY = "varta-token";
  const $ = (id) => document.getElementById(id);
  const units = new Set();
  let timer = null, inflight = false;

  // The token never goes into a URL the server sees: a #token=HEX fragment is
  // read once and removed from the address bar.
  const m = /(?:^#|&)token=([0-9a-fA-F]{64})(?:&|$)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(KEY, m[1]);
    history.replaceState(null, "", location.pathname + location.search);
  }

  function showError(text) {
    $("error").textContent = text;
    $("error").hidden = !text;
  }

  function cell(tr, text, cls, title) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (cls) td.className = cls;
    if (title) td.title = title;
    tr.appendChild(td);
  }

  function age(s) {
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " m " + Math.floor(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " m";
  }

  function render(doc) {
    const o = doc.observer;
    $("meta").textContent = o.hostname + " · varta " + o.version + " · threshold " +
      o.threshold_ms + " ms · " + o.agents_total + " agents · updated " +
      new Date(o.generated_unix * 1000).toLocaleTimeString();
    const sum = $("summary");
    sum.textContent = "";
    for (const [st, n] of Object.entries(o.by_status)) {
      if (!n) continue;
      const span = document.createElement("span");
      span.className = "st st-" + st;
      span.textContent = st + " " + n;
      sum.appendChild(span);
    }
    const body = document.createElement("tbody");
    for (const a of doc.agents) {
      const tr = document.createElement("tr");
      tr.dataset.pid = a.pid;
      tr.dataset.status = a.status;
      cell(tr, a.status, "st st-" + a.status, a.verdict ? "verdict: " + a.verdict : "");
      cell(tr, a.pid, "num");
      cell(tr, a.unit);
      cell(tr, a.comm);
      cell(tr, a.container);
      cell(tr, age(a.since_last_beat_s), "num", a.since_last_beat_s + " s");
      cell(tr, a.beats, "num");
      cell(tr, a.stalls, "num");
      cell(tr, a.recoveries, "num");
      cell(tr, a.origin);
      cell(tr, a.peer);
      cell(tr, a.cmdline, "wrap");
      body.appendChild(tr);
      if (a.unit && !units.has(a.unit) && units.size < 1000) {
        units.add(a.unit);
        const opt = document.createElement("option");
        opt.value = a.unit;
        $("units").appendChild(opt);
      }
    }
    $("agents").replaceChild(body, $("agents").tBodies[0]);
    $("shown").textContent = "showing " + o.agents_listed + " of " + o.agents_matched +
      (o.agents_matched === o.agents_total ? "" : " matching (" + o.agents_total + " tracked)");
  }

  async function refresh() {
    if (inflight) return;
    inflight = true;
    const q = new URLSearchParams({ limit: String(LIMIT) });
    if ($("status-filter").value) q.set("status", $("status-filter").value);
    if ($("unit-filter").value) q.set("unit", $("unit-filter").value);
    const headers = {};
    const token = sessionStorage.getItem(KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const get = () => fetch("/agents?" + q, { headers, cache: "no-store" });
    try {
      let r;
      // One quick retry on a network error: a connection the browser opened
      // ahead of time may have been closed by the daemon, which drops idle ones.
      try { r = await get(); } catch (e) { r = await get(); }
      if (r.status === 401) {
        sessionStorage.removeItem(KEY);
        $("token-form").hidden = false;
        showError(token ? "401 Unauthorized: the daemon refused that token."
                        : "401 Unauthorized: this daemon needs its bearer token.");
        return;
      }
      if (!r.ok) { showError("/agents answered " + r.status + " " + r.statusText); return; }
      render(await r.json());
      $("token-form").hidden = true;
      showError("");
    } catch (e) {
      showError("cannot reach the daemon: " + e);
    } finally {
      inflight = false;
    }
  }

  function schedule() {
    if (timer !== null) clearInterval(timer);
    timer = setInterval(refresh, 1000 * Number($("interval").value));
  }

  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (!/^[0-9a-fA-F]{64}$/.test(t)) { showError("the token is 64 hex digits"); return; }
    sessionStorage.setItem(KEY, t);
    $("token").value = "";
    refresh();
  });
  $("status-filter").addEventListener("change", refresh);
  $("unit-filter").addEventListener("change", refresh);
  $("interval").addEventListener("change", schedule);
  schedule();
  refresh();
})();
</script>
</body>
</html>
"""
