// The explorer page: wiring of model choice, image input, classify calls and the views.

import { ACCEPTED_TYPES, ApiError, api, describeError, getApiKey, setApiKey } from "./api.js";
import { SPREAD_TOP_K, describePicture, doubts, splitSamples } from "./fit.js";
import { drawChannel, drawColorbar, formatValue, stats } from "./maps.js";
import { decodeImage, drawModelInput } from "./preprocess.js";
import {
  decodeLayer,
  filtersPairWith,
  loadFilterTiles,
  renderDims,
  renderDoubts,
  renderFilterFigure,
  renderLayer,
  renderPredictions,
  renderTiming,
  shapeText,
} from "./views.js";

const $ = (id) => document.getElementById(id);
const HEALTH_POLL_MS = 2000;
const ENLARGED_MAX_PX = 448;
const PIXELATED_MAX_PX = 64;

const state = {
  models: [], // [{name, versions, default_version}]
  detail: null, // GET /v1/models/{m}/versions/{v}
  blob: null, // the current image
  bitmap: null,
  picture: null, // fit.js describePicture: size and colour share of the current image
  samples: [], // samples.json entries
  sequence: 0, // newest classify call; older answers (and their "more channels") are dropped
  filters: null, // {tiles?, whole} of the first conv, loaded once per model version
  layers: [], // decoded feature maps of the current answer
  enlarged: null, // {layer, k, opener}
};

function setPageState(value) {
  document.body.dataset.state = value;
}

// ---- errors and status ---------------------------------------------------------------------

let retryAction = null;

function showError(err, retry = null) {
  const { text, retry: retryable } = describeError(err);
  $("error-message").textContent = text;
  $("error").dataset.code = err instanceof ApiError ? err.code : "page";
  retryAction = retryable ? retry : null;
  $("error-retry").hidden = !retryAction;
  $("error").hidden = false;
  if (err instanceof ApiError && (err.code === "unauthorized" || err.code === "forbidden")) {
    $("api-key-details").open = true;
  }
  if (err instanceof ApiError && err.code === "network") setStatus("Service unreachable", "warn");
  setPageState("error");
}

function clearError() {
  $("error").hidden = true;
  $("error-message").textContent = "";
  retryAction = null;
}

function setStatus(text, kind = "") {
  const status = $("service-status");
  status.textContent = text;
  status.dataset.kind = kind;
}

// ---- models --------------------------------------------------------------------------------

async function waitUntilReady() {
  for (;;) {
    const health = await api.health();
    if (health.status === "ok") {
      setStatus(`Service ready · ${health.provider || "provider unknown"}`, "ok");
      return;
    }
    const why = [...(health.missing || []).map((m) => `${m} missing`), ...(health.errors || [])];
    setStatus(`Model not ready (${health.status})${why.length ? ": " + why.join("; ") : ""}. Waiting…`, "warn");
    await new Promise((resolve) => setTimeout(resolve, HEALTH_POLL_MS));
  }
}

function fillSelect(select, values, selected) {
  select.replaceChildren(
    ...values.map((value) => {
      const option = document.createElement("option");
      option.value = String(value);
      option.textContent = String(value);
      option.selected = String(value) === String(selected);
      return option;
    }),
  );
  select.disabled = values.length === 0;
}

async function loadModels() {
  const { models } = await api.listModels();
  // The model chosen before when the list is loaded again (after a version went away), else
  // the one the address names.
  const chosen =
    state.models.length > 0 ? $("model-select").value : new URLSearchParams(location.search).get("model");
  state.models = models;
  if (models.length === 0) throw new ApiError(503, "not_ready", "the service has no model loaded");
  const wanted = models.find((m) => m.name === chosen) || models[0];
  fillSelect($("model-select"), models.map((m) => m.name), wanted.name);
  await selectModel(wanted.name);
}

async function selectModel(name) {
  const model = state.models.find((m) => m.name === name);
  fillSelect($("version-select"), [...model.versions].reverse(), model.default_version);
  await selectVersion();
}

async function selectVersion() {
  const model = $("model-select").value;
  const version = $("version-select").value;
  state.detail = await api.describe(model, version);
  state.filters = null;
  renderDims($("dims-table").querySelector("tbody"), state.detail);
  renderSamples();
  $("model-form").dataset.ready = "true";
  if (state.blob) await classify();
}

// ---- image input ---------------------------------------------------------------------------

