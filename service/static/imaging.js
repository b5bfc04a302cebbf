// Pictures: the page's one image type, {c, h, w, data: Float32Array (C*H*W, values in [0, 1])}.
// The API hands back base64 PNGs or nested arrays; both become Pictures, and every Picture is shown
// on a <canvas> scaled up with `image-rendering: pixelated` so each model pixel stays a crisp square.

/** A blank Picture. */
export function blank(c, h, w) {
  return { c, h, w, data: new Float32Array(c * h * w) };
}

function depth(a) {
  let d = 0;
  while (Array.isArray(a)) {
    d += 1;
    a = a[0];
  }
  return d;
}

/** Nested arrays [C][H][W], [H][W] or [H][W][C] (C = 1 or 3) to a Picture. */
export function fromArray(arr) {
  const d = depth(arr);
  if (d === 2) {
    const h = arr.length;
    const w = arr[0].length;
    const pic = blank(1, h, w);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) pic.data[y * w + x] = arr[y][x];
    return pic;
  }
  if (d === 3) {
    const channelsFirst = arr.length <= 4 && arr[0].length > 4;
    if (channelsFirst) {
      const [c, h, w] = [arr.length, arr[0].length, arr[0][0].length];
      const pic = blank(c, h, w);
      for (let k = 0; k < c; k++)
        for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) pic.data[(k * h + y) * w + x] = arr[k][y][x];
      return pic;
    }
    const [h, w, c] = [arr.length, arr[0].length, arr[0][0].length];
    const pic = blank(c, h, w);
    for (let k = 0; k < c; k++)
      for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) pic.data[(k * h + y) * w + x] = arr[y][x][k];
    return pic;
  }
  if (d === 4 && arr.length === 1) return fromArray(arr[0]);
  throw new Error(`cannot read an image of nesting depth ${d}`);
}

/** A Picture as nested [C][H][W] arrays, rounded to 4 decimals to keep request bodies small. */
export function toArray(pic) {
  const out = [];
  for (let k = 0; k < pic.c; k++) {
    const plane = [];
    for (let y = 0; y < pic.h; y++) {
      const row = new Array(pic.w);
      for (let x = 0; x < pic.w; x++) row[x] = Math.round(pic.data[(k * pic.h + y) * pic.w + x] * 1e4) / 1e4;
      plane.push(row);
    }
    out.push(plane);
  }
  return out;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the service sent an image the browser cannot decode"));
    img.src = src;
  });
}

/** A base64 PNG/JPEG (with or without a data: prefix) to a Picture with `channels` channels. */
export async function fromBase64(b64, channels = 1) {
  const src = b64.startsWith("data:") ? b64 : `data:image/png;base64,${b64}`;
  const img = await loadImage(src);
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const pic = blank(channels, canvas.height, canvas.width);
  const n = canvas.width * canvas.height;
  for (let i = 0; i < n; i++) {
    if (channels === 1) {
      pic.data[i] = (0.299 * rgba[4 * i] + 0.587 * rgba[4 * i + 1] + 0.114 * rgba[4 * i + 2]) / 255;
    } else {
      for (let k = 0; k < channels; k++) pic.data[k * n + i] = rgba[4 * i + Math.min(k, 2)] / 255;
    }
  }
  return pic;
}

/** Any image the API returns (base64 string, nested arrays, or already a Picture) to a Picture. */
export async function toPicture(image, channels = 1) {
  if (image && image.data instanceof Float32Array) return image;
  if (typeof image === "string") return fromBase64(image, channels);
  if (Array.isArray(image)) return fromArray(image);
  throw new Error("the service sent an image in a form the page does not know");
}

/** Fill `canvas` (resized to the Picture) with the Picture; one channel is grey unless a colormap is given. */
export function paint(canvas, pic, { colormap = null, vmin = 0, vmax = 1 } = {}) {
  canvas.width = pic.w;
  canvas.height = pic.h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(pic.w, pic.h);
  const n = pic.w * pic.h;
  const span = vmax - vmin || 1;
  for (let i = 0; i < n; i++) {
    let r;
    let g;
    let b;
    if (pic.c >= 3) {
      [r, g, b] = [0, 1, 2].map((k) => clamp01(pic.data[k * n + i]) * 255);
    } else if (colormap) {
      // Several channels of a heatmap are averaged into one map before colouring.
      let v = 0;
      for (let k = 0; k < pic.c; k++) v += pic.data[k * n + i];
      [r, g, b] = colormap(clamp01((v / pic.c - vmin) / span));
    } else {
      r = g = b = clamp01(pic.data[i]) * 255;
    }
    img.data[4 * i] = r;
    img.data[4 * i + 1] = g;
    img.data[4 * i + 2] = b;
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

/** A new pixelated <canvas> showing the Picture, with an accessible label. */
export function pictureCanvas(pic, label, options = {}) {
  const canvas = document.createElement("canvas");
  canvas.className = "pixelated";
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", label);
  return paint(canvas, pic, options);
}

export function clamp01(v) {
  return v < 0 ? 0 : v > 1 ? 1 : v;
}

/** Smallest and largest value of a Picture (averaged over channels), for heatmap scaling. */
export function range(pic) {
  const n = pic.w * pic.h;
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < n; i++) {
    let v = 0;
    for (let k = 0; k < pic.c; k++) v += pic.data[k * n + i];
    v /= pic.c;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

// Inferno (matplotlib), sampled at nine points and interpolated: perceptually uniform and readable in
// greyscale, so the heatmap does not rely on hue alone.
const INFERNO = [
  [0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
  [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164],
];

export function inferno(t) {
  const x = clamp01(t) * (INFERNO.length - 1);
  const i = Math.min(Math.floor(x), INFERNO.length - 2);
  const f = x - i;
  const a = INFERNO[i];
  const b = INFERNO[i + 1];
  return [a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]), a[2] + f * (b[2] - a[2])];
}

/** A horizontal colour bar for the legend of a heatmap. */
export function colorbar(canvas, colormap = inferno) {
  const w = 128;
  canvas.width = w;
  canvas.height = 1;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, 1);
  for (let x = 0; x < w; x++) {
    const [r, g, b] = colormap(x / (w - 1));
    img.data.set([r, g, b, 255], 4 * x);
  }
  ctx.putImageData(img, 0, 0);
}
