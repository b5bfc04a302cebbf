// The playground page: pick a model, then sample, interpolate, draw and score, denoise and move through
// the latent space, all through the service's /v1 API. Plain ES module, no framework, no build step.

import * as api from "./api.js";
import { DrawPad } from "./draw.js";
import { colorbar, inferno, paint, pictureCanvas, range, toArray, toPicture } from "./imaging.js";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

const MAX_SLIDER_LATENT = 16; // latent sliders only make sense for small codes
const SWEEP = 7; // the latent sweep is SWEEP x SWEEP decodes in one request

const state = {
  models: [],
  model: null, // the chosen model (normalised by api.js)
  epoch: 0, // bumped on every model change, so late answers for the old model are dropped
  samples: [], // [{pic, image, latent, label}]
  picked: 0,
  slots: { start: null, end: null }, // interpolation ends: {pic, image?, latent?, label}
  drawing: null, // the drawing at model size (a Picture), once something is drawn
  latent: { base: null, range: [], estimated: false },
};

// ---- small helpers ------------------------------------------------------------------------------

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function fmt(v, digits = 3) {
  if (v === undefined || v === null || v === "") return "–";
  if (typeof v !== "number") return String(v);
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : v.toPrecision(digits).replace(/\.?0+$/, "");
}

function intValue(input, fallback) {
  const v = Number.parseInt(input.value, 10);
  return Number.isFinite(v) ? v : fallback;
}

/** Show an API (or any) error in the panel's alert area, as title (status): detail. */
function showProblem(panel, err) {
  const box = panel.id === "global-error" ? panel : $(".problem", panel);
  box.replaceChildren();
  const title = document.createElement("strong");
  title.textContent = err.title || err.name || "Error";
  box.append(title);
  if (err.status) box.append(` (HTTP ${err.status})`);
  const detail = err.detail ?? (err instanceof api.ApiError ? "" : err.message);
  if (detail) box.append(`: ${detail}`);
  box.hidden = false;
  if (!(err instanceof api.ApiError) && !err.expected) console.warn(err); // a page bug, not a service answer
}

function clearProblem(panel) {
  const box = $(".problem", panel);
  if (box) {
    box.hidden = true;
    box.replaceChildren();
  }
}

/** A user-facing problem raised by the page itself (not the service). */
function pageProblem(title, detail) {
  return Object.assign(new Error(detail), { title, detail, expected: true });
}

/** Run an action for a panel: busy state on, errors shown in the panel, stale answers dropped. */
async function run(panel, action) {
  const epoch = state.epoch;
  panel.setAttribute("aria-busy", "true");
  clearProblem(panel);
  try {
    await action(() => epoch !== state.epoch);
  } catch (err) {
    if (epoch === state.epoch && err.name !== "AbortError") showProblem(panel, err);
  } finally {
    panel.setAttribute("aria-busy", "false");
  }
}

/** A conditional model's classes (null for any other model). */
function classes() {
  return state.model?.labels || null;
}

/** The class picked in the Sample view: undefined for "any class" and for unconditional models. */
function pickedClass() {
  return classes() ? $("#sample-label").value || undefined : undefined;
}

/** The class an operation on a given image or code uses: the item's own, else the picked one, else the
 * first class; undefined for unconditional models (which take no label). */
function classFor(item) {
  if (!classes()) return undefined;
  return item?.cls ?? pickedClass() ?? classes()[0];
}

/** True when the model's encoder takes the label too (a conditional VAE); a supervised AAE's does not. */
function encoderTakesLabel() {
  return !!state.model?.raw?.conditioning?.inputs?.encoder;
}

function has(cap) {
  return !!state.model && state.model.capabilities.includes(cap);
}

function channels() {
  return state.model ? state.model.shape[0] : 1;
}

async function pictures(images) {
  return Promise.all(images.map((im) => toPicture(im, channels())));
}

/** The request form of an interpolation end or a denoise input: the latent when known, else the image. */
function payload(item) {
  return item.latent ? { latent: item.latent } : { image: item.image ?? toArray(item.pic) };
}

/** Empty a result canvas (0 x 0), so nothing stale shows while a new answer is on its way. */
function blankCanvas(canvas) {
  canvas.width = 0;
  canvas.height = 0;
}

function figure(pic, label, caption) {
  const fig = document.createElement("figure");
  const frame = document.createElement("div");
  frame.className = "frame";
  frame.append(pictureCanvas(pic, label));
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  fig.append(frame, cap);
  return fig;
}

// ---- tabs --------------------------------------------------------------------------------------

const tabs = $$('[role="tab"]');

function activateTab(tab, focus = true) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(`#${t.getAttribute("aria-controls")}`).hidden = !on;
  }
  if (focus) tab.focus();
  const view = tab.id.replace("tab-", "");
  history.replaceState(null, "", `${location.pathname}${location.search}#${view}`);
  if (view === "latent") ensureLatent();
  if (view === "interpolate") ensurePair();
}

for (const tab of tabs) tab.addEventListener("click", () => activateTab(tab));
$('[role="tablist"]').addEventListener("keydown", (e) => {
  const i = tabs.indexOf(document.activeElement);
  if (i < 0) return;
  const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
  if (next === undefined) return;
  e.preventDefault();
  activateTab(tabs[(next + tabs.length) % tabs.length]);
});

// ---- models ------------------------------------------------------------------------------------

const select = $("#model-select");
const infoCard = $("#model-info");

