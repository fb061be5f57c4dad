// The public native API, and what its errors mean to a person.

const API_KEY_STORAGE = "convserve.apiKey";

export class ApiError extends Error {
  constructor(status, code, message, retryAfterS = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterS = retryAfterS;
  }
}

export function getApiKey() {
  return sessionStorage.getItem(API_KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(API_KEY_STORAGE, key);
  else sessionStorage.removeItem(API_KEY_STORAGE);
}

async function request(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = getApiKey();
  if (key) headers.set("X-API-Key", key);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new ApiError(0, "network", err.message);
  }
  if (response.ok) return response;
  let code = "http_" + response.status;
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error) ({ code, message } = body.error);
  } catch {
    // not the JSON error body (e.g. a proxy's page): keep the status text
  }
  const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  throw new ApiError(response.status, code, message, Number.isFinite(retry) ? retry : null);
}

async function getJson(path) {
  return (await request(path, { headers: { Accept: "application/json" } })).json();
}

const enc = encodeURIComponent;

export const api = {
  /** 200 body or the 503 body of /health/ready (both have status, missing, errors). */
  async health() {
    try {
      const response = await fetch("/health/ready");
      return await response.json();
    } catch (err) {
      return { status: "unreachable", missing: [], errors: [err.message] };
    }
  },
  listModels: () => getJson("/v1/models"),
  describe: (model, version) => getJson(`/v1/models/${enc(model)}/versions/${enc(version)}`),
  /** The filter grid PNG as an object URL: fetched with the API key, which an <img> cannot send;
  null when it cannot be had (the figure is then left out). */
  async filterImageUrl(model, layer) {
    try {
      const response = await request(`/v1/models/${enc(model)}/filters/${enc(layer)}`);
      return URL.createObjectURL(await response.blob());
    } catch {
      return null;
    }
  },

  /** Classify one image (a Blob/File) as the raw body; returns {body, roundTripMs}. */
  async classify(
    model,
    version,
    blob,
    { topK = 5, featureMaps = "all", channels = 16, cam = false } = {},
  ) {
    const params = new URLSearchParams({
      top_k: String(topK),
      feature_maps: featureMaps,
      channels: String(channels),
      map_format: "float16",
      cam: cam ? "true" : "false",
    });
    const started = performance.now();
    const response = await request(
      `/v1/models/${enc(model)}/versions/${enc(version)}/classify?${params}`,
      {
        method: "POST",
        headers: { "Content-Type": blob.type || "application/octet-stream" },
        body: blob,
      },
    );
    const body = await response.json();
    return { body, roundTripMs: performance.now() - started };
  },
};

export const ACCEPTED_TYPES = ["image/png", "image/jpeg", "image/webp"];

/** A sentence for a person, and whether retrying the same request may help. */
export function describeError(err) {
  if (!(err instanceof ApiError)) {
    return { text: `Something went wrong in the page: ${err.message}`, retry: false };
  }
  const wait = err.retryAfterS ? ` Retry in ${err.retryAfterS} s.` : "";
  switch (err.code) {
    case "unsupported_file":
    case "invalid_image":
    case "unsupported_image":
    case "unsupported_media_type":
      return { text: `Unsupported file: ${err.message}. Use a PNG, JPEG or WebP image.`, retry: false };
    case "image_too_large":
    case "payload_too_large":
      return { text: `Image too large: ${err.message}`, retry: false };
    case "image_too_small":
      return { text: `Image too small: ${err.message}`, retry: false };
    case "queue_full":
      return { text: `The service is overloaded (its queue is full).${wait}`, retry: true };
    case "not_ready":
      return { text: `The model is not ready yet: ${err.message}.${wait}`, retry: true };
    case "model_not_found":
    case "version_not_found":
      return { text: `Model not available: ${err.message}. Retry lists the models again.`, retry: true };
    case "unauthorized":
    case "forbidden":
      return { text: `The service needs an API key: ${err.message}. Enter it under “API key”.`, retry: true };
    case "deadline_exceeded":
      return { text: `The service took too long: ${err.message}`, retry: true };
    case "network":
      return { text: `Cannot reach the service (${err.message}).`, retry: true };
    default: {
      // Sending the same request again helps only when the service, not the request, failed.
      const transient = err.status >= 500 || err.status === 408 || err.status === 429;
      return { text: `The service answered ${err.status} ${err.code}: ${err.message}`, retry: transient };
    }
  }
}