async function useImage(blob, name) {
  performance.clearMarks("convserve:image");
  performance.mark("convserve:image");
  clearError();
  if (blob.type && !ACCEPTED_TYPES.includes(blob.type)) {
    showError(new ApiError(0, "unsupported_file", `${name} is ${blob.type}`));
    return;
  }
  state.blob = blob;
  state.bitmap = await decodeImage(blob);
  state.picture = describePicture(state.bitmap);
  const original = $("original-image");
  if (original.src.startsWith("blob:")) URL.revokeObjectURL(original.src);
  original.src = URL.createObjectURL(blob);
  original.alt = `The uploaded image ${name}`;
  // Thumbnail-sized images (Fashion-MNIST's 28 × 28) are enlarged: show their pixels, not a blur.
  const small = state.bitmap && Math.max(state.bitmap.width, state.bitmap.height) <= PIXELATED_MAX_PX;
  original.classList.toggle("pixelated", Boolean(small));
  $("original-caption").textContent = state.bitmap
    ? `Uploaded: ${name} (${state.bitmap.width} × ${state.bitmap.height})`
    : `Uploaded: ${name}`;
  await classify();
}

function firstImageFile(items) {
  for (const item of items) {
    const file = item instanceof File ? item : item.kind === "file" ? item.getAsFile() : null;
    if (file) return file;
  }
  return null;
}

function bindInputs() {
  $("file-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) useImage(file, file.name);
    event.target.value = ""; // choosing the same file again fires change again
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = firstImageFile(event.dataTransfer.files);
    if (file) useImage(file, file.name);
  });
  zone.addEventListener("keydown", (event) => {
    if (event.target === zone && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      $("file-input").click();
    }
  });
  document.addEventListener("paste", (event) => {
    const file = firstImageFile(event.clipboardData?.items || []);
    if (file) useImage(file, file.name || "pasted image");
  });
}

async function loadSamples() {
  try {
    const response = await fetch("/static/samples/samples.json");
    state.samples = (await response.json()).samples;
  } catch {
    return; // samples are a convenience; the page works without them
  }
  renderSamples();
}

function sampleButton(sample) {
  const img = document.createElement("img");
  img.src = `/static/samples/${sample.file}`;
  img.alt = "";
  img.className = sample.file.endsWith(".png") ? "pixelated" : "";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "sample";
  button.dataset.file = sample.file;
  button.title = sample.source;
  button.setAttribute("aria-label", `Sample: ${sample.title} (${sample.source})`);
  const caption = document.createElement("span");
  caption.textContent = sample.title;
  button.append(img, caption);
  button.addEventListener("click", async () => {
    const blob = await (await fetch(img.src)).blob();
    useImage(blob, sample.file);
  });
  const item = document.createElement("li");
  item.append(button);
  return item;
}

/** The samples that suit the selected model first; the others folded away below them. */
function renderSamples() {
  if (!state.detail || state.samples.length === 0) return;
  const { suited, others } = splitSamples(state.samples, state.detail);
  const { color_mode: mode, shape } = state.detail.input;
  const kind = mode === "L" ? "greyscale" : "colour";
  $("samples-note").textContent = suited.length
    ? `${kind} pictures, for this ${kind} ${shape[1]} × ${shape[2]} model`
    : `none is ${kind} like this model's input`;
  $("samples").replaceChildren(...suited.map(sampleButton));
  $("samples-other").replaceChildren(...others.map(sampleButton));
  $("samples-other-count").textContent = String(others.length);
  $("samples-other-details").hidden = others.length === 0;
}

// ---- classify and render -------------------------------------------------------------------

async function classify() {
  if (!state.detail || !state.blob) return;
  const sequence = ++state.sequence;
  const detail = state.detail;
  clearError();
  setPageState("busy");
  setBusy("Classifying…");
  try {
    const { body, roundTripMs } = await api.classify(detail.name, detail.version, state.blob, {
      // every class up to SPREAD_TOP_K, to measure how spread the answer is (fit.js)
      topK: Math.min(detail.labels.length, SPREAD_TOP_K),
      // a model without feature maps refuses feature_maps=all (400): ask for none
      featureMaps: detail.feature_maps.length > 0 ? "all" : "",
      channels: channelsPerPage(),
      cam: detail.cam,
    });
    if (sequence !== state.sequence) return;
    if (state.filters === null && detail.filters.length > 0 && detail.feature_maps.length > 0) {
      const pairs = filtersPairWith(detail.filters[0], detail.feature_maps[0].layer);
      const count = pairs ? detail.feature_maps[0].shape[0] : null;
      const url = await api.filterImageUrl(detail.name, detail.filters[0]);
      state.filters = url === null ? null : await loadFilterTiles(url, count);
    }
    render(body, roundTripMs);
    performance.clearMeasures("convserve:result");
    performance.measure("convserve:result", "convserve:image");
    setBusy("");
    setPageState("done");
  } catch (err) {
    if (sequence !== state.sequence) return;
    setBusy("");
    $("result-section").hidden = true; // what it shows is another image's or model's answer
    // A model or version gone (a reload removed it), or the service unreachable: Retry lists
    // the models again (and classifies the image with what is there); otherwise it resends.
    const relist = ["model_not_found", "version_not_found", "network"].includes(err.code);
    showError(err, relist ? () => start() : () => classify());
  }
}