async function loadModels() {
  const wanted = new URLSearchParams(location.search).get("model");
  try {
    state.models = await api.listModels();
  } catch (err) {
    showProblem($("#global-error"), err);
    select.replaceChildren(new Option("no models", ""));
    return;
  }
  if (!state.models.length) {
    showProblem($("#global-error"), pageProblem("No models", "The store has no models yet. Publish one with `make models`."));
    select.replaceChildren(new Option("no models", ""));
    return;
  }
  select.replaceChildren(
    ...state.models.map((m) => new Option(`${m.name} (${m.family}${m.variant ? `, ${m.variant}` : ""})`, m.name)),
  );
  select.disabled = false;
  let name = wanted || state.models[0].name;
  let unknown = null;
  if (!state.models.some((m) => m.name === name)) {
    // A link to a model the store does not serve: say so, and show a model that exists, consistently.
    unknown = pageProblem("Unknown model", `The store has no model "${name}"; showing ${state.models[0].name}.`);
    name = state.models[0].name;
  }
  select.value = name;
  await selectModel(name);
  if (unknown) showProblem($("#global-error"), unknown);
}

select.addEventListener("change", () => selectModel(select.value));

async function selectModel(name) {
  state.epoch += 1;
  const epoch = state.epoch;
  const global = $("#global-error");
  global.hidden = true;
  infoCard.setAttribute("aria-busy", "true");
  let model;
  try {
    model = await api.getModel(name);
  } catch (err) {
    if (epoch !== state.epoch) return;
    showProblem(global, err);
    $("#model-title").textContent = name;
    state.model = null; // nothing to act on: every model button off until a model loads
    applyCapabilities();
    infoCard.setAttribute("aria-busy", "false");
    return;
  }
  if (epoch !== state.epoch) return;
  const listed = state.models.find((m) => m.name === name) || {};
  // The list and the detail may each carry fields the other lacks; the detail wins.
  state.model = { ...listed, ...Object.fromEntries(Object.entries(model).filter(([, v]) => v !== null && v !== undefined)) };
  const url = new URL(location.href);
  url.searchParams.set("model", name);
  history.replaceState(null, "", url);
  renderModelInfo();
  resetViews();
  applyCapabilities();
  if (latentOk()) configureSliders();
  infoCard.setAttribute("aria-busy", "false");
  if (has("sample")) await doSample();
  const current = tabs.find((t) => t.getAttribute("aria-selected") === "true");
  if (current.id === "tab-latent") ensureLatent();
  if (current.id === "tab-interpolate") ensurePair();
}

// Metrics worth a glance, most telling first; the rest of the manifest's metrics stay in /v1/models/{name}.
const HEADLINE = [/recon.*mse|^mse$/i, /^nll(_is)?$|elbo/i, /auroc|auc/i, /^val_?loss$/i, /^(kl|mmd)$/i, /^epochs(_run)?$/i];

function renderModelInfo() {
  const m = state.model;
  $("#model-title").textContent = m.name;
  $("#model-family").textContent = m.family.toUpperCase();
  $("#model-family").dataset.family = m.family;
  $("#model-variant").textContent = m.variant && m.variant !== "plain" ? m.variant : "";
  $("#model-shape").textContent = m.shape.join(" × ");
  const prior = m.prior && typeof m.prior === "object" ? m.prior.kind : m.prior;
  $("#model-latent").textContent = m.latentDim ? `${m.latentDim}-d${prior ? `, ${prior} prior` : ""}` : "–";
  $("#model-dataset").textContent = m.dataset || "–";
  $("#model-version").textContent = m.version ?? (m.versions.length ? Math.max(...m.versions) : "–");
  $("#model-threshold").textContent = m.anomaly ? `${fmt(m.anomaly.threshold)} (${m.anomaly.score || "score"})` : "–";
  const caps = $("#model-caps");
  caps.replaceChildren(
    ...["encode", "decode", "sample", "interpolate", "reconstruct", "denoise", "anomaly-score", "restyle"].map((c) => {
      const li = document.createElement("li");
      const yes = m.capabilities.includes(c);
      li.className = yes ? "chip on" : "chip off";
      li.textContent = c;
      if (!yes) li.setAttribute("aria-label", `${c} (not supported)`);
      return li;
    }),
  );
  const metrics = $("#model-metrics");
  const entries = Object.entries(m.metrics || {});
  const rank = ([k]) => {
    const i = HEADLINE.findIndex((re) => re.test(k));
    return i < 0 ? HEADLINE.length : i;
  };
  const numeric = entries.filter(([, v]) => typeof v === "number");
  let shown = numeric.sort((a, b) => rank(a) - rank(b)).filter((e) => rank(e) < HEADLINE.length).slice(0, 6);
  if (!shown.length) shown = numeric.slice(0, 6);
  metrics.replaceChildren(
    ...(shown.length
      ? shown.map(([k, v]) => {
          const div = document.createElement("div");
          const dt = document.createElement("dt");
          const dd = document.createElement("dd");
          dt.textContent = k.replaceAll("_", " ");
          dd.textContent = fmt(v, 4);
          div.append(dt, dd);
          return div;
        })
      : [Object.assign(document.createElement("p"), { className: "muted", textContent: "no metrics recorded" })]),
  );
}

const NEEDS = {
  "panel-sample": ["sample"],
  "panel-interpolate": ["interpolate"],
  "panel-draw": ["reconstruct", "anomaly-score"],
  "panel-photo": ["anomaly-score"],
  "panel-denoise": ["denoise"],
  "panel-latent": ["decode"],
};

