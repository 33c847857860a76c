// The status page's script, served by the exporter next to the page.
//
// Everything shown comes from /api/live and may come from a state file that another
// process wrote, so it is treated as hostile: the DOM is built with text nodes and
// numeric attributes only, never from markup. The page's Content-Security-Policy
// allows no other script.
//
// The bearer token arrives as "#token=...". A URL keeps it in places script can read
// (location, and the navigation's performance entry, which nothing can clear), so the
// page hands the token over to a clean reload of itself through window.name, clears
// that at once, and keeps the token in this closure with a fetch captured at start-up:
// by the time any data is on the page, the token is nowhere else.
(() => {
  "use strict";
  const HANDOVER = "poolwatch-token:";
  const fromAddress = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromAddress !== null) {
    window.name = HANDOVER + fromAddress;
    location.replace(location.pathname + location.search);  // no fragment: a real reload
    return;
  }
  let token = null;
  if (window.name.startsWith(HANDOVER)) {
    token = window.name.slice(HANDOVER.length);
    window.name = "";
  }
  const authorization = token ? "Bearer " + token : null;
  token = null;
  const fetchLive = window.fetch.bind(window);
  const WARN = 0.8, CRIT = 0.95;
  const SVG = "http://www.w3.org/2000/svg";

  // --- values: only finite numbers are numbers, only strings are text ---
  function num(value) {
    return typeof value === "number" && Number.isFinite(value) ? value : null;
  }
  function text(value) {
    return typeof value === "string" ? value : typeof value === "number" ? String(value) : "?";
  }
  function fmt(value, digits, unit) {
    const v = num(value);
    return v === null ? "—" : v.toFixed(digits) + (unit ? " " + unit : "");
  }
  function ms(value) {
    const s = num(value);
    if (s === null) return "—";
    return s < 1 ? (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms" : s.toFixed(2) + " s";
  }
  function level(sat) { return sat >= CRIT ? "crit" : sat >= WARN ? "warn" : "ok"; }

  // --- building blocks ---
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const child of children) node.append(child);  // strings become text nodes
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }
  function field(name, value, tag) { return el(tag || "span", { "data-field": name }, value); }

  function arc(fraction) {
    // a half circle from the left (0) to the right (1), radius 50, centre (65, 65)
    const f = Math.max(0, Math.min(1, fraction));
    const angle = Math.PI * (1 - f);
    return [65 + 50 * Math.cos(angle), 65 - 50 * Math.sin(angle)];
  }
  function gauge(sat) {
    const [x, y] = arc(sat), [mx, my] = arc(WARN);
    const [mx2, my2] = [65 + 58 * (mx - 65) / 50, 65 - 58 * (65 - my) / 50];
    const colour = { ok: "var(--ok)", warn: "var(--warn)", crit: "var(--crit)" }[level(sat)];
    const root = svg("svg", { viewBox: "0 0 145 75", role: "img",
                              "aria-label": `saturation ${Math.round(sat * 100)}%` });
    root.append(svg("path", { d: "M15 65 A50 50 0 0 1 115 65", fill: "none",
                              stroke: "#e3e7ec", "stroke-width": 12 }));
    if (sat > 0) {
      root.append(svg("path", { d: `M15 65 A50 50 0 0 1 ${x.toFixed(1)} ${y.toFixed(1)}`,
                                fill: "none", stroke: colour, "stroke-width": 12 }));
    }
    root.append(svg("line", { x1: mx.toFixed(1), y1: my.toFixed(1), x2: mx2.toFixed(1),
                              y2: my2.toFixed(1), stroke: "var(--ink)", "stroke-width": 2 }));
    const label = svg("text", { x: (mx2 + 2).toFixed(1), y: (my2 - 2).toFixed(1),
                                "font-size": 8, fill: "var(--muted)" });
    label.textContent = "80%";
    root.append(label);
    return root;
  }
  function sparkline(points) {
    const values = Array.isArray(points) ? points.map(num) : [];
    if (values.filter(v => v !== null).length < 2) {
      return [el("div", { class: "caption" }, "saturation, last minutes: collecting…")];
    }
    const n = values.length, w = 300, h = 40;
    let d = "";
    values.forEach((v, i) => {
      if (v === null) return;
      const px = (i / (n - 1)) * w, py = h - v * (h - 2) - 1;
      d += (d && values[i - 1] !== null ? " L" : " M") + px.toFixed(1) + " " + py.toFixed(1);
    });
    const y80 = h - WARN * (h - 2) - 1;
    const root = svg("svg", { viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none",
                              "aria-label": "saturation history" });
    root.append(svg("line", { x1: 0, x2: w, y1: y80, y2: y80, stroke: "var(--warn)",
                              "stroke-dasharray": "4 3", "stroke-width": 1 }));
    root.append(svg("path", { d: d.trim(), fill: "none", stroke: "var(--ink)",
                              "stroke-width": 1.5 }));
    const span = n < 120 ? n + " s" : Math.round(n / 60) + " min";
    return [root, el("div", { class: "caption" }, `mean saturation, last ${span} (dashed: 80%)`)];
  }
  function errorsText(byKind, total) {
    if (num(total) === null) return "—";
    const entries = byKind && typeof byKind === "object" && !Array.isArray(byKind)
      ? Object.entries(byKind) : [];
    const kinds = entries.filter(([, v]) => num(v) !== null && v > 0)
      .map(([k, v]) => `${k} ${v.toFixed(1)}`);
    return kinds.length ? kinds.join(", ") : "0";
  }
  // --- insight (issue 16): what held connections did, who holds them, the oldest now ---
  const ACTIVITY_NAMES = [["query", "query"], ["idle_in_transaction", "idle in transaction"],
                          ["idle", "idle"]];
  function activityText(activity) {
    if (!activity || typeof activity !== "object" || Array.isArray(activity)) return "—";
    const parts = ACTIVITY_NAMES.map(([key]) => num(activity[key]));
    const total = parts.reduce((a, v) => a + (v === null ? 0 : v), 0);
    if (!(total > 0)) return "nothing held";
    return ACTIVITY_NAMES.map(([, label], i) =>
      `${label} ${Math.round(100 * (parts[i] ?? 0) / total)}%`).join(", ");
  }
  function callsitesList(rows) {
    const list = el("ol", { class: "sites", "data-field": "callsites" });
    for (const r of Array.isArray(rows) ? rows : []) {
      if (!r || typeof r !== "object") continue;
      const hold = num(r.hold_seconds), idleTx = num(r.idle_in_transaction_seconds);
      const share = hold && idleTx !== null ? ` (${Math.round(100 * idleTx / hold)}% idle in tx)` : "";
      list.append(el("li", {}, text(r.site),
                     el("small", {}, ` ${fmt(r.count, 0)}× · ${ms(r.hold_seconds)}${share}` +
                                     ` · ${fmt(r.waits_caused, 0)} waits caused`)));
    }
    if (!list.childElementCount) list.append(el("li", { class: "caption" }, "not attributed"));
    return list;
  }
  function insightParts(p) {
    return [
      el("dl", {},
         el("dt", {}, "held connections were doing, last minute"),
         field("activity", activityText(p.activity), "dd")),
      el("div", { class: "caption" }, "top call sites (hold time)"), callsitesList(p.callsites),
      el("div", { class: "caption" }, "oldest checkouts now"),
      el("ol", { class: "sites", "data-field": "checkouts" }, el("li", { class: "caption" }, "…")),
    ];
  }
  async function fillCheckouts(cards, headers) {
    // one request for every pool: no pool name (hostile, maybe) goes into a URL
    let byName = new Map();
    try {
      const r = await fetchLive("api/checkouts", { headers, cache: "no-store" });
      const data = r.ok ? await r.json() : null;
      const pools = data && Array.isArray(data.pools) ? data.pools : [];
      byName = new Map(pools.filter(p => p && typeof p === "object" && Array.isArray(p.checkouts))
                            .map(p => [text(p.name), p.checkouts]));
    } catch (e) { byName = new Map(); }
    for (const section of cards) {
      const target = section.querySelector('[data-field="checkouts"]');
      const rows = byName.get(section.dataset.pool);
      if (!rows) {
        target.replaceChildren(el("li", { class: "caption" }, "not available here"));
        continue;
      }
      const items = rows.filter(c => c && typeof c === "object").map(c =>
        el("li", {}, text(c.site),
           el("small", {}, ` ${ms(c.age_seconds)} · ${text(c.transaction_status)}` +
                           ` · pid ${fmt(c.backend_pid, 0)}${c.leaked === true ? " · LEAKED" : ""}`)));
      target.replaceChildren(...(items.length ? items : [el("li", { class: "caption" }, "none")]));
    }
  }
  // --- end of insight ---

  function card(p) {
    const sat = num(p.saturation) ?? 0;
    const lvl = level(sat);
    const label = { ok: "ok", warn: "over 80%", crit: "saturated" }[lvl];
    const name = text(p.name);
    const section = el("section", { class: `card ${lvl}` });
    section.dataset.pool = name;
    section.append(
      el("h2", {}, el("span", { class: "name" }, name),
         el("span", { class: "badge", "data-field": "state" }, label)),
      el("div", { class: "gauge" }, gauge(sat),
         el("div", { class: "pct", "data-field": "saturation" }, fmt(sat * 100, 0, "%"),
            el("small", {}, "saturation, last second"))),
      el("dl", {},
         el("dt", {}, "used / idle / max connections"),
         el("dd", {}, field("used", fmt(p.used, 0)), " / ", field("idle", fmt(p.idle, 0)),
            " / ", field("max", fmt(p.max, 0))),
         el("dt", {}, "waiting now (requests)"), field("waiting", fmt(p.waiting, 0), "dd"),
         el("dt", {}, "waits per minute"), field("waits_per_minute", fmt(p.waits_per_minute, 1), "dd"),
         el("dt", {}, "wait p95, last minute"), field("wait_p95", ms(p.wait_p95_seconds), "dd"),
         el("dt", {}, "errors per minute, by kind"),
         field("errors", errorsText(p.errors_per_minute_by_kind, p.errors_per_minute), "dd"),
         el("dt", {}, "oldest checkout"),
         field("oldest_checkout", fmt(p.oldest_checkout_seconds, 1, "s"), "dd"),
         el("dt", {}, "leaked connections"), field("leaked", fmt(p.leaked, 0), "dd")),
      ...insightParts(p),
      el("div", { class: "spark" }, ...sparkline(p.sparkline)),
      verdictLine(p.verdict));
    return section;
  }

  // --- issue 16: the verdict line (why requests wait), from insight/verdict.py ---
  function verdictLine(verdict) {
    const v = verdict && typeof verdict === "object" && !Array.isArray(verdict) ? verdict : null;
    if (!v || typeof v.cause !== "string") {
      return el("p", { class: "verdict", "data-field": "verdict" }, "why: —");
    }
    const cause = v.cause.replace(/_/g, " ");
    return el("p", { class: "verdict", "data-field": "verdict" },
              el("strong", {}, "why: " + cause), " ", typeof v.why === "string" ? v.why : "");
  }
  // --- end of the verdict line ---

  async function refresh() {
    const status = document.getElementById("status");
    try {
      const headers = authorization ? { Authorization: authorization } : {};
      const r = await fetchLive("api/live", { headers, cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const data = await r.json();
      const pools = Array.isArray(data.pools) ? data.pools.filter(p => p && typeof p === "object") : [];
      const main = document.getElementById("pools");
      if (!pools.length) {
        main.replaceChildren(el("div", { class: "empty" },
                                "No open pool is registered with this exporter yet."));
      } else {
        const cards = pools.map(card);
        main.replaceChildren(...cards);
        fillCheckouts(cards, headers);
      }
      status.textContent = "updated " + new Date().toLocaleTimeString();
      status.classList.remove("stale");
    } catch (e) {
      status.textContent = "cannot reach the exporter (" + e.message + "), retrying";
      status.classList.add("stale");
    }
  }
  refresh();
  setInterval(refresh, 1000);
})();