function setBusy(text) {
  $("busy").textContent = text;
  $("busy").hidden = !text;
}

function channelsPerPage() {
  return Number($("channels-select").value);
}

function render(body, roundTripMs) {
  const detail = state.detail;
  const result = body.results[0];
  $("result-section").hidden = false;
  renderPredictions($("predictions"), result.predictions);
  renderDoubts($("doubts"), doubts(state.picture, detail, result.predictions));
  renderTiming($("timing-bar"), $("timing"), body.timing_ms, roundTripMs);

  const { shape, color_mode: mode } = detail.input;
  const caption = `As the model sees it: ${shapeText(shape)} ${mode}, `;
  if (state.bitmap) {
    drawModelInput($("model-input"), state.bitmap, detail);
    drawModelInput($("cam-base"), state.bitmap, detail);
    const p = detail.preprocessing;
    $("model-input-caption").textContent =
      caption + `resize ${p.resize} → crop ${p.center_crop}, de-normalised (approximate)`;
  } else {
    $("model-input-caption").textContent = caption + "this browser cannot draw this file";
  }

  // A model without a GAP + linear head has no CAM: say so instead of an empty heatmap slot.
  $("cam-figure").hidden = !result.cam;
  $("cam-none").hidden = Boolean(result.cam);
  if (result.cam) {
    $("cam-image").src = `data:image/png;base64,${result.cam.data}`;
    $("cam-image").alt = `Class activation map for ${result.cam.label}`;
    $("cam-caption").textContent = `Class activation map: where the model saw “${result.cam.label}”`;
  } else {
    $("cam-image").removeAttribute("src");
  }

  state.layers = (result.feature_maps || []).map((fm) => decodeLayer(fm));
  $("layers-section").hidden = state.layers.length === 0;
  const articles = state.layers.map((layer, index) => renderLayer(layer, index, layerOptions(index)));
  const figure = filterFigure();
  $("layers").replaceChildren(...(figure ? [figure] : []), ...articles);
}

function filterNote() {
  const detail = state.detail;
  const newest = Math.max(...detail.versions);
  return detail.version === newest ? "" : ` (filters of version ${newest}, the newest)`;
}

function layerOptions(index) {
  const detail = state.detail;
  const first = index === 0 && detail.filters.length > 0;
  return {
    filters: state.filters,
    pairs: first && filtersPairWith(detail.filters[0], state.layers[0].layer),
    filterNote: filterNote(),
    colourFilters: detail.input.color_mode === "RGB",
    pageSize: channelsPerPage(),
    onOpen: openChannel,
    onMore: showMoreChannels,
  };
}

/** The first conv's filters on their own, when they do not pair with the first layer's tiles. */
function filterFigure() {
  const detail = state.detail;
  const filters = state.filters;
  if (!filters?.whole || detail.filters.length === 0 || state.layers.length === 0) return null;
  if (filters.tiles && filtersPairWith(detail.filters[0], state.layers[0].layer)) return null;
  return renderFilterFigure(filters, {
    layer: detail.filters[0],
    colour: detail.input.color_mode === "RGB",
    note: filterNote(),
  });
}

/** Ask the service for the next page of a layer's channels (the same image, that layer only). */
async function showMoreChannels(index, button) {
  const sequence = state.sequence;
  const detail = state.detail;
  const layer = state.layers[index];
  const wanted = Math.min(layer.shape[0], layer.channels.length + channelsPerPage());
  button.disabled = true;
  clearError();
  setBusy(`Loading ${wanted} channels of ${layer.layer}…`);
  try {
    const { body } = await api.classify(detail.name, detail.version, state.blob, {
      topK: 1,
      featureMaps: layer.layer,
      channels: wanted,
    });
    if (sequence !== state.sequence) return;
    const shown = layer.channels.length;
    const fm = body.results[0].feature_maps.find((f) => f.layer === layer.layer);
    state.layers[index] = decodeLayer(fm, layer.scale); // keep the colours of the first page
    const article = renderLayer(state.layers[index], index, layerOptions(index));
    $("layers").querySelector(`article[data-layer="${CSS.escape(layer.layer)}"]`).replaceWith(article);
    article.querySelectorAll("button.tile")[shown]?.focus();
    setBusy("");
    setPageState("done");
  } catch (err) {
    if (sequence !== state.sequence) return;
    button.disabled = false;
    setBusy("");
    showError(err, () => showMoreChannels(index, button));
  }
}

