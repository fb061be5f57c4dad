// Rendering of the API's answers: top-5, latency, dimension table, layer-by-layer channel grids.

import { decodeFloat16, drawChannel, drawColorbar, formatValue, scaleFor } from "./maps.js";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

export const shapeText = (shape) => shape.join(" × ");

/** What a layer does, guessed from its module name (the API gives names and shapes). */
export function layerKind(layer) {
  const last = layer.split(".").pop().toLowerCase();
  if (last.includes("conv")) return "convolution";
  if (last.includes("relu")) return "ReLU";
  if (last.includes("maxpool") || last.includes("pool")) return "pooling";
  if (last.includes("bn") || last.includes("norm")) return "batch norm";
  if (last.includes("fc") || last.includes("linear")) return "linear";
  if (last.includes("layer") || last.includes("block")) return "block";
  return "layer";
}

// ---- top-5 ---------------------------------------------------------------------------------

export function renderPredictions(list, predictions) {
  list.replaceChildren(
    ...predictions.map((p, i) => {
      const fill = el("span", { class: "fill" });
      fill.style.width = `${(p.probability * 100).toFixed(2)}%`;
      return el(
        "li",
        { class: i === 0 ? "top1" : "", "data-label": p.label },
        el("span", { class: "bar-label", text: p.label }),
        el("span", { class: "bar", "aria-hidden": "true" }, fill),
        el("span", { class: "bar-value", text: `${(p.probability * 100).toFixed(1)}%` }),
      );
    }),
  );
}

// ---- latency -------------------------------------------------------------------------------

const TIMING_PARTS = [
  ["decode", "Decode + preprocess"],
  ["queue", "Queue (batching)"],
  ["compute", "Compute (ONNX Runtime)"],
];

export function renderTiming(bar, list, timing, roundTripMs) {
  const total = TIMING_PARTS.reduce((sum, [key]) => sum + timing[key], 0);
  bar.replaceChildren(
    ...TIMING_PARTS.map(([key]) => {
      const part = el("span", { class: `seg seg-${key}` });
      part.style.flexGrow = String(Math.max(timing[key], total / 200));
      return part;
    }),
  );
  const rows = TIMING_PARTS.map(([key, label]) => [label, timing[key], `dot seg-${key}`]);
  rows.push(["Service total", total, ""]);
  rows.push(["Round trip in this browser", roundTripMs, ""]);
  list.replaceChildren(
    ...rows.flatMap(([label, ms, dot]) => [
      el("dt", {}, dot ? el("span", { class: dot, "aria-hidden": "true" }) : null, label),
      el("dd", { text: `${ms.toFixed(2)} ms` }),
    ]),
  );
}

// ---- dimension table -----------------------------------------------------------------------

export function renderDims(tbody, detail) {
  const rows = [["input", `input (${detail.input.color_mode})`, detail.input.shape]];
  for (const fm of detail.feature_maps) rows.push([fm.layer, layerKind(fm.layer), fm.shape]);
  rows.push(["classifier", "flatten → linear → softmax", [detail.labels.length]]);
  tbody.replaceChildren(
    ...rows.map(([stage, kind, shape], i) =>
      el(
        "tr",
        {},
        el("td", { text: String(i) }),
        el("th", { scope: "row" }, el("code", { text: stage })),
        el("td", { text: kind }),
        el("td", { class: "num", text: i === rows.length - 1 ? `${shape[0]} classes` : shapeText(shape) }),
        el("td", { class: "num", text: shape.reduce((a, b) => a * b, 1).toLocaleString("en") }),
      ),
    ),
  );
}

// ---- filters of the first layer ------------------------------------------------------------

