// The one way the page talks to the server: the public HTTP API, with the key from the header field.
// Every failure becomes an ApiError carrying the API's own `message` (or a plain description when the
// server could not be reached or did not answer with the API's error shape).

const KEY_STORAGE = "momo.apiKey";
// API paths are resolved against the page's parent folder (/ui/ -> /), so the playground keeps
// working behind a reverse proxy that serves the API under a prefix (/momo/ui/ -> /momo/v1/...).
const API_ROOT = new URL("../", document.baseURI);

// "unauthorized" (a 401 came back) and "authorized" (a call with the key went through) for the
// key field and the page notice; "models-changed" after an activation, for the sections that list
// models or heads.
export const events = new EventTarget();

class ApiError extends Error {
  constructor(status, message, { code = "error", type = "", param = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.type = type;
    this.param = param;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) ?? "";
}

export function setApiKey(value) {
  const key = value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

async function errorOf(response) {
  const text = await response.text();
  try {
    const error = JSON.parse(text).error;
    if (error && typeof error.message === "string") {
      return new ApiError(response.status, error.message, error);
    }
  } catch {
    // not the API's JSON error shape (e.g. a proxy's HTML page): described below
  }
  const body = text.trim().slice(0, 200) || "no body";
  return new ApiError(response.status, `HTTP ${response.status} ${response.statusText}: ${body}`);
}

/** Call the API: `body` is sent as JSON, or as multipart when it is a FormData. Returns the JSON. */
export async function request(method, path, body = undefined) {
  const headers = {};
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let payload;
  if (body instanceof FormData) {
    payload = body;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(new URL(path, API_ROOT), { method, headers, body: payload });
  } catch (failure) {
    throw new ApiError(0, `could not reach the server (${failure.message})`, { code: "network_error" });
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (error.status === 401) events.dispatchEvent(new CustomEvent("unauthorized", { detail: error }));
    throw error;
  }
  if (path.startsWith("v1/")) events.dispatchEvent(new Event("authorized"));
  try {
    return await response.json();
  } catch {
    throw new ApiError(
      response.status,
      `the server answered ${method} ${path} with something that is not JSON`,
    );
  }
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);
export const del = (path) => request("DELETE", path);
