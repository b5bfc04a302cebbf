// The /v1 client of the playground: one function per endpoint, each returning a fixed internal shape,
// so the rest of the page never depends on the exact JSON field names of the service.
// Errors come back as ApiError carrying the RFC 9457 problem (title, detail, status).

const JSON_TYPES = ["application/json", "application/problem+json"];

export class ApiError extends Error {
  constructor(problem, status) {
    const title = problem.title || (status ? `HTTP ${status}` : "Request failed");
    super(problem.detail ? `${title}: ${problem.detail}` : title);
    this.name = "ApiError";
    this.status = status;
    this.title = title;
    this.detail = problem.detail || "";
    this.type = problem.type || "about:blank";
    this.problem = problem;
  }
}

let apiKey = "";
try {
  apiKey = window.sessionStorage.getItem("latentserve.apiKey") || "";
} catch {
  apiKey = "";
}

/** Remember an API key for this tab (sent as a bearer token and as X-API-Key). */
export function setApiKey(key) {
  apiKey = key.trim();
  try {
    window.sessionStorage.setItem("latentserve.apiKey", apiKey);
  } catch {
    /* storage may be disabled; the key still lives for this page */
  }
}

export function getApiKey() {
  return apiKey;
}

/** Turn any error body into a problem object with at least a title. */
function problemFrom(body, resp) {
  if (body && typeof body === "object" && !Array.isArray(body)) {
    if (body.title || body.detail) {
      let detail = body.detail;
      if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
      if (Array.isArray(body.errors) && body.errors.length && !detail) {
        detail = body.errors.map((e) => e.message || e.msg || JSON.stringify(e)).join("; ");
      }
      return { ...body, title: body.title || resp.statusText || `HTTP ${resp.status}`, detail: detail || "" };
    }
    if (typeof body.error === "string") return { title: resp.statusText || "Error", detail: body.error };
  }
  if (typeof body === "string" && body.trim()) {
    return { title: resp.statusText || `HTTP ${resp.status}`, detail: body.trim().slice(0, 300) };
  }
  return { title: resp.statusText || `HTTP ${resp.status}`, detail: "" };
}

/** fetch() a JSON endpoint; throws ApiError with the problem on any failure. */
export async function request(path, { method = "GET", body, signal } = {}) {
  const headers = { Accept: "application/json, application/problem+json" };
  const form = typeof FormData !== "undefined" && body instanceof FormData; // multipart: the browser sets the type
  if (body !== undefined && !form) headers["Content-Type"] = "application/json";
  if (apiKey) {
    headers.Authorization = `Bearer ${apiKey}`;
    headers["X-API-Key"] = apiKey;
  }
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined || form ? body : JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError({ title: "The service did not answer", detail: String(err && err.message) }, 0);
  }
  const type = (resp.headers.get("content-type") || "").split(";")[0].trim();
  let data = null;
  if (JSON_TYPES.includes(type)) {
    data = await resp.json().catch(() => null);
  } else {
    data = await resp.text().catch(() => "");
  }
  if (!resp.ok) throw new ApiError(problemFrom(data, resp), resp.status);
  return data;
}

const enc = encodeURIComponent;
const opPath = (model, op) => `/v1/models/${enc(model)}/${op}`;

// ---- response normalisation -------------------------------------------------------------------

function pick(obj, ...keys) {
  for (const k of keys) if (obj && obj[k] !== undefined && obj[k] !== null) return obj[k];
  return undefined;
}

/** Every model, as {name, family, variant, shape, latentDim, capabilities, versions, latest}. */
export async function listModels() {
  const data = await request("/v1/models");
  const rows = Array.isArray(data) ? data : pick(data, "models", "data", "items") || [];
  return rows.map(normaliseModel);
}

/** One model's summary, metrics and anomaly threshold. */
export async function getModel(name) {
  return normaliseModel(await request(`/v1/models/${enc(name)}`));
}

function normaliseModel(m) {
  const data = m.data || {};
  const latent = m.latent || {};
  const shape = pick(m, "shape", "input_shape", "image_shape") || data.shape || [1, 8, 8];
  const versions = pick(m, "versions") || [];
  return {
    name: m.name,
    family: m.family || "?",
    variant: m.variant || "",
    version: pick(m, "version", "latest", "latest_version"),
    versions: Array.isArray(versions) ? versions.map((v) => (typeof v === "object" ? v.version : v)) : [],
    shape: shape.length === 2 ? [1, ...shape] : shape,
    latentDim: pick(m, "latent_dim") ?? latent.dim ?? null,
    prior: pick(m, "prior", "latent_prior") ?? latent.prior ?? null,
    capabilities: m.capabilities || [],
    metrics: m.metrics || {},
    anomaly: m.anomaly || null,
    dataset: pick(m, "dataset") || data.dataset || "",
    labels: Array.isArray(m.labels) ? m.labels : null, // a conditional model's classes, by index
    raw: m,
  };
}

/** Images come back as base64 PNG strings (format=png) or nested arrays; keep them as they are. */
function imagesOf(data, ...keys) {
  const v = pick(data, ...keys);
  return Array.isArray(v) ? v : [];
}

/** A conditional model's label fields, only when set (an unconditional model refuses any label). */
function withLabel(body, label, key = "label") {
  return label === undefined || label === null ? body : { ...body, [key]: label };
}

