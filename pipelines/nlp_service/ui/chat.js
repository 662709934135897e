// nlp_service review page: chat with the live service and browse transcripts.
// API: GET/POST /v1/conversations, POST /v1/conversations/{id}/messages, GET /v1/conversations/{id}
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const { api, el, notice, when } = dv;
  let current = null;

  function setBar(p) {
    $("confidence-bar").style.width = (p * 100).toFixed(0) + "%";  // CSSOM: allowed by the CSP
  }

  function rows(tbody, pairs) {
    tbody.replaceChildren(...(pairs.length ? pairs : [["—", ""]]).map(([k, v]) =>
      el("tr", {}, el("td", {}, k), el("td", {}, v))));
  }

  function showTurn(t) {
    if (!t) {
      for (const id of ["intent", "confidence", "active", "missing", "escalation", "context"]) {
        $(id).textContent = "—";
      }
      setBar(0); rows($("slots"), []); rows($("state"), []);
      return;
    }
    $("intent").textContent = t.intent;
    $("confidence").textContent = (t.confidence * 100).toFixed(1) + "%";
    setBar(t.confidence);
    $("active").textContent = t.active_intent || "—";
    $("missing").textContent = t.missing_slots && t.missing_slots.length ? t.missing_slots.join(", ") : "—";
    const esc = $("escalation");
    esc.replaceChildren(t.escalate
      ? el("span", { class: "tag bad" }, "escalate" + (t.escalate_reason ? ": " + t.escalate_reason : ""))
      : el("span", { class: "tag ok" }, "no"));
    $("context").textContent = t.context
      ? t.context.tokens + " tokens; " + t.context.dropped_turns + " turns out of context"
      : "—";
    rows($("slots"), (t.slots || []).map((s) => [s.slot, s.value]));
    if (t.state) rows($("state"), Object.entries(t.state));
  }

  function addMessage(role, text, meta) {
    const li = el("li", { class: role }, el("span", { class: "meta" }, role === "user" ? "Customer" : "Service"), text);
    if (meta) li.append(el("span", { class: "meta" }, meta));
    $("log").append(li);
    li.scrollIntoView({ block: "nearest" });
  }

  function select(id) {
    current = id;
    $("conversation-id").textContent = id ? "· " + id.slice(0, 8) : "";
    for (const b of $("conversations").querySelectorAll("button")) {
      b.setAttribute("aria-current", b.dataset.id === id ? "true" : "false");
    }
  }

  async function refresh() {
    try {
      const data = await api("GET", "/v1/conversations?limit=100");
      const items = data.conversations.map((c) => el("li", {},
        el("button", { type: "button", "data-id": c.id, "aria-current": c.id === current ? "true" : "false",
          onclick: () => open(c.id) },
          el("strong", {}, c.last_message || "(no messages yet)"), el("br"),
          el("span", { class: "muted" }, when(c.updated) + " · " + c.user_turns + " turns "),
          c.escalated ? el("span", { class: "tag bad" }, "escalated") : null)));
      $("conversations").replaceChildren(...items);
      $("list-empty").hidden = items.length > 0;
    } catch (err) { notice("Could not list conversations: " + err.message); }
  }

  async function open(id) {
    try {
      const conv = await api("GET", "/v1/conversations/" + encodeURIComponent(id));
      select(id);
      $("log").replaceChildren();
      let last = null;
      for (const t of conv.turns) {
        const a = t.analysis;
        addMessage(t.role, t.text, a ? a.intent + " · " + (a.confidence * 100).toFixed(0) + "%" : null);
        if (a) last = a;
      }
      showTurn(last && { ...last, state: conv.state, context: { tokens: conv.tokens, dropped_turns: conv.dropped_turns } });
      notice(null);
      $("message").focus();
    } catch (err) { notice("Could not open the conversation: " + err.message); }
  }

  async function start() {
    const data = await api("POST", "/v1/conversations", {});
    select(data.conversation_id);
    $("log").replaceChildren();
    showTurn(null);
    return data.conversation_id;
  }

  $("new-conversation").addEventListener("click", async () => {
    try { await start(); notice(null); await refresh(); $("message").focus(); }
    catch (err) { notice("Could not start a conversation: " + err.message); }
  });
  $("refresh").addEventListener("click", refresh);

  $("send-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("message");
    const text = input.value;
    if (!text.trim()) { notice("Type a message first."); return; }
    const button = $("send");
    button.disabled = true;
    try {
      const id = current || (await start());
      const t = await api("POST", "/v1/conversations/" + encodeURIComponent(id) + "/messages", { text });
      addMessage("user", text, t.intent + " · " + (t.confidence * 100).toFixed(0) + "%");
      addMessage("assistant", t.reply, t.escalate ? "escalated to a person" : null);
      showTurn(t);
      input.value = "";
      notice(null);
      refresh();
    } catch (err) {
      notice("The message was not sent: " + err.message);  // the text stays in the box
    } finally {
      button.disabled = false;
      input.focus();
    }
  });

  refresh();
})();