/** Per-filter canvases cropped from the exporter's grid PNG, or null if its layout is unknown.

The grid (training/artifacts.py): ceil(sqrt(n)) columns, square cells, 2 px gaps and border. */
export async function loadFilterTiles(url, count) {
  const image = new Image();
  image.src = url;
  try {
    await image.decode();
  } catch {
    return null;
  }
  const gap = 2;
  const cols = Math.ceil(Math.sqrt(count));
  const rows = Math.ceil(count / cols);
  const cellW = (image.naturalWidth - gap) / cols;
  const cellH = (image.naturalHeight - gap) / rows;
  if (!Number.isInteger(cellW) || !Number.isInteger(cellH) || cellW <= gap || cellH <= gap) {
    return { whole: image };
  }
  const tiles = [];
  for (let i = 0; i < count; i++) {
    const r = Math.floor(i / cols);
    const c = i % cols;
    const canvas = el("canvas", { class: "pixelated filter", "aria-hidden": "true" });
    canvas.width = cellW - gap;
    canvas.height = cellH - gap;
    canvas
      .getContext("2d")
      .drawImage(image, c * cellW + gap, r * cellH + gap, cellW - gap, cellH - gap, 0, 0, cellW - gap, cellH - gap);
    tiles.push(canvas);
  }
  return { tiles, whole: image };
}

// ---- layer by layer ------------------------------------------------------------------------

/** One decoded layer: values (len(channels)·H·W floats), its scale and metadata. */
export function decodeLayer(fm) {
  const values = decodeFloat16(fm.data);
  const [, height, width] = fm.data_shape || [fm.channels.length, fm.shape[1], fm.shape[2]];
  return { ...fm, values, height, width, scale: scaleFor(fm.min, fm.max) };
}

function scaleLegend(layer) {
  const bar = el("canvas", { class: "colorbar", width: "256", height: "12", "aria-hidden": "true" });
  drawColorbar(bar, layer.scale);
  return el(
    "div",
    { class: "scale-legend" },
    el("span", { class: "num", text: formatValue(layer.scale.low) }),
    bar,
    el("span", { class: "num", text: formatValue(layer.scale.high) }),
  );
}

export function renderLayers(container, layers, { filters, filterNote, onOpen }) {
  container.replaceChildren(
    ...layers.map((layer, index) => {
      const titleId = `layer-${index}-title`;
      const size = layer.height * layer.width;
      const tiles = layer.channels.map((channel, k) => {
        const canvas = el("canvas", { class: "pixelated response", "aria-hidden": "true" });
        drawChannel(canvas, layer.values, k * size, layer.height, layer.width, layer.scale);
        const filter = index === 0 && filters?.tiles ? filters.tiles[channel] : null;
        const button = el(
          "button",
          {
            type: "button",
            class: filter ? "tile pair" : "tile",
            "aria-label": `Enlarge ${layer.layer} channel ${channel}`,
            "data-channel": String(channel),
          },
          filter ? filter.cloneNode(false) : null,
          canvas,
          el("span", { class: "tile-caption", text: `#${channel}` }),
        );
        if (filter) button.querySelector("canvas.filter").getContext("2d").drawImage(filter, 0, 0);
        button.addEventListener("click", () => onOpen(layer, k, button));
        return el("li", {}, button);
      });
      const note = `${layer.channels.length} of ${layer.shape[0]} channels, most active first`;
      const filterAside =
        index === 0 && filters && !filters.tiles && filters.whole
          ? el(
              "figure",
              { class: "filters-whole" },
              filters.whole,
              el("figcaption", { text: "First-layer filters (weights)" }),
            )
          : null;
      return el(
        "article",
        { class: "layer", "aria-labelledby": titleId, "data-layer": layer.layer },
        el(
          "header",
          { class: "layer-head" },
          el("h3", { id: titleId }, el("code", { text: layer.layer })),
          el("span", { class: "badge", text: layerKind(layer.layer) }),
          el("span", { class: "badge shape", text: shapeText(layer.shape) }),
          el("span", { class: "layer-note", text: note }),
        ),
        scaleLegend(layer),
        index === 0 && filters?.tiles
          ? el("p", { class: "hint", text: `Each tile: the filter's weights (left, grey, scaled on its own) next to its response.${filterNote}` })
          : null,
        el("div", { class: "layer-body" }, filterAside, el("ul", { class: "tiles", role: "list" }, ...tiles)),
      );
    }),
  );
}
