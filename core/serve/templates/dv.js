// DeepVerticals review pages: the helpers every page shares. No framework, no build step.
// Pages talk to the server only through its JSON API (same origin; the login cookie, when
// a key is set, travels with each call). Text is always set as text, never as HTML.
"use strict";

const dv = (() => {
  const body = document.body;

  // "body.text: must not be empty" from FastAPI-style {detail: [...]} or {detail: "..."}
  function explain(status, data) {
    const d = data && data.detail;
    let msg;
    if (Array.isArray(d)) {
      msg = d.map((e) => (e.loc ? e.loc.join(".") + ": " : "") + e.msg).join("; ");
    } else if (typeof d === "string") {
      msg = d;
    } else {
      msg = "the server answered " + status;
    }
    if (status === 503) msg += " (the server is not ready or busy; try again shortly)";
    if (status === 401) msg = "missing or wrong API key: sign in again";
    return msg;
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, payload) {
    const init = { method, credentials: "same-origin", headers: { accept: "application/json" } };
    if (payload instanceof FormData) {
      init.body = payload;
    } else if (payload !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "cannot reach the server (" + err.message + ")");
    }
    let data = null;
    try { data = await resp.json(); } catch (_) { data = null; }
    if (!resp.ok) throw new ApiError(resp.status, explain(resp.status, data));
    return data;
  }

  function notice(message, kind) {
    const box = document.getElementById("notice");
    if (!message) { box.hidden = true; box.textContent = ""; return; }
    box.className = "notice" + (kind === "info" ? " info" : "");
    box.textContent = message;
    box.hidden = false;
  }

  // el("td", {class: "num"}, "3.2") -- children are strings (as text) or nodes
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function bytes(n) {
    if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MB";
    if (n >= 1 << 10) return (n / (1 << 10)).toFixed(0) + " KB";
    return n + " bytes";
  }

  // A readable refusal before an upload the server would answer 413.
  function checkUpload(file) {
    const limit = Number(body.dataset.maxBody || 0);
    if (limit && file.size > limit) {
      return file.name + " is " + bytes(file.size) + "; this server takes at most " +
        bytes(limit) + " per request";
    }
    return null;
  }

  // POST the file chosen in ``input`` as multipart. No file, or one over the server's limit,
  // is refused here with a readable message, and nothing is sent.
  async function upload(path, input) {
    const file = input.files[0];
    if (!file) throw new ApiError(0, "choose a file first");
    const tooBig = checkUpload(file);
    if (tooBig) throw new ApiError(413, tooBig);
    const form = new FormData();
    form.append("file", file, file.name);
    return api("POST", path, form);
  }

  function when(seconds) {
    if (seconds === null || seconds === undefined) return "";
    return new Date(seconds * 1000).toLocaleString();
  }

  const ready = body.dataset.status === "ready";
  return { api, upload, notice, el, bytes, checkUpload, when, explain, ready, ApiError };
})();