function applyCapabilities() {
  for (const btn of $$("[data-capability]")) btn.disabled = !has(btn.dataset.capability);
  const m = state.model;
  if (!m) return; // no model loaded: every button above is off
  for (const [id, caps] of Object.entries(NEEDS)) {
    const note = $(`#${id} .capability-note`);
    const missing = caps.filter((c) => !has(c));
    let text = missing.length
      ? `${m.name} does not support ${missing.join(" or ")}${m.family === "gan" ? " (a GAN has no encoder)" : ""}.`
      : "";
    if (id === "panel-latent" && !missing.length && !(m.latentDim && m.latentDim <= MAX_SLIDER_LATENT)) {
      text = `${m.name} has a ${m.latentDim}-d latent; the sliders are for codes of ${MAX_SLIDER_LATENT} dimensions or fewer.`;
    }
    note.textContent = text;
    note.hidden = !text;
  }
  const latentOk = has("decode") && m.latentDim && m.latentDim <= MAX_SLIDER_LATENT;
  for (const el of $$("#latent-form select, #latent-form input, #latent-form button")) el.disabled = !latentOk;
}

function resetViews() {
  state.samples = [];
  state.picked = 0;
  state.slots = { start: null, end: null };
  state.latent = { base: null, range: [], estimated: false };
  $("#sample-grid").replaceChildren();
  $("#sample-actions").hidden = true;
  configureClasses();
  $("#interp-strip").replaceChildren();
  for (const slot of ["start", "end"]) setSlot(slot, null);
  for (const id of ["denoise-clean", "denoise-noisy", "denoise-result", "draw-recon", "draw-heatmap", "latent-image"]) {
    blankCanvas($(`#${id}`));
  }
  $("#draw-verdict").hidden = true;
  $("#draw-legend").hidden = true;
  $("#latent-sweep").replaceChildren();
  for (const p of $$(".panel")) clearProblem(p);
  const [, h, w] = state.model.shape;
  pad.canvas.setAttribute("aria-label", `Drawing pad: draw a digit; it is shrunk to ${w} × ${h} pixels`);
  if (pad.hasInk) scoreDrawing();
  else blankCanvas($("#draw-input"));
  resetPhoto();
}

// ---- sample ------------------------------------------------------------------------------------

const samplePanel = $("#panel-sample");
const temp = $("#sample-temperature");
temp.addEventListener("input", () => {
  $("#sample-temperature-out").textContent = Number(temp.value).toFixed(2);
});
$("#sample-reseed").addEventListener("click", () => {
  $("#sample-seed").value = Math.floor(Math.random() * 1e6);
  if (has("sample")) doSample();
});
$("#sample-form").addEventListener("submit", (e) => {
  e.preventDefault();
  doSample();
});

function configureClasses() {
  const names = classes();
  const select = $("#sample-label");
  const kept = select.value;
  select.replaceChildren(
    Object.assign(document.createElement("option"), { value: "", textContent: "any class" }),
    ...(names || []).map((n) => Object.assign(document.createElement("option"), { value: n, textContent: n })),
  );
  select.value = names && names.includes(kept) ? kept : "";
  $("#sample-label-field").hidden = !names;
  $("#sample-every").hidden = !names;
  $("#class-grid").hidden = true;
  $("#class-grid").replaceChildren();
  $("#draw-restyle").hidden = !has("restyle");
  $("#draw-restyle-strip").replaceChildren();
}

$("#sample-label").addEventListener("change", () => has("sample") && doSample());
$("#sample-every").addEventListener("click", () => doEveryClass());

/** Every class side by side: one column per class, one row per style (each row one request with the
 * same style drawn as each class, seeds seed, seed + 1, ...). */
function doEveryClass() {
  const names = classes();
  if (!names) return undefined;
  const n = Math.max(1, intValue($("#sample-n"), 16));
  const rows = Math.min(8, Math.max(1, Math.ceil(n / names.length)));
  const seed = intValue($("#sample-seed"), 0);
  const temperature = Number(temp.value);
  return run(samplePanel, async (stale) => {
    const answers = await Promise.all(
      Array.from({ length: rows }, (_, r) =>
        api.sample(state.model.name, { label: names, sharedStyle: true, seed: seed + r, temperature }),
      ),
    );
    const pics = await Promise.all(answers.map((a) => pictures(a.images)));
    if (stale()) return;
    const grid = $("#class-grid");
    grid.style.setProperty("--cols", String(names.length));
    grid.setAttribute("aria-label", `Every class (columns ${names.join(", ")}), one style per row`);
    grid.replaceChildren(
      ...names.map((name) => Object.assign(document.createElement("div"), { className: "head", textContent: name })),
      ...pics.flatMap((row, r) => row.map((pic, k) => pictureCanvas(pic, `class ${names[k]}, style ${seed + r}`))),
    );
    grid.hidden = false;
    $("#sample-grid").replaceChildren();
    $("#sample-actions").hidden = true;
    state.samples = [];
  });
}

function doSample() {
  const n = Math.max(1, intValue($("#sample-n"), 16)); // the server enforces its own limit
  const seed = intValue($("#sample-seed"), 0);
  const temperature = Number(temp.value);
  return run(samplePanel, async (stale) => {
    const res = await api.sample(state.model.name, { n, seed, temperature, label: pickedClass() });
    const pics = await pictures(res.images);
    if (stale()) return;
    state.samples = pics.map((pic, i) => ({
      pic,
      image: res.images[i],
      latent: res.latents ? res.latents[i] : null,
      cls: res.labels ? res.labels[i] : undefined,
      label: `sample ${i + 1} (seed ${seed}${res.labels ? `, class ${res.labels[i]}` : ""})`,
    }));
    $("#class-grid").hidden = true;
    renderSamples();
    if (!state.slots.start && state.samples.length > 1) {
      setSlot("start", state.samples[0]);
      setSlot("end", state.samples[1]);
    }
  });
}

