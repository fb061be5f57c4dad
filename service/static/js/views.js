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

export const SHOWN_PREDICTIONS = 5;

export function renderPredictions(list, predictions) {
  list.replaceChildren(
    ...predictions.slice(0, SHOWN_PREDICTIONS).map((p, i) => {
      const fill = el("span", { class: "fill" });
      fill.style.width = `${(p.probability * 100).toFixed(2)}%`;
      return el(
        "li",
        { class: i === 0 ? "top1" : "", "data-label": p.label },
        el("span", { class: "bar-label", text: p.label, title: p.label }),
        el("span", { class: "bar", "aria-hidden": "true" }, fill),
        el("span", { class: "bar-value", text: `${(p.probability * 100).toFixed(1)}%` }),
      );
    }),
  );
}

/** The notice beside the top-5: why this answer deserves doubt (fit.js's `doubts`), or nothing. */
export function renderDoubts(box, found) {
  box.hidden = found.length === 0;
  box.dataset.codes = found.map((d) => d.code).join(" ");
  const aboutInput = found.some((d) => d.code !== "unsure");
  box.replaceChildren(
    el("p", {
      class: "notice-title",
      text: aboutInput ? "Unlike the images this model was trained on" : "The model is unsure",
    }),
    el("ul", {}, ...found.map((d) => el("li", { "data-code": d.code, text: d.text }))),
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

const FILTER_GRID_MAX = 256; // the exporter draws at most this many filters (training/artifacts.py)
const ELEMENTWISE = /(relu|act|bn|norm)(_?\d+)?$/i;

/** Whether channel k of the feature map `mapLayer` is the response of filter k of `filterLayer`:
the same module, one inside the other (`features.0` holds `features.0.0`), or an activation or
norm beside the conv (`relu` after `conv1` in a ResNet stem). Otherwise (VGG's `features.3`
after two convs) the filters are shown on their own. */
export function filtersPairWith(filterLayer, mapLayer) {
  if (filterLayer === mapLayer) return true;
  if (filterLayer.startsWith(`${mapLayer}.`) || mapLayer.startsWith(`${filterLayer}.`)) return true;
  const parent = (name) => name.split(".").slice(0, -1).join(".");
  const last = mapLayer.split(".").pop();
  return parent(filterLayer) === parent(mapLayer) && ELEMENTWISE.test(last);
}

/** Per-filter canvases cropped from the exporter's grid PNG, or only the whole image when its
layout is not the one expected for `count` filters.

The grid (training/artifacts.py): ceil(sqrt(n)) columns, square cells, 2 px gaps and border,
RGB for 3-channel inputs. */
export async function loadFilterTiles(url, count) {
  const image = new Image();
  image.src = url;
  try {
    await image.decode();
  } catch {
    return null;
  }
  image.className = "pixelated";
  image.alt = "";
  if (count === null) return { whole: image };
  const gap = 2;
  const n = Math.min(count, FILTER_GRID_MAX);
  const cols = Math.ceil(Math.sqrt(n));
  const rows = Math.ceil(n / cols);
  const cellW = (image.naturalWidth - gap) / cols;
  const cellH = (image.naturalHeight - gap) / rows;
  if (!Number.isInteger(cellW) || !Number.isInteger(cellH) || cellW <= gap || cellH <= gap) {
    return { whole: image };
  }
  const tiles = [];
  for (let i = 0; i < n; i++) {
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

/** The first conv's filters as one image, for when they do not pair with the first layer. */
export function renderFilterFigure(filters, { layer, colour, note }) {
  const kind = colour ? "in colour (the weights on R, G and B)" : "in grey";
  return el(
    "article",
    { class: "layer filters-whole", "data-filters": layer },
    el(
      "header",
      { class: "layer-head" },
      el("h3", {}, el("code", { text: layer })),
      el("span", { class: "badge", text: "filters (weights)" }),
    ),
    el("p", {
      class: "hint",
      text: `The first convolution's filters, each scaled on its own, ${kind}.${note}`,
    }),
    el("figure", {}, filters.whole),
  );
}

// ---- layer by layer ------------------------------------------------------------------------

/** One decoded layer: values (len(channels)·H·W floats), its colour scale and metadata. The
scale is `scale` when given (more channels of a layer keep the colours of the first ones). */
export function decodeLayer(fm, scale = null) {
  const values = decodeFloat16(fm.data);
  const [, height, width] = fm.data_shape || [fm.channels.length, fm.shape[1], fm.shape[2]];
  return { ...fm, values, height, width, scale: scale || scaleFor(values) };
}

function scaleLegend(layer) {
  const { scale } = layer;
  const bar = el("canvas", { class: "colorbar", width: "256", height: "12", "aria-hidden": "true" });
  drawColorbar(bar, scale);
  const note = scale.clipped
    ? `values beyond saturate; the shown channels span ${formatValue(scale.min)} … ${formatValue(scale.max)}`
    : "";
  return el(
    "div",
    { class: "scale-legend" },
    el("span", { class: "num", text: formatValue(scale.low) }),
    bar,
    el("span", { class: "num", text: formatValue(scale.high) }),
    note ? el("span", { class: "scale-note", text: note }) : null,
  );
}

/** The article of layer `index`: header, colour scale, tiles, and a "more channels" button while
the layer has channels not shown. `pairs`: each tile shows its filter (the first layer only). */
export function renderLayer(layer, index, options) {
  const { filters, pairs, filterNote, colourFilters, pageSize, onOpen, onMore } = options;
  const titleId = `layer-${index}-title`;
  const size = layer.height * layer.width;
  const tiles = layer.channels.map((channel, k) => {
    const canvas = el("canvas", { class: "pixelated response", "aria-hidden": "true" });
    drawChannel(canvas, layer.values, k * size, layer.height, layer.width, layer.scale);
    const filter = pairs && filters?.tiles ? filters.tiles[channel] : null;
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
  const total = layer.shape[0];
  const shown = layer.channels.length;
  const note = `${shown} of ${total} channels, most active first`;
  const more = Math.min(pageSize, total - shown);
  const moreButton =
    more > 0
      ? el("button", {
          type: "button",
          class: "button more",
          "data-more": layer.layer,
          text: `Show ${more} more (${shown + more} of ${total})`,
        })
      : null;
  moreButton?.addEventListener("click", () => onMore(index, moreButton));
  const kind = colourFilters ? "colour" : "grey";
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
    pairs && filters?.tiles
      ? el("p", {
          class: "hint",
          text: `Each tile: the filter's weights (left, ${kind}, scaled on its own) next to its response.${filterNote}`,
        })
      : null,
    el("ul", { class: "tiles", role: "list" }, ...tiles),
    moreButton ? el("p", { class: "more-row" }, moreButton) : null,
  );
}
