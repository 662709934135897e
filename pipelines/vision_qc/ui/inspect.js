// vision_qc review page: inspect an image (boxes, scores, verdict at the operating threshold),
// browse the latest decisions, mark a result right or wrong, export the reviewed ones as COCO.
// API: POST/GET /v1/inspections, GET /v1/inspections/{id}[/image], POST .../{id}/review
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const { api, el, notice, bytes } = dv;
  const SVG = "http://www.w3.org/2000/svg";
  let current = null;
  let threshold = null;

  $("limit").textContent = bytes(Number(document.body.dataset.maxBody || 0));

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function show(ins) {
    current = ins.id;
    $("result").hidden = false;
    const img = $("picture");
    img.src = "/v1/inspections/" + encodeURIComponent(ins.id) + "/image";
    img.alt = (ins.filename || "inspected image") + ": " + (ins.defective ? "fail" : "pass") +
      ", " + ins.detections.length + " defects found";
    const boxes = $("boxes");
    boxes.setAttribute("viewBox", `0 0 ${ins.width} ${ins.height}`);
    boxes.setAttribute("preserveAspectRatio", "none");
    const scale = Math.max(ins.width, ins.height) / 500;  // labels readable at any image size
    boxes.replaceChildren(...ins.detections.flatMap((d) => {
      const [x1, y1, x2, y2] = d.bbox;
      return [svg("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1, class: "box" }),
        svg("text", { x: x1 + 2 * scale, y: Math.max(y1 - 4 * scale, 14 * scale),
          "font-size": 14 * scale }, `${d.class} ${d.score.toFixed(2)}`)];
    }));
    $("caption").textContent = (ins.filename || "") + ` · ${ins.width}×${ins.height} px · ` + dv.when(ins.at);
    const t = ins.threshold ?? threshold;
    $("verdict").replaceChildren(el("span", { class: "tag " + (ins.defective ? "bad" : "ok") },
      ins.defective ? "FAIL" : "PASS"), ` at the operating threshold ${t.toFixed(3)}`);
    $("defect-score").textContent = ins.defect_score.toFixed(3);
    $("anomaly-score").textContent = ins.anomaly_score === null ? "not available for this model" : ins.anomaly_score.toFixed(3);
    const r = ins.review;
    $("review").replaceChildren(r
      ? el("span", { class: "tag " + (r.verdict === "right" ? "ok" : "bad") }, r.verdict)
      : el("span", { class: "tag warn" }, "not reviewed"),
      r ? " " + dv.when(r.at) + (r.note ? ": " + r.note : "") : "");
    $("detections").replaceChildren(...(ins.detections.length ? ins.detections.map((d) => el("tr", {},
      el("td", {}, d.class), el("td", { class: "num" }, d.score.toFixed(3)),
      el("td", {}, d.bbox.map((v) => v.toFixed(0)).join(", ")))) : [el("tr", {}, el("td", { colspan: 3 }, "No defects above the threshold."))]));
    $("note").value = r && r.note ? r.note : "";
    for (const b of $("gallery").querySelectorAll("button")) {
      b.setAttribute("aria-current", b.dataset.id === current ? "true" : "false");
    }
  }

  async function open(id) {
    try { show(await api("GET", "/v1/inspections/" + encodeURIComponent(id))); notice(null); }
    catch (err) { notice("Could not open the inspection: " + err.message); }
  }

  async function gallery() {
    const q = new URLSearchParams({ verdict: $("f-verdict").value, review: $("f-review").value, limit: "60" });
    if ($("f-class").value) q.set("class", $("f-class").value);
    try {
      const data = await api("GET", "/v1/inspections?" + q);
      threshold = data.threshold;
      const sel = $("f-class");
      if (sel.options.length === 1) {
        for (const c of data.classes) sel.append(el("option", { value: c }, c));
      }
      $("gallery").replaceChildren(...data.inspections.map((ins) => el("li", {},
        el("button", { type: "button", "data-id": ins.id, "aria-current": ins.id === current ? "true" : "false",
          "aria-label": `${ins.filename || ins.id}: ${ins.verdict}${ins.classes.length ? ", " + ins.classes.join(", ") : ""}${ins.review ? ", reviewed " + ins.review.verdict : ""}`,
          onclick: () => open(ins.id) },
          el("img", { src: "/v1/inspections/" + encodeURIComponent(ins.id) + "/image", alt: "", loading: "lazy" }),
          el("span", { class: "tag " + (ins.verdict === "fail" ? "bad" : "ok") }, ins.verdict), " ",
          ins.classes.join(", "), ins.review ? el("span", { class: "muted" }, " · " + ins.review.verdict) : null))));
      $("gallery-empty").hidden = data.inspections.length > 0;
    } catch (err) { notice("Could not load the gallery: " + err.message); }
  }

  $("upload").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("inspect").disabled = true;
    try {
      const ins = await dv.upload("/v1/inspections", $("file"));
      show(ins);
      notice(null);
      gallery();
    } catch (err) {
      notice("The image was not inspected: " + err.message);
    } finally { $("inspect").disabled = false; }
  });

  async function mark(correct) {
    if (!current) return;
    const note = $("note").value.trim();
    try {
      await api("POST", "/v1/inspections/" + encodeURIComponent(current) + "/review",
        note ? { correct, note } : { correct });
      await open(current);
      notice("Marked " + (correct ? "right" : "wrong") + ". Reviewed results are in the COCO export.", "info");
      gallery();
    } catch (err) { notice("The mark was not saved: " + err.message); }
  }
  $("right").addEventListener("click", () => mark(true));
  $("wrong").addEventListener("click", () => mark(false));
  for (const id of ["f-verdict", "f-class", "f-review"]) $(id).addEventListener("change", gallery);

  gallery();
})();