function renderSamples() {
  const grid = $("#sample-grid");
  grid.replaceChildren(
    ...state.samples.map((s, i) => {
      const btn = document.createElement("button");
      btn.type = "button";
      btn.className = "tile";
      btn.setAttribute("aria-pressed", String(i === state.picked));
      btn.setAttribute("aria-label", `Pick sample ${i + 1}`);
      btn.append(pictureCanvas(s.pic, `Sample ${i + 1}`));
      btn.addEventListener("click", () => pickSample(i));
      return btn;
    }),
  );
  pickSample(Math.min(state.picked, state.samples.length - 1));
}

function pickSample(i) {
  state.picked = i;
  $$("#sample-grid .tile").forEach((t, k) => t.setAttribute("aria-pressed", String(k === i)));
  $("#sample-actions").hidden = !state.samples.length;
  $("#sample-selected-label").textContent = `Sample ${i + 1} picked:`;
}

$("#sample-actions").addEventListener("click", (e) => {
  const use = e.target.closest("button")?.dataset.use;
  const s = state.samples[state.picked];
  if (!use || !s) return;
  if (use === "start" || use === "end") {
    setSlot(use, s);
    activateTab($("#tab-interpolate"));
  } else if (use === "denoise") {
    $("#denoise-source").value = "picked";
    activateTab($("#tab-denoise"));
    doDenoise();
  } else if (use === "draw") {
    pad.load(s.pic);
    activateTab($("#tab-draw"));
    scoreDrawing();
  }
});

// ---- interpolate -------------------------------------------------------------------------------

const interpPanel = $("#panel-interpolate");
const steps = $("#interp-steps");
steps.addEventListener("input", () => {
  $("#interp-steps-out").textContent = steps.value;
});

function setSlot(which, item) {
  state.slots[which] = item;
  const fig = $(`#interp-${which}`);
  const canvas = $("canvas", fig);
  $(".frame", fig).classList.toggle("empty", !item);
  $(".source", fig).textContent = item ? item.label : "not set";
  if (item) paint(canvas, item.pic);
  else blankCanvas(canvas);
}

for (const btn of $$("[data-from-drawing]")) {
  btn.addEventListener("click", () => {
    if (!state.drawing) {
      showProblem(interpPanel, pageProblem("Nothing drawn yet", "Draw a digit in the Draw & score view first."));
      return;
    }
    clearProblem(interpPanel);
    setSlot(btn.dataset.fromDrawing, { pic: state.drawing, image: toArray(state.drawing), label: "my drawing" });
  });
}

$("#interp-random").addEventListener("click", () => randomPair());

function randomPair() {
  const seed = intValue($("#interp-pair-seed"), 0);
  return run(interpPanel, async (stale) => {
    const res = await api.sample(state.model.name, { n: 2, seed, temperature: Number(temp.value), label: pickedClass() });
    const pics = await pictures(res.images);
    if (stale()) return;
    pics.forEach((pic, i) =>
      setSlot(i === 0 ? "start" : "end", {
        pic,
        image: res.images[i],
        latent: res.latents ? res.latents[i] : null,
        cls: res.labels ? res.labels[i] : undefined,
        label: `pair seed ${seed}, #${i + 1}${res.labels ? ` (class ${res.labels[i]})` : ""}`,
      }),
    );
  });
}

function ensurePair() {
  if (state.model && !state.slots.start && has("sample")) randomPair();
}

$("#interp-form").addEventListener("submit", (e) => {
  e.preventDefault();
  doInterpolate();
});

function doInterpolate() {
  const n = intValue(steps, 10);
  const method = $('input[name="method"]:checked').value;
  return run(interpPanel, async (stale) => {
    const { start, end } = state.slots;
    if (!start || !end) throw pageProblem("Pick both ends", "Choose a start and an end image first.");
    // A conditional model's path also moves from the start's class to the end's.
    const label = classes() ? [classFor(start), classFor(end)] : undefined;
    const res = await api.interpolate(state.model.name, { start: payload(start), end: payload(end), steps: n, method, label });
    const pics = await pictures(res.images);
    if (stale()) return;
    $("#interp-strip").replaceChildren(
      ...pics.map((pic, i) => {
        const t = pics.length > 1 ? i / (pics.length - 1) : 0;
        return figure(pic, `Frame ${i + 1} of ${pics.length}, t = ${t.toFixed(2)}`, t.toFixed(2));
      }),
    );
  });
}

// ---- draw & score ------------------------------------------------------------------------------

const drawPanel = $("#panel-draw");
const pad = new DrawPad($("#draw-pad"), () => scoreDrawing());
const brush = $("#draw-brush");
brush.addEventListener("input", () => {
  pad.brush = Number(brush.value);
  $("#draw-brush-out").textContent = brush.value;
});
$("#draw-clear").addEventListener("click", () => {
  pad.clear();
  state.drawing = null;
  for (const id of ["draw-input", "draw-recon", "draw-heatmap"]) blankCanvas($(`#${id}`));
  $("#draw-verdict").hidden = true;
  $("#draw-legend").hidden = true;
  clearProblem(drawPanel);
});
$("#draw-fit").addEventListener("change", () => pad.hasInk && scoreDrawing());
$("#draw-score").addEventListener("click", () => scoreDrawing());
$("#draw-sample").addEventListener("click", () =>
  run(drawPanel, async (stale) => {
    const seed = Math.floor(Math.random() * 1e6);
    const res = await api.sample(state.model.name, { n: 1, seed, temperature: 1, label: pickedClass() });
    const [pic] = await pictures(res.images);
    if (stale()) return;
    pad.load(pic);
    scoreDrawing();
  }),
);

