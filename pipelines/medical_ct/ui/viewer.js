// medical_ct review page: pick a study, scroll its axial slices under a window, jump to a
// nodule from the list, see the predicted contours, accept or reject each nodule, download
// the report. API: /v1/studies, /v1/studies/{id}[/slices/{z}|/contours/{z}|/report/{kind}],
// POST /v1/studies/{id}/nodules/{k}/review
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const { api, el, notice, bytes } = dv;
  let study = null;     // the study shown
  let z = 0;
  let windowName = "lung";
  let selected = null;  // nodule id

  $("limit").textContent = bytes(Number(document.body.dataset.maxBody || 0));
  const base = () => "/v1/studies/" + encodeURIComponent(study.id);

  function draw() {
    const depth = study.shape[0];
    z = Math.min(Math.max(z, 0), depth - 1);
    $("slice").src = `${base()}/slices/${z}?window=${windowName}`;
    $("contours").src = `${base()}/contours/${z}`;
    $("contours").hidden = !$("show-contours").checked;
    $("z").value = String(z);
    const here = study.nodules.filter((n) => n.slice === z).map((n) => "nodule " + n.id);
    $("slice-label").textContent = `slice ${z + 1} of ${depth}` + (here.length ? " · " + here.join(", ") : "");
    $("slice").alt = `Axial slice ${z + 1} of ${depth}, ${windowName} window` + (here.length ? ", centre of " + here.join(", ") : "");
  }

  function reviewTag(r) {
    return r ? el("span", { class: "tag " + (r.verdict === "accepted" ? "ok" : "bad") }, r.verdict)
      : el("span", { class: "tag warn" }, "not reviewed");
  }

  function nodules() {
    $("nodules").replaceChildren(...study.nodules.map((n) => el("li", {},
      el("button", { type: "button", "data-id": n.id, "aria-current": n.id === selected ? "true" : "false",
        onclick: () => pickNodule(n.id) },
        el("strong", {}, `Nodule ${n.id}`), ` · slice ${n.slice + 1} · ${n.diameter_mm.toFixed(1)} mm ${n.type.replace("_", " ")} · p ${n.confidence.toFixed(2)} `,
        reviewTag(n.review)))));
    $("nodules-empty").hidden = study.nodules.length > 0;
  }

  function pickNodule(id) {
    const n = study.nodules.find((x) => x.id === id);
    if (!n) return;
    selected = id;
    z = n.slice;
    draw();
    nodules();
    $("nodule-review").hidden = false;
    $("r-id").textContent = `${n.id} (slice ${n.slice + 1})`;
    $("r-state").replaceChildren(reviewTag(n.review), n.review && n.review.note ? " " + n.review.note : "");
    $("note").value = n.review && n.review.note ? n.review.note : "";
    $("accept").focus();
  }

  async function open(id) {
    try {
      const data = await api("GET", "/v1/studies/" + encodeURIComponent(id));
      study = data.study;
      selected = null;
      $("pick").hidden = true;
      $("viewer-body").hidden = false;
      $("nodule-review").hidden = true;
      $("z").max = String(study.shape[0] - 1);
      const sp = study.spacing_mm;
      $("study-info").textContent = `${study.filename || study.id} · ${study.shape.join("×")} voxels · ` +
        `${sp[0]} mm slices · ${study.n_nodules} nodules`;
      z = study.nodules.length ? study.nodules[0].slice : Math.floor(study.shape[0] / 2);
      draw();
      nodules();
      $("reports").replaceChildren(...study.reports.map((k) =>
        el("a", { href: `${base()}/report/${k}`, download: "" }, { md: "Markdown", json: "JSON", seg: "DICOM SEG" }[k])));
      for (const b of $("studies").querySelectorAll("button")) {
        b.setAttribute("aria-current", b.dataset.id === id ? "true" : "false");
      }
      notice(null);
    } catch (err) { notice("Could not open the study: " + err.message); }
  }

  async function list() {
    try {
      const data = await api("GET", "/v1/studies");
      $("studies").replaceChildren(...data.studies.map((s) => el("li", {},
        el("button", { type: "button", "data-id": s.id, "aria-current": study && s.id === study.id ? "true" : "false",
          onclick: () => open(s.id) },
          el("strong", {}, s.filename || s.id), el("br"),
          el("span", { class: "muted" }, `${s.n_nodules} nodules · ${s.reviewed} reviewed · ${dv.when(s.at)}`)))));
      $("studies-empty").hidden = data.studies.length > 0;
    } catch (err) { notice("Could not list the studies: " + err.message); }
  }

  async function review(accept) {
    if (!study || selected === null) return;
    const id = selected;
    const note = $("note").value.trim();
    try {
      const r = await api("POST", `${base()}/nodules/${id}/review`, note ? { accept, note } : { accept });
      study.nodules.find((n) => n.id === id).review = r.review;
      nodules();
      pickNodule(id);
      notice(`Nodule ${id} ${r.review.verdict}.`, "info");
      list();
    } catch (err) { notice("The review was not saved: " + err.message); }
  }

  // scrolling: wheel over the image, arrow keys when it (or the slider) has focus
  $("stack").addEventListener("wheel", (ev) => {
    if (!study) return;
    ev.preventDefault();
    z += ev.deltaY > 0 ? 1 : -1;
    draw();
  }, { passive: false });
  $("stack").addEventListener("keydown", (ev) => {
    if (!study) return;
    const step = { ArrowUp: -1, ArrowLeft: -1, ArrowDown: 1, ArrowRight: 1, PageUp: -10, PageDown: 10 }[ev.key];
    if (step !== undefined) z += step;
    else if (ev.key === "Home") z = 0;
    else if (ev.key === "End") z = study.shape[0] - 1;
    else return;
    ev.preventDefault();
    draw();
  });
  $("z").addEventListener("input", () => { z = Number($("z").value); draw(); });
  $("show-contours").addEventListener("change", draw);
  for (const b of document.querySelectorAll("[data-window]")) {
    b.addEventListener("click", () => {
      windowName = b.dataset.window;
      for (const o of document.querySelectorAll("[data-window]")) o.setAttribute("aria-pressed", o === b ? "true" : "false");
      draw();
    });
  }
  $("accept").addEventListener("click", () => review(true));
  $("reject").addEventListener("click", () => review(false));

  $("upload").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("add").disabled = true;
    $("working").hidden = false;
    try {
      const data = await dv.upload("/v1/studies", $("file"));
      await list();
      await open(data.study.id);
    } catch (err) {
      notice("The study was not added: " + err.message);
    } finally { $("add").disabled = false; $("working").hidden = true; }
  });

  list();
})();