/** n samples; a conditional model's `label` is one class or one per image, `sharedStyle` one style for all. */
export async function sample(model, { n, seed, temperature, label, sharedStyle }) {
  const body = withLabel({ n, seed, temperature, format: "png" }, label);
  if (sharedStyle) body.shared_style = true;
  const data = await request(opPath(model, "sample"), { method: "POST", body });
  return {
    images: imagesOf(data, "images", "samples"),
    latents: pick(data, "latents", "z") || null,
    labels: pick(data, "labels") || null,
  };
}

/**
 * An interpolation end is {latent} or {image}. The service takes a latent as a flat list of numbers and an
 * image as a base64 string or a (1, C, H, W) array, so a [C][H][W] image is wrapped in one more list.
 */
function endpointBody(ep) {
  if (ep.latent) return ep.latent;
  return typeof ep.image === "string" ? ep.image : [ep.image];
}

export async function interpolate(model, { start, end, steps, method, label }) {
  const data = await request(opPath(model, "interpolate"), {
    method: "POST",
    body: withLabel({ start: endpointBody(start), end: endpointBody(end), steps, method, format: "png" }, label),
  });
  return { images: imagesOf(data, "images", "frames"), latents: pick(data, "latents") || null };
}

export async function encode(model, images, label) {
  const data = await request(opPath(model, "encode"), { method: "POST", body: withLabel({ images }, label) });
  return { latents: pick(data, "latents", "mean", "mu") || [], logvar: pick(data, "logvar", "log_var") || null };
}

export async function decode(model, latents, label) {
  const data = await request(opPath(model, "decode"), {
    method: "POST",
    body: withLabel({ latents, format: "png" }, label),
  });
  return { images: imagesOf(data, "images") };
}

export async function reconstruct(model, images, label) {
  const data = await request(opPath(model, "reconstruct"), {
    method: "POST",
    body: withLabel({ images, format: "png" }, label),
  });
  return {
    images: imagesOf(data, "images", "reconstructions"),
    errors: pick(data, "errors", "error", "mse") || [],
  };
}

export async function denoise(model, images, noise, label) {
  const data = await request(opPath(model, "denoise"), {
    method: "POST",
    body: withLabel({ images, noise, format: "png" }, label),
  });
  return { images: imagesOf(data, "images", "denoised"), noisy: imagesOf(data, "noisy", "noisy_images") };
}

/** Each image, in its own style, drawn as every class: {images (image-major), labels}. A conditional VAE's
 * encoder needs the image's own class, `sourceLabel`. */
export async function restyle(model, images, sourceLabel) {
  const data = await request(opPath(model, "restyle"), {
    method: "POST",
    body: withLabel({ images, format: "png" }, sourceLabel, "source_label"),
  });
  return { images: imagesOf(data, "images"), labels: pick(data, "labels") || [] };
}

/** Anomaly scores as a list of {raw, normalised, threshold, isAnomaly, heatmap}. */
export async function anomalyScore(model, images) {
  const data = await request(opPath(model, "anomaly-score"), {
    method: "POST",
    body: { images, heatmap: true },
  });
  const rows = pick(data, "scores", "results");
  const heatmaps = pick(data, "heatmaps", "heatmap") || [];
  if (Array.isArray(rows) && rows.length && typeof rows[0] === "object") {
    return rows.map((r, i) => ({
      raw: pick(r, "raw", "score"),
      normalised: pick(r, "normalised", "normalized", "score_normalised"),
      threshold: pick(r, "threshold") ?? pick(data, "threshold"),
      isAnomaly: pick(r, "is_anomaly", "anomalous"),
      heatmap: pick(r, "heatmap") ?? heatmaps[i] ?? null,
    }));
  }
  const raw = pick(data, "raw", "scores", "score") || [];
  const norm = pick(data, "normalised", "normalized") || [];
  const flags = pick(data, "is_anomaly") || [];
  const threshold = pick(data, "threshold");
  return raw.map((r, i) => ({
    raw: r,
    normalised: norm[i],
    threshold: Array.isArray(threshold) ? threshold[i] : threshold,
    isAnomaly: flags[i],
    heatmap: heatmaps[i] ?? null,
  }));
}

/** One photo scored at its own size: a multipart upload (the photo as a PNG file), the maps as PNGs.
 * Returns {raw, normalised, isAnomaly, thresholds, size, map (PNG base64), mask (PNG base64 or null),
 * regions: [{box, area, peak, mean}], regionsTotal}. */
export async function anomalyPhoto(model, blob, { pixelThreshold } = {}) {
  const form = new FormData();
  form.append("image", blob, "photo.png");
  form.append("heatmap", "true");
  form.append("format", "png");
  if (pixelThreshold !== undefined && pixelThreshold !== null) form.append("pixel_threshold", String(pixelThreshold));
  const data = await request(opPath(model, "anomaly-score"), { method: "POST", body: form });
  return {
    raw: data.raw[0],
    normalised: data.normalised[0],
    isAnomaly: data.is_anomaly[0],
    thresholds: data.thresholds,
    size: data.sizes[0],
    map: data.anomaly_map ? data.anomaly_map[0] : null,
    mask: data.pred_mask ? data.pred_mask[0] : null,
    regions: data.regions ? data.regions[0] : [],
    regionsTotal: data.regions_total ? data.regions_total[0] : 0,
  };
}