const scoreDrawing = debounce(() => {
  if (!state.model || !pad.hasInk) return;
  const pic = pad.toPicture(state.model.shape, { fit: $("#draw-fit").checked });
  state.drawing = pic;
  paint($("#draw-input"), pic);
  run(drawPanel, async (stale) => {
    const image = toArray(pic);
    const [recon, scores, restyled] = await Promise.all([
      has("reconstruct") ? api.reconstruct(state.model.name, [image], classFor()) : null,
      has("anomaly-score") ? api.anomalyScore(state.model.name, [image]) : null,
      has("restyle") ? api.restyle(state.model.name, [image], encoderTakesLabel() ? classFor() : undefined) : null,
    ]);
    if (stale()) return;
    if (restyled) {
      const pics = await pictures(restyled.images);
      if (stale()) return;
      $("#draw-restyle-strip").replaceChildren(
        ...pics.map((pic, k) => figure(pic, `The drawing as class ${restyled.labels[k]}`, restyled.labels[k])),
      );
    }
    if (recon) {
      const [rpic] = await pictures(recon.images.slice(0, 1));
      paint($("#draw-recon"), rpic);
      $("#draw-error").textContent = fmt(Array.isArray(recon.errors) ? recon.errors[0] : recon.errors);
    }
    if (scores && scores.length) await renderScore(scores[0]);
    // A model with neither capability (a GAN without encoder) only shows the model input; the
    // capability note already says why.
  });
}, 60);

async function renderScore(s) {
  const threshold = s.threshold ?? state.model.anomaly?.threshold;
  const anomalous = s.isAnomaly ?? (threshold !== undefined && s.raw > threshold);
  const norm = typeof s.normalised === "number" ? s.normalised : anomalous ? 1 : 0;
  const badge = $("#draw-badge");
  badge.textContent = anomalous ? "Anomalous" : "Normal";
  badge.className = `badge ${anomalous ? "anomalous" : "normal"}`;
  $("#draw-raw").textContent = fmt(s.raw, 4);
  $("#draw-threshold").textContent = fmt(threshold, 4);
  $("#draw-normalised").textContent = fmt(norm, 3);
  const meter = $("#draw-meter");
  meter.setAttribute("aria-valuenow", String(norm));
  meter.setAttribute("aria-valuetext", `${norm.toFixed(2)}, ${anomalous ? "anomalous" : "normal"} (threshold 0.5)`);
  meter.classList.toggle("anomalous", !!anomalous);
  $("#draw-meter-fill").style.width = `${Math.round(norm * 100)}%`;
  $("#draw-verdict").hidden = false;
  if (s.heatmap) {
    const hm = await toPicture(s.heatmap, 1);
    // A VAE's map is a per-pixel negative log-likelihood, which can be below 0: the legend shows the range.
    const [lo, hi] = range(hm);
    const vmin = Math.min(0, lo);
    const vmax = hi > vmin ? hi : vmin + 1;
    paint($("#draw-heatmap"), hm, { colormap: inferno, vmin, vmax });
    colorbar($("#draw-colorbar"));
    $("#draw-legend-min").textContent = fmt(vmin, 3);
    $("#draw-legend-max").textContent = fmt(vmax, 3);
    $("#draw-legend").hidden = false;
  }
}

// ---- photo --------------------------------------------------------------------------------------

const photoPanel = $("#panel-photo");
const photoCanvas = $("#photo-input");
const photoSlider = $("#photo-threshold");
const photo = { loaded: false, pixel: null, defects: 0 };

function photoControls(on) {
  for (const id of ["photo-scratch", "photo-blob"]) $(`#${id}`).disabled = !on;
  $("#photo-score").disabled = !on || !has("anomaly-score");
}

/** Put an image (a File, a Blob or a URL) on the photo canvas at its own size, then score it. */
async function loadPhoto(source) {
  const url = typeof source === "string" ? source : URL.createObjectURL(source);
  const img = new Image();
  img.decoding = "async";
  try {
    await new Promise((resolve, reject) => {
      img.onload = resolve;
      img.onerror = () => reject(pageProblem("Not an image", "The browser could not read that file as PNG or JPEG."));
      img.src = url;
    });
  } finally {
    if (typeof source !== "string") URL.revokeObjectURL(url);
  }
  photoCanvas.width = img.naturalWidth;
  photoCanvas.height = img.naturalHeight;
  photoCanvas.getContext("2d").drawImage(img, 0, 0);
  photo.loaded = true;
  photo.defects = 0;
  photoControls(true);
  await scorePhoto();
}

/** A seeded-looking defect pasted on the photo: a bright scratch, or a dark blob. */
function pasteDefect(kind) {
  if (!photo.loaded) return;
  const ctx = photoCanvas.getContext("2d");
  const w = photoCanvas.width;
  const h = photoCanvas.height;
  photo.defects += 1;
  const r = (k) => ((Math.sin(photo.defects * 12.9898 + k * 78.233) * 43758.5453) % 1 + 1) % 1; // repeatable
  if (kind === "scratch") {
    ctx.strokeStyle = "rgb(250,250,250)";
    ctx.lineWidth = Math.max(2, Math.round(Math.min(w, h) / 100));
    ctx.lineCap = "round";
    ctx.beginPath();
    const x = w * (0.2 + 0.6 * r(1));
    const y = h * (0.2 + 0.6 * r(2));
    ctx.moveTo(x, y);
    ctx.lineTo(x + w * (0.1 + 0.15 * r(3)), y + h * (0.05 + 0.1 * r(4)));
    ctx.stroke();
  } else {
    ctx.fillStyle = "rgb(15,15,15)";
    ctx.beginPath();
    ctx.arc(w * (0.2 + 0.6 * r(5)), h * (0.2 + 0.6 * r(6)), Math.max(4, Math.min(w, h) / 20), 0, 2 * Math.PI);
    ctx.fill();
  }
  scorePhoto();
}

