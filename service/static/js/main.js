// The explorer page: wiring of model choice, image input, classify calls and the views.

import { ACCEPTED_TYPES, ApiError, api, describeError, getApiKey, setApiKey } from "./api.js";
import { drawChannel, drawColorbar, formatValue, stats } from "./maps.js";
import { decodeImage, drawModelInput } from "./preprocess.js";
import {
  decodeLayer,
  loadFilterTiles,
  renderDims,
  renderLayers,
  renderPredictions,
  renderTiming,
  shapeText,
} from "./views.js";

const $ = (id) => document.getElementById(id);
const HEALTH_POLL_MS = 2000;
const ENLARGED_MAX_PX = 448;

const state = {
  models: [], // [{name, versions, default_version}]
  detail: null, // GET /v1/models/{m}/versions/{v}
  blob: null, // the current image
  bitmap: null,
  sequence: 0, // newest classify call; older answers are dropped
  filters: null,
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
  state.models = models;
  if (models.length === 0) throw new ApiError(503, "not_ready", "the service has no model loaded");
  const params = new URLSearchParams(location.search);
  const wanted = models.find((m) => m.name === params.get("model")) || models[0];
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
  const original = $("original-image");
  if (original.src.startsWith("blob:")) URL.revokeObjectURL(original.src);
  original.src = URL.createObjectURL(blob);
  original.alt = `The uploaded image ${name}`;
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
  const list = $("samples");
  let manifest;
  try {
    const response = await fetch("/static/samples/samples.json");
    manifest = await response.json();
  } catch {
    return; // samples are a convenience; the page works without them
  }
  list.replaceChildren(
    ...manifest.samples.map((sample) => {
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
    }),
  );
}

// ---- classify and render -------------------------------------------------------------------

async function classify() {
  if (!state.detail || !state.blob) return;
  const sequence = ++state.sequence;
  const detail = state.detail;
  clearError();
  setPageState("busy");
  $("busy").textContent = "Classifying…";
  try {
    const { body, roundTripMs } = await api.classify(detail.name, detail.version, state.blob, {
      channels: Number($("channels-select").value),
      cam: detail.cam,
    });
    if (sequence !== state.sequence) return;
    if (state.filters === null && detail.filters.length > 0 && detail.feature_maps.length > 0) {
      const count = detail.feature_maps[0].shape[0];
      state.filters = await loadFilterTiles(api.filterUrl(detail.name, detail.filters[0]), count);
    }
    render(body, roundTripMs);
    performance.clearMeasures("convserve:result");
    performance.measure("convserve:result", "convserve:image");
    $("busy").textContent = `Result: ${body.results[0].predictions[0].label}`;
    setPageState("done");
  } catch (err) {
    if (sequence !== state.sequence) return;
    $("busy").textContent = "";
    showError(err, () => classify());
  }
}

function render(body, roundTripMs) {
  const detail = state.detail;
  const result = body.results[0];
  $("result-section").hidden = false;
  renderPredictions($("predictions"), result.predictions);
  renderTiming($("timing-bar"), $("timing"), body.timing_ms, roundTripMs);

  const caption = `As the model sees it: ${shapeText(detail.input.shape)} ${detail.input.color_mode}, `;
  if (state.bitmap) {
    drawModelInput($("model-input"), state.bitmap, detail);
    drawModelInput($("cam-base"), state.bitmap, detail);
    const p = detail.preprocessing;
    $("model-input-caption").textContent =
      caption + `resize ${p.resize} → crop ${p.center_crop} (drawn by this browser, approximate)`;
  } else {
    $("model-input-caption").textContent = caption + "this browser cannot draw this file";
  }

  const camFigure = $("cam-figure");
  if (result.cam) {
    $("cam-image").src = `data:image/png;base64,${result.cam.data}`;
    $("cam-image").alt = `Class activation map for ${result.cam.label}`;
    $("cam-caption").textContent = `Class activation map: where the model saw “${result.cam.label}”`;
    camFigure.classList.remove("unavailable");
    $("cam-opacity-label").hidden = false;
  } else {
    $("cam-image").removeAttribute("src");
    $("cam-caption").textContent = "No CAM: this model has no global-average-pooling + linear head.";
    camFigure.classList.add("unavailable");
    $("cam-opacity-label").hidden = true;
  }

  const layers = (result.feature_maps || []).map(decodeLayer);
  const newest = Math.max(...detail.versions);
  const filterNote = detail.version === newest ? "" : ` (filters of version ${newest}, the newest)`;
  $("layers-section").hidden = layers.length === 0;
  renderLayers($("layers"), layers, { filters: state.filters, filterNote, onOpen: openChannel });
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
    ["Colour scale", `${layer.scale.kind}, ${formatValue(layer.scale.low)} … ${formatValue(layer.scale.high)} (whole layer)`],
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