// ---- enlarged channel ----------------------------------------------------------------------

function openChannel(layer, k, opener) {
  state.enlarged = { layer, k, opener };
  const size = layer.height * layer.width;
  const channel = layer.channels[k];
  const canvas = $("channel-large");
  drawChannel(canvas, layer.values, k * size, layer.height, layer.width, layer.scale);
  const zoom = Math.max(1, Math.floor(ENLARGED_MAX_PX / Math.max(layer.height, layer.width)));
  canvas.style.width = `${layer.width * zoom}px`;
  canvas.style.aspectRatio = `${layer.width} / ${layer.height}`;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${layer.layer} channel ${channel}, ${layer.height} × ${layer.width}`);
  $("channel-dialog-title").textContent = `${layer.layer} · channel ${channel}`;
  drawColorbar($("channel-colorbar"), layer.scale);
  $("channel-scale-min").textContent = formatValue(layer.scale.low);
  $("channel-scale-max").textContent = formatValue(layer.scale.high);
  const s = stats(layer.values, k * size, size);
  const rows = [
    ["Size", `${layer.height} × ${layer.width}`],
    ["Channel min", formatValue(s.min)],
    ["Channel max", formatValue(s.max)],
    ["Channel mean", formatValue(s.mean)],
    ["Colour scale", `${layer.scale.kind}, ${formatValue(layer.scale.low)} … ${formatValue(layer.scale.high)} (the layer's, to its 99th percentile)`],
  ];
  $("channel-stats").replaceChildren(
    ...rows.flatMap(([term, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      return [dt, dd];
    }),
  );
  $("channel-readout").textContent = "Point at a pixel to read its value.";
  const dialog = $("channel-dialog");
  if (!dialog.open) dialog.showModal();
}

function bindDialog() {
  const dialog = $("channel-dialog");
  $("channel-dialog-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close(); // a click on the backdrop
  });
  dialog.addEventListener("close", () => state.enlarged?.opener?.focus());
  dialog.addEventListener("keydown", (event) => {
    if (!state.enlarged || (event.key !== "ArrowRight" && event.key !== "ArrowLeft")) return;
    const { layer, k, opener } = state.enlarged;
    const next = (k + (event.key === "ArrowRight" ? 1 : -1) + layer.channels.length) % layer.channels.length;
    const tiles = opener.closest("ul").querySelectorAll("button.tile");
    openChannel(layer, next, tiles[next] || opener);
    event.preventDefault();
  });
  const canvas = $("channel-large");
  canvas.addEventListener("pointermove", (event) => {
    if (!state.enlarged) return;
    const { layer, k } = state.enlarged;
    const rect = canvas.getBoundingClientRect();
    const x = Math.min(layer.width - 1, Math.floor(((event.clientX - rect.left) / rect.width) * layer.width));
    const y = Math.min(layer.height - 1, Math.floor(((event.clientY - rect.top) / rect.height) * layer.height));
    const value = layer.values[k * layer.height * layer.width + y * layer.width + x];
    $("channel-readout").textContent = `(${x}, ${y}) = ${formatValue(value)}`;
  });
}

// ---- start ---------------------------------------------------------------------------------

function bindControls() {
  $("model-select").addEventListener("change", (e) => selectModel(e.target.value).catch(onLoadError));
  $("version-select").addEventListener("change", () => selectVersion().catch(onLoadError));
  $("channels-select").addEventListener("change", () => classify());
  $("cam-opacity").addEventListener("input", (e) => {
    $("cam-image").style.opacity = String(Number(e.target.value) / 100);
  });
  $("error-retry").addEventListener("click", () => retryAction && retryAction());
  const keyInput = $("api-key-input");
  keyInput.value = getApiKey();
  keyInput.addEventListener("change", () => {
    setApiKey(keyInput.value.trim());
    start();
  });
}

function onLoadError(err) {
  showError(err, () => start());
}

async function start() {
  clearError();
  try {
    await waitUntilReady();
    await loadModels();
  } catch (err) {
    onLoadError(err);
  }
}

bindInputs();
bindControls();
bindDialog();
loadSamples();
setPageState("idle");
start();