function canvasBlob(canvas) {
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

/** A base64 PNG's pixels, at its own size or stretched to (w, h). */
async function decodePng(b64, w, h) {
  const img = new Image();
  await new Promise((resolve, reject) => {
    img.onload = resolve;
    img.onerror = reject;
    img.src = `data:image/png;base64,${b64}`;
  });
  const c = document.createElement("canvas");
  c.width = w || img.naturalWidth;
  c.height = h || img.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0, c.width, c.height);
  return ctx.getImageData(0, 0, c.width, c.height);
}

/** The photo in grey, the map over it in inferno (transparent where low), the regions boxed in cyan. */
async function drawOverlay(res) {
  const out = $("#photo-overlay");
  out.width = photoCanvas.width;
  out.height = photoCanvas.height;
  const ctx = out.getContext("2d");
  ctx.drawImage(photoCanvas, 0, 0);
  const base = ctx.getImageData(0, 0, out.width, out.height);
  if (res.map) {
    const heat = await decodePng(res.map, out.width, out.height); // grey: 0 to twice the pixel threshold
    const px = base.data;
    for (let i = 0; i < px.length; i += 4) {
      const grey = 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2];
      const t = heat.data[i] / 255;
      const [r, g, b] = inferno(t);
      const a = 0.15 + 0.7 * t;
      px[i] = grey * (1 - a) + r * a;
      px[i + 1] = grey * (1 - a) + g * a;
      px[i + 2] = grey * (1 - a) + b * a;
    }
    ctx.putImageData(base, 0, 0);
  }
  ctx.strokeStyle = "rgb(0,255,255)";
  ctx.lineWidth = Math.max(1, Math.round(Math.min(out.width, out.height) / 200));
  for (const reg of res.regions) {
    const [x0, y0, x1, y1] = reg.box;
    ctx.strokeRect(x0 + 0.5, y0 + 0.5, x1 - x0 - 1, y1 - y0 - 1);
  }
  const mask = $("#photo-mask");
  if (res.mask) {
    const m = await decodePng(res.mask);
    mask.width = m.width;
    mask.height = m.height;
    mask.getContext("2d").putImageData(m, 0, 0);
  } else {
    blankCanvas(mask);
  }
}

function renderPhotoVerdict(res) {
  const anomalous = !!res.isAnomaly;
  const badge = $("#photo-badge");
  badge.textContent = anomalous ? "Anomalous" : "Normal";
  badge.className = `badge ${anomalous ? "anomalous" : "normal"}`;
  $("#photo-raw").textContent = fmt(res.raw, 4);
  $("#photo-image-threshold").textContent = `${fmt(res.thresholds.image, 4)} (${res.thresholds.image_source})`;
  $("#photo-normalised").textContent = fmt(res.normalised, 3);
  $("#photo-region-count").textContent = res.thresholds.pixel === null ? "no pixel threshold" : String(res.regionsTotal);
  $("#photo-size").textContent = `${res.size[1]} × ${res.size[0]}`;
  const body = $("#photo-regions tbody");
  body.replaceChildren(
    ...res.regions.slice(0, 20).map((reg, i) => {
      const tr = document.createElement("tr");
      for (const v of [i + 1, reg.box.join(", "), reg.area, fmt(reg.peak, 4)]) {
        const td = document.createElement("td");
        td.textContent = String(v);
        tr.append(td);
      }
      return tr;
    }),
  );
  $("#photo-verdict").hidden = false;
}

/** The slider's range: 0 to three times the model's pixel threshold (or the first answer's). */
function configurePhotoSlider(pixel) {
  if (pixel === null || pixel === undefined) {
    photoSlider.disabled = true;
    $("#photo-threshold-out").textContent = "–";
    return;
  }
  if (photo.pixel === null) {
    photoSlider.min = "0";
    photoSlider.max = String(3 * pixel || 1);
    photoSlider.step = String((3 * pixel || 1) / 300);
    photoSlider.value = String(pixel);
    photo.pixel = pixel;
  }
  photoSlider.disabled = false;
  $("#photo-threshold-out").textContent = fmt(Number(photoSlider.value), 3);
}

const scorePhoto = debounce(() => {
  if (!state.model || !photo.loaded || !has("anomaly-score")) return;
  run(photoPanel, async (stale) => {
    const blob = await canvasBlob(photoCanvas);
    const asked = photo.pixel === null ? undefined : Number(photoSlider.value);
    const res = await api.anomalyPhoto(state.model.name, blob, { pixelThreshold: asked });
    if (stale()) return;
    configurePhotoSlider(res.thresholds.pixel);
    await drawOverlay(res);
    renderPhotoVerdict(res);
    photoPanel.dataset.scored = String(Number(photoPanel.dataset.scored || 0) + 1);
  });
}, 80);

