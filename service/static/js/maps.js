// Feature-map values: float16 decoding, colour scales, drawing channels on canvases.

/** base64 of little-endian float16 values → Float32Array. */
export function decodeFloat16(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const halves = new DataView(bytes.buffer);
  const out = new Float32Array(bytes.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = halfToFloat(halves.getUint16(2 * i, true));
  return out;
}

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

// Sequential (viridis stops) for non-negative maps; diverging blue–white–red around 0 otherwise.
const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
];
// ColorBrewer RdBu without its two palest stops: white only at 0, so small values show colour.
const DIVERGING = [
  [5, 48, 97], [33, 102, 172], [67, 147, 195], [146, 197, 222], [247, 247, 247],
  [244, 165, 130], [214, 96, 77], [178, 24, 43], [103, 0, 31],
];

function lut(stops) {
  const table = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (stops.length - 1);
    const k = Math.min(Math.floor(t), stops.length - 2);
    const f = t - k;
    for (let c = 0; c < 3; c++) table[3 * i + c] = stops[k][c] + f * (stops[k + 1][c] - stops[k][c]);
  }
  return table;
}

const LUTS = { sequential: lut(VIRIDIS), diverging: lut(DIVERGING) };

// A few extreme values would squeeze every other one into the middle of the scale (near white on
// the diverging one): the scale ends at this quantile of the values, and the rest saturates.
export const SCALE_QUANTILE = 0.99;
const QUANTILE_SAMPLE = 65536; // values sorted to find the quantile (an even stride over all)

function quantile(values, q, transform) {
  const stride = Math.max(1, Math.floor(values.length / QUANTILE_SAMPLE));
  const sample = new Float32Array(Math.ceil(values.length / stride));
  for (let i = 0, j = 0; i < values.length; i += stride, j++) sample[j] = transform(values[i]);
  sample.sort();
  return sample[Math.min(sample.length - 1, Math.floor(q * sample.length))];
}

/** The colour scale of a layer's values: diverging and symmetric around 0 when they have both
signs, sequential otherwise; ending at the SCALE_QUANTILE of (|values|) rather than the extremes.
`clipped` says whether some values lie beyond the ends. */
export function scaleFor(values) {
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  if (!(min <= max)) return { kind: "sequential", low: 0, high: 1, min: 0, max: 0, clipped: false };
  if (min < 0 && max > 0) {
    const extreme = Math.max(-min, max);
    const m = quantile(values, SCALE_QUANTILE, Math.abs) || extreme;
    return { kind: "diverging", low: -m, high: m, min, max, clipped: m < extreme };
  }
  const q = quantile(values, SCALE_QUANTILE, (v) => v);
  const high = q > min ? q : max > min ? max : min + 1e-6;
  return { kind: "sequential", low: min, high, min, max, clipped: high < max };
}

function colorIndex(value, scale) {
  const t = (value - scale.low) / (scale.high - scale.low);
  return Math.max(0, Math.min(255, Math.round(t * 255)));
}

/** Draw one (H, W) channel, taken at `offset` in `values`, onto `canvas` at its native size. */
export function drawChannel(canvas, values, offset, height, width, scale) {
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  const table = LUTS[scale.kind];
  for (let i = 0; i < height * width; i++) {
    const k = 3 * colorIndex(values[offset + i], scale);
    image.data[4 * i] = table[k];
    image.data[4 * i + 1] = table[k + 1];
    image.data[4 * i + 2] = table[k + 2];
    image.data[4 * i + 3] = 255;
  }
  context.putImageData(image, 0, 0);
}

export function drawColorbar(canvas, scale) {
  const context = canvas.getContext("2d");
  const table = LUTS[scale.kind];
  for (let x = 0; x < canvas.width; x++) {
    const k = 3 * Math.round((x / (canvas.width - 1)) * 255);
    context.fillStyle = `rgb(${table[k]}, ${table[k + 1]}, ${table[k + 2]})`;
    context.fillRect(x, 0, 1, canvas.height);
  }
}

export function formatValue(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 100 || a < 0.01 ? v.toExponential(2) : v.toFixed(a >= 10 ? 1 : 3);
}

/** min, max, mean of values[offset, offset + n). */
export function stats(values, offset, n) {
  let min = Infinity;
  let max = -Infinity;
  let sum = 0;
  for (let i = offset; i < offset + n; i++) {
    const v = values[i];
    if (v < min) min = v;
    if (v > max) max = v;
    sum += v;
  }
  return { min, max, mean: sum / n };
}
