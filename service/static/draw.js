// The drawing pad: a large canvas a person draws on (white ink on black, like the training digits),
// turned into a model-sized Picture by cropping to the ink, fitting it into the frame and averaging
// pixel blocks, the way MNIST-style datasets were made.

import { blank, clamp01 } from "./imaging.js";

const PAD = 224; // internal resolution; divisible by 8 and 28, the usual model sizes

export class DrawPad {
  /**
   * @param {HTMLCanvasElement} canvas the visible pad
   * @param {() => void} onStroke called after each finished stroke
   */
  constructor(canvas, onStroke) {
    this.canvas = canvas;
    this.canvas.width = PAD;
    this.canvas.height = PAD;
    this.ctx = canvas.getContext("2d", { willReadFrequently: true });
    this.brush = 20;
    this.onStroke = onStroke;
    this.drawing = false;
    this.last = null;
    this.dirty = false;
    this.clear();
    canvas.addEventListener("pointerdown", (e) => this.#down(e));
    canvas.addEventListener("pointermove", (e) => this.#move(e));
    canvas.addEventListener("pointerup", (e) => this.#up(e));
    canvas.addEventListener("pointercancel", (e) => this.#up(e));
    canvas.addEventListener("lostpointercapture", (e) => this.#up(e));
  }

  clear() {
    this.ctx.fillStyle = "#000";
    this.ctx.fillRect(0, 0, PAD, PAD);
    this.dirty = false;
  }

  /** True when something has been drawn (or loaded) since the last clear. */
  get hasInk() {
    return this.dirty;
  }

  #point(e) {
    const r = this.canvas.getBoundingClientRect();
    return [((e.clientX - r.left) / r.width) * PAD, ((e.clientY - r.top) / r.height) * PAD];
  }

  #dot([x, y]) {
    this.ctx.fillStyle = "#fff";
    this.ctx.beginPath();
    this.ctx.arc(x, y, this.brush / 2, 0, 2 * Math.PI);
    this.ctx.fill();
  }

  #down(e) {
    e.preventDefault();
    this.canvas.setPointerCapture?.(e.pointerId);
    this.drawing = true;
    this.last = this.#point(e);
    this.#dot(this.last);
    this.dirty = true;
  }

  #move(e) {
    if (!this.drawing) return;
    const p = this.#point(e);
    const ctx = this.ctx;
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = this.brush;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...this.last);
    ctx.lineTo(...p);
    ctx.stroke();
    this.last = p;
  }

  #up() {
    if (!this.drawing) return;
    this.drawing = false;
    this.last = null;
    this.onStroke();
  }

  /** Paint a Picture onto the pad (scaled up), so a sample can be edited by hand. */
  load(pic) {
    const small = document.createElement("canvas");
    small.width = pic.w;
    small.height = pic.h;
    const sctx = small.getContext("2d");
    const img = sctx.createImageData(pic.w, pic.h);
    for (let i = 0; i < pic.w * pic.h; i++) {
      const v = clamp01(pic.data[i]) * 255;
      img.data.set([v, v, v, 255], 4 * i);
    }
    sctx.putImageData(img, 0, 0);
    this.ctx.imageSmoothingEnabled = true;
    this.ctx.imageSmoothingQuality = "high";
    this.clear();
    this.ctx.drawImage(small, 0, 0, PAD, PAD);
    this.dirty = true;
  }

  /** The ink's bounding box [x0, y0, x1, y1] in pad pixels, or null when the pad is empty. */
  #inkBox(rgba) {
    let [x0, y0, x1, y1] = [PAD, PAD, -1, -1];
    for (let y = 0; y < PAD; y++) {
      for (let x = 0; x < PAD; x++) {
        if (rgba[4 * (y * PAD + x)] > 24) {
          if (x < x0) x0 = x;
          if (x > x1) x1 = x;
          if (y < y0) y0 = y;
          if (y > y1) y1 = y;
        }
      }
    }
    return x1 < 0 ? null : [x0, y0, x1 + 1, y1 + 1];
  }

  /**
   * The drawing as a model-sized Picture of shape [c, h, w].
   * With `fit`, the ink is cropped, scaled to fill the frame (keeping its aspect) and centred, and the
   * result is stretched so its brightest pixel is 1, as in the training data.
   */
  toPicture([c, h, w], { fit = true } = {}) {
    const k = Math.max(1, Math.ceil(PAD / Math.min(h, w))); // supersampling factor
    const big = document.createElement("canvas");
    big.width = w * k;
    big.height = h * k;
    const bctx = big.getContext("2d", { willReadFrequently: true });
    bctx.fillStyle = "#000";
    bctx.fillRect(0, 0, big.width, big.height);
    bctx.imageSmoothingEnabled = true;
    bctx.imageSmoothingQuality = "high";
    const box = fit ? this.#inkBox(this.ctx.getImageData(0, 0, PAD, PAD).data) : null;
    if (box) {
      const [x0, y0, x1, y1] = box;
      const margin = Math.min(h, w) >= 16 ? Math.round(Math.min(h, w) / 7) : 0; // MNIST: 20x20 box in 28x28
      const scale = Math.min((big.width - 2 * margin * k) / (x1 - x0), (big.height - 2 * margin * k) / (y1 - y0));
      const dw = (x1 - x0) * scale;
      const dh = (y1 - y0) * scale;
      bctx.drawImage(this.canvas, x0, y0, x1 - x0, y1 - y0, (big.width - dw) / 2, (big.height - dh) / 2, dw, dh);
    } else {
      bctx.drawImage(this.canvas, 0, 0, big.width, big.height);
    }
    const rgba = bctx.getImageData(0, 0, big.width, big.height).data;
    const pic = blank(c, h, w);
    let peak = 0;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        let sum = 0;
        for (let yy = 0; yy < k; yy++) {
          const row = (y * k + yy) * big.width;
          for (let xx = 0; xx < k; xx++) sum += rgba[4 * (row + x * k + xx)];
        }
        const v = sum / (k * k * 255);
        pic.data[y * w + x] = v;
        peak = Math.max(peak, v);
      }
    }
    if (fit && peak > 0) for (let i = 0; i < h * w; i++) pic.data[i] = Math.min(1, pic.data[i] / peak);
    for (let ch = 1; ch < c; ch++) pic.data.copyWithin(ch * h * w, 0, h * w); // grey into every channel
    return pic;
  }
}