$("#photo-file").addEventListener("change", (e) => {
  const file = e.target.files && e.target.files[0];
  if (file) run(photoPanel, () => loadPhoto(file));
});
$("#photo-sample").addEventListener("change", (e) => {
  if (e.target.value) run(photoPanel, () => loadPhoto(`/static/samples/${e.target.value}.png`));
});
const drop = $("#photo-drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const file = e.dataTransfer && e.dataTransfer.files[0];
  if (file) run(photoPanel, () => loadPhoto(file));
});
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    $("#photo-file").click();
  }
});
$("#photo-scratch").addEventListener("click", () => pasteDefect("scratch"));
$("#photo-blob").addEventListener("click", () => pasteDefect("blob"));
$("#photo-score").addEventListener("click", () => scorePhoto());
photoSlider.addEventListener("input", () => {
  $("#photo-threshold-out").textContent = fmt(Number(photoSlider.value), 3);
  scorePhoto();
});

function resetPhoto() {
  photo.pixel = null; // a new model: its own pixel threshold
  photoSlider.disabled = true;
  $("#photo-verdict").hidden = true;
  for (const id of ["photo-overlay", "photo-mask"]) blankCanvas($(`#${id}`));
  photoControls(photo.loaded);
  if (photo.loaded) scorePhoto();
}

// ---- denoise -----------------------------------------------------------------------------------

const denoisePanel = $("#panel-denoise");
const level = $("#denoise-level");
level.addEventListener("input", () => {
  $("#denoise-level-out").textContent = Number(level.value).toFixed(2);
});
$("#denoise-form").addEventListener("submit", (e) => {
  e.preventDefault();
  doDenoise();
});

async function denoiseSource(stale) {
  const source = $("#denoise-source").value;
  if (source === "drawing") {
    if (!state.drawing) throw pageProblem("Nothing drawn yet", "Draw a digit in the Draw & score view first.");
    return { pic: state.drawing, image: toArray(state.drawing) };
  }
  if (source === "picked" && state.samples[state.picked]) return state.samples[state.picked];
  const res = await api.sample(state.model.name, { n: 1, seed: 0, temperature: 1, label: pickedClass() });
  const [pic] = await pictures(res.images);
  if (stale()) return null;
  return { pic, image: res.images[0], cls: res.labels ? res.labels[0] : undefined };
}

function doDenoise() {
  const noise = { kind: $("#denoise-kind").value, level: Number(level.value), seed: intValue($("#denoise-seed"), 0) };
  return run(denoisePanel, async (stale) => {
    const src = await denoiseSource(stale);
    if (!src) return;
    const res = await api.denoise(state.model.name, [src.image ?? toArray(src.pic)], noise, classFor(src));
    const [clean] = await pictures(res.images.slice(0, 1));
    const noisy = res.noisy.length ? (await pictures(res.noisy.slice(0, 1)))[0] : null;
    if (stale()) return;
    paint($("#denoise-clean"), src.pic);
    if (noisy) paint($("#denoise-noisy"), noisy);
    paint($("#denoise-result"), clean);
  });
}

// ---- latent sliders ----------------------------------------------------------------------------

const latentPanel = $("#panel-latent");
const dimX = $("#latent-dim-x");
const dimY = $("#latent-dim-y");
const sliderX = $("#latent-x");
const sliderY = $("#latent-y");

function latentOk() {
  const m = state.model;
  return m && has("decode") && m.latentDim && m.latentDim <= MAX_SLIDER_LATENT;
}

/**
 * Per-dimension [centre, half-width] of the sliders: mean ± 3 std over 64 prior samples. The prior's own
 * scale is not in the model summary, and a fitted Gaussian or GMM prior (deterministic AEs) can sit far
 * from the origin, so the page measures it.
 */
async function estimateRanges() {
  const d = state.model.latentDim;
  const fallback = Array.from({ length: d }, () => [0, 3]);
  if (!has("sample")) return fallback;
  const res = await api.sample(state.model.name, { n: 64, seed: 12345, temperature: 1 });
  const zs = res.latents;
  if (!zs || zs.length < 2) return fallback;
  return fallback.map((_, i) => {
    const col = zs.map((z) => Number(z[i]));
    const mean = col.reduce((a, v) => a + v, 0) / col.length;
    const sd = Math.sqrt(col.reduce((a, v) => a + (v - mean) ** 2, 0) / (col.length - 1));
    return [mean, 3 * Math.max(sd, 1e-3)];
  });
}

function configureSliders() {
  const d = state.model.latentDim;
  const opts = (sel, chosen) =>
    sel.replaceChildren(...Array.from({ length: d }, (_, i) => new Option(`z[${i}]`, String(i), false, i === chosen)));
  opts(dimX, 0);
  opts(dimY, Math.min(1, d - 1));
  state.latent.range = Array.from({ length: d }, () => [0, 3]);
  state.latent.estimated = false;
  syncSliders();
}

/** Put the sliders on the base code's values of the two chosen dimensions. */
function syncSliders() {
  const base = state.latent.base;
  for (const [slider, sel] of [[sliderX, dimX], [sliderY, dimY]]) {
    const i = Number(sel.value);
    const [centre, half] = state.latent.range[i] || [0, 3];
    const v = base ? base[i] : centre;
    const lo = Math.min(centre - half, v);
    const hi = Math.max(centre + half, v);
    slider.min = String(lo);
    slider.max = String(hi);
    slider.step = String((hi - lo) / 120);
    slider.value = String(v);
  }
  showSliderValues();
}

function showSliderValues() {
  $("#latent-x-out").textContent = Number(sliderX.value).toFixed(2);
  $("#latent-y-out").textContent = Number(sliderY.value).toFixed(2);
}

function currentCode() {
  const z = [...state.latent.base];
  z[Number(dimX.value)] = Number(sliderX.value);
  if (dimY.value !== dimX.value) z[Number(dimY.value)] = Number(sliderY.value);
  return z;
}

