// finance_risk review page: the alert queue by score, why each alert fired, the user's recent
// transactions, a decision that becomes a label, alerts per day against the budget.
// API: GET /v1/alerts, GET /v1/alerts/per-day, GET /v1/alerts/{id}, POST /v1/alerts/{id}/decision
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const { api, el, notice } = dv;
  const SVG = "http://www.w3.org/2000/svg";
  let rows = [];       // the queue as shown
  let current = null;  // the alert id shown on the right

  const utc = (iso) => iso.replace("T", " ").replace(/(\.\d+)?(\+00:00|Z)$/, "");
  const money = (x) => (x === null || x === undefined ? "" : Number(x).toFixed(2));
  const verdictTag = (d) => d
    ? el("span", { class: "tag " + (d.verdict === "fraud" ? "bad" : "ok") }, d.verdict.replace("_", " "))
    : el("span", { class: "tag warn" }, "open");

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function chart(days, budget) {
    const W = 900, H = 160, px = 70, py = 20;
    const most = Math.max(budget, ...days.map((d) => d.alerts), 1);
    const bw = days.length ? Math.min((W - 2 * px) / days.length, 48) : 0;
    const y = (v) => H - py - (v / most) * (H - 2 * py);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": `Alerts per day for ${days.length} days; the budget is ${budget} per day` });
    days.forEach((d, i) => {
      const bar = svg("rect", { x: px + i * bw + 1, y: y(d.alerts), width: Math.max(bw - 2, 1),
        height: H - py - y(d.alerts), class: d.alerts > budget ? "bar-over" : "bar-alerts" });
      bar.append(svg("title", {}, `${d.day}: ${d.alerts} alerts`));
      root.append(bar);
    });
    root.append(svg("line", { x1: px, x2: W - px, y1: y(budget), y2: y(budget), class: "budget" }));
    root.append(svg("text", { x: px - 6, y: y(budget) + 4, "text-anchor": "end" }, `budget ${budget}`));
    root.append(svg("text", { x: px - 6, y: y(most) + 4, "text-anchor": "end" }, `${most}`));
    root.append(svg("text", { x: px - 6, y: H - py + 4, "text-anchor": "end" }, "0"));
    if (days.length) {
      root.append(svg("text", { x: px, y: H - 4 }, days[0].day));
      root.append(svg("text", { x: W - px, y: H - 4, "text-anchor": "end" }, days[days.length - 1].day));
    }
    $("chart").replaceChildren(root);
    $("days").replaceChildren(...days.map((d) => el("tr", {}, el("td", {}, d.day),
      el("td", { class: "num" }, d.alerts), el("td", { class: "num" }, d.decided),
      el("td", { class: "num" }, d.verdicts.fraud || 0))));
  }

  async function loadDays() {
    try {
      const data = await api("GET", "/v1/alerts/per-day?days=60");
      chart(data.days, data.budget_per_day);
    } catch (err) { notice("Could not load alerts per day: " + err.message); }
  }

  async function loadQueue(keep) {
    try {
      const data = await api("GET", "/v1/alerts?limit=500&status=" + $("status").value);
      rows = data.alerts;
      $("summary").textContent = `${data.open} open · ${data.decided} decided · budget ${data.budget_per_day} alerts/day`;
      $("queue").replaceChildren(...rows.map((a) => el("tr", { "data-id": a.id, "aria-selected": a.id === current ? "true" : "false" },
        el("td", {}, el("button", { type: "button", onclick: () => show(a.id) }, a.id)),
        el("td", { class: "num" }, a.score.toFixed(3)),
        el("td", {}, utc(a.payload.timestamp)),
        el("td", {}, a.group),
        el("td", { class: "num" }, money(a.payload.amount)),
        el("td", {}, verdictTag(a.decision)))));
      $("queue-empty").hidden = rows.length > 0;
      if (!keep && rows.length && !current) show(rows[0].id, false);
    } catch (err) { notice("Could not load the queue: " + err.message); }
  }

  function mark() {
    for (const tr of $("queue").querySelectorAll("tr")) {
      tr.setAttribute("aria-selected", tr.dataset.id === current ? "true" : "false");
    }
  }

  async function show(id, focus = true) {
    try {
      const data = await api("GET", "/v1/alerts/" + encodeURIComponent(id));
      const a = data.alert, p = a.payload;
      current = id;
      mark();
      $("pick").hidden = true;
      $("alert-body").hidden = false;
      $("a-tx").textContent = a.id;
      $("a-score").textContent = a.score.toFixed(3) + (p.segment ? " (segment " + p.segment + ")" : "");
      $("a-user").textContent = a.group;
      $("a-amount").textContent = money(p.amount);
      $("a-merchant").textContent = [p.merchant_id, p.merchant_category].filter(Boolean).join(", ");
      $("a-time").textContent = utc(p.timestamp);
      const d = a.decision;
      $("a-decision").replaceChildren(verdictTag(d),
        d ? " by " + (d.reviewer || "someone") + ", " + dv.when(d.at) + (d.note ? ": " + d.note : "") : "");
      const most = Math.max(...p.top_features.map((f) => Math.abs(f.contribution)), 1e-9);
      $("a-features").replaceChildren(...p.top_features.map((f) => {
        const bar = el("div", { class: "contrib " + (f.contribution >= 0 ? "up" : "down") });
        bar.style.width = (100 * Math.abs(f.contribution) / most).toFixed(0) + "%";
        return el("tr", {}, el("td", {}, f.feature), el("td", { class: "num" }, f.contribution.toFixed(3)), el("td", {}, bar));
      }));
      $("a-recent").replaceChildren(...data.recent_transactions.map((t) => el("tr",
        { class: t.id === a.id ? "this" : null },
        el("td", {}, utc(t.payload.timestamp) + (t.id === a.id ? " (this one)" : "")),
        el("td", { class: "num" }, money(t.payload.amount)),
        el("td", {}, t.payload.merchant_id || ""), el("td", {}, t.payload.channel || ""),
        el("td", { class: "num" }, t.score.toFixed(3)),
        el("td", {}, t.payload.alert ? "yes" : ""))));
      $("fraud").disabled = $("not-fraud").disabled = Boolean(d);
      $("note").value = d && d.note ? d.note : "";
      $("note").disabled = Boolean(d);
      notice(null);
      if (focus) $("fraud").disabled ? $("alert-h").focus() : $("fraud").focus();
    } catch (err) { notice("Could not open the alert: " + err.message); }
  }

  async function decide(label) {
    if (!current) return;
    const id = current;
    const note = $("note").value.trim();
    $("fraud").disabled = $("not-fraud").disabled = true;
    try {
      await api("POST", "/v1/alerts/" + encodeURIComponent(id) + "/decision",
        note ? { label, note } : { label });
      const at = rows.findIndex((r) => r.id === id);
      await loadQueue(true);
      loadDays();
      const next = rows.find((r, i) => i >= Math.max(at, 0) && !r.decision && r.id !== id) || rows.find((r) => !r.decision);
      if (next) await show(next.id); else { current = id; await show(id); }
      notice((label ? "Marked fraud: " : "Marked not fraud: ") + id + ". It is now a label.", "info");
    } catch (err) {
      notice("The decision was not recorded: " + err.message);  // the note stays in the box
      $("fraud").disabled = $("not-fraud").disabled = false;
    }
  }

  function step(by) {
    if (!rows.length) return;
    const i = rows.findIndex((r) => r.id === current);
    const j = Math.min(Math.max(i + by, 0), rows.length - 1);
    show(rows[j].id);
  }

  $("fraud").addEventListener("click", () => decide(1));
  $("not-fraud").addEventListener("click", () => decide(0));
  $("status").addEventListener("change", () => { current = null; loadQueue(); });
  $("alert-h").tabIndex = -1;
  document.addEventListener("keydown", (ev) => {
    const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
    if (typing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === "j") step(1);
    else if (ev.key === "k") step(-1);
    else if (ev.key === "f" && !$("fraud").disabled) decide(1);
    else if (ev.key === "n" && !$("not-fraud").disabled) decide(0);
    else return;
    ev.preventDefault();
  });

  loadDays();
  loadQueue();
})();