async function loadBase(stale) {
  const d = state.model.latentDim;
  const source = $("#latent-base").value;
  if (source === "zero") return new Array(d).fill(0);
  if (source === "drawing") {
    if (!state.drawing) throw pageProblem("Nothing drawn yet", "Draw a digit in the Draw & score view first.");
    if (!has("encode")) throw pageProblem("No encoder", `${state.model.name} cannot encode a drawing.`);
    const res = await api.encode(state.model.name, [toArray(state.drawing)], encoderTakesLabel() ? classFor() : undefined);
    return res.latents[0];
  }
  const seed = intValue($("#latent-seed"), 0);
  const res = await api.sample(state.model.name, { n: 1, seed, temperature: 1, label: classFor() });
  if (res.latents) return res.latents[0];
  if (has("encode")) return (await api.encode(state.model.name, [res.images[0]], encoderTakesLabel() ? classFor() : undefined)).latents[0];
  if (stale()) return null;
  return state.latent.range.map(([centre]) => centre); // no way to know the sample's code: use the centre
}

function ensureLatent() {
  if (latentOk() && !state.latent.base) setBase();
}

function setBase() {
  if (!latentOk()) return undefined;
  return run(latentPanel, async (stale) => {
    if (!state.latent.estimated) {
      const ranges = await estimateRanges();
      if (stale()) return;
      state.latent.range = ranges;
      state.latent.estimated = true;
    }
    const base = await loadBase(stale);
    if (!base || stale()) return;
    state.latent.base = base.map(Number);
    syncSliders();
    await Promise.all([decodeNow(), sweep()]);
  });
}

let decoding = false;
let decodeAgain = false;

/** Decode the slider code; at most one request in flight, and the last slider position always wins. */
async function decodeNow() {
  if (!state.latent.base) return;
  if (decoding) {
    decodeAgain = true;
    return;
  }
  decoding = true;
  const epoch = state.epoch;
  try {
    do {
      decodeAgain = false;
      const z = currentCode();
      const res = await api.decode(state.model.name, [z], classFor());
      const [pic] = await pictures(res.images);
      if (epoch !== state.epoch) return;
      paint($("#latent-image"), pic);
      $("#latent-caption").textContent = `Decoded at z[${dimX.value}] = ${fmt(z[Number(dimX.value)])}, z[${dimY.value}] = ${fmt(z[Number(dimY.value)])}`;
      markSweep();
    } while (decodeAgain);
    clearProblem(latentPanel);
  } catch (err) {
    if (epoch === state.epoch) showProblem(latentPanel, err);
  } finally {
    decoding = false;
  }
}

const decodeSoon = debounce(decodeNow, 40);

for (const slider of [sliderX, sliderY]) {
  slider.addEventListener("input", () => {
    showSliderValues();
    decodeSoon();
  });
}
for (const sel of [dimX, dimY]) {
  sel.addEventListener("change", () => {
    syncSliders();
    run(latentPanel, async () => {
      await Promise.all([decodeNow(), sweep()]);
    });
  });
}
$("#latent-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setBase();
});
$("#latent-reset").addEventListener("click", () => {
  syncSliders();
  decodeNow();
});

/** Decode a SWEEP x SWEEP grid over the two chosen dimensions, around the base code. */
async function sweep() {
  const [ix, iy] = [Number(dimX.value), Number(dimY.value)];
  const axis = (slider) => {
    const [lo, hi] = [Number(slider.min), Number(slider.max)];
    return Array.from({ length: SWEEP }, (_, k) => lo + ((hi - lo) * k) / (SWEEP - 1));
  };
  const xs = axis(sliderX);
  const ys = ix === iy ? [Number(sliderY.value)] : axis(sliderY);
  const codes = [];
  for (const y of ys) {
    for (const x of xs) {
      const z = [...state.latent.base];
      z[iy] = y;
      z[ix] = x;
      codes.push(z);
    }
  }
  const epoch = state.epoch;
  const res = await api.decode(state.model.name, codes, classFor());
  const pics = await pictures(res.images);
  if (epoch !== state.epoch) return;
  const grid = $("#latent-sweep");
  grid.style.setProperty("--cols", String(xs.length));
  grid.replaceChildren(
    ...pics.map((pic, k) => {
      const c = pictureCanvas(pic, "");
      c.removeAttribute("role");
      c.removeAttribute("aria-label");
      c.dataset.x = String(xs[k % xs.length]);
      c.dataset.y = String(ys[Math.floor(k / xs.length)]);
      return c;
    }),
  );
  markSweep();
}

function markSweep() {
  const cells = $$("#latent-sweep canvas");
  if (!cells.length) return;
  const [x, y] = [Number(sliderX.value), Number(sliderY.value)];
  let best = null;
  let bestD = Infinity;
  for (const c of cells) {
    const d = (Number(c.dataset.x) - x) ** 2 + (Number(c.dataset.y) - y) ** 2;
    if (d < bestD) [best, bestD] = [c, d];
    c.classList.remove("current");
  }
  best.classList.add("current");
}

// ---- API key -----------------------------------------------------------------------------------

$("#api-key").value = api.getApiKey();
$("#key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  api.setApiKey($("#api-key").value);
  loadModels();
});

// ---- start -------------------------------------------------------------------------------------

const startTab = tabs.find((t) => t.id === `tab-${location.hash.slice(1)}`);
if (startTab) activateTab(startTab, false);
try {
  await loadModels();
} finally {
  document.body.dataset.ready = "true"; // tests and scripts wait on this, error or not
}
