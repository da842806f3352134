// HTTP calls of the console: ingest on this page's own origin, the audit API on the origin
// /console/config.json names. Every call carries the token in the Authorization header, never
// in a URL; the token lives in sessionStorage (this tab only, gone when it closes).

const TOKEN_KEY = "dihya.console.token";

export function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function keepToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem("dihya.console.portal"); // a portal session ends with its token
}

/** An error answer of either API: its status, machine-readable code, message and fields. */
export class ApiError extends Error {
  constructor(status, code, message, fields = []) {
    super(message);
    this.status = status;
    this.code = code;
    this.fields = fields;
  }
}

/** The API could not be reached at all (network, CORS refusal, server down). */
export class Unreachable extends Error {
  constructor(base) {
    super(base || location.origin);
    this.code = "unreachable";
  }
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: keep the status
  }
  const e = body && typeof body === "object" ? body.error : null;
  if (e && typeof e.code === "string") {
    return new ApiError(response.status, e.code, String(e.message || ""), Array.isArray(e.fields) ? e.fields : []);
  }
  return new ApiError(response.status, `http_${response.status}`, response.statusText);
}

/** One call; resolves to the parsed JSON (null for 204), throws ApiError or Unreachable. */
export async function call(base, method, path, { token = storedToken(), body, query } = {}) {
  const url = new URL(base + path, location.href);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer",
    });
  } catch {
    throw new Unreachable(base);
  }
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return null;
  return response.json();
}

/** The raw response of a download (audit export), checked, for a Blob. */
export async function download(base, path, query) {
  const url = new URL(base + path, location.href);
  for (const [name, value] of Object.entries(query || {})) {
    if (value) url.searchParams.set(name, value);
  }
  let response;
  try {
    response = await fetch(url, {
      headers: { Authorization: `Bearer ${storedToken()}` }, credentials: "omit",
      cache: "no-store", referrerPolicy: "no-referrer",
    });
  } catch {
    throw new Unreachable(base);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

/** RabbitMQ topic matching, as ingest applies endpoint filters: ``*`` is exactly one
 * dot-separated word, ``#`` zero or more. */
export function matches(pattern, type) {
  const p = pattern.split(".");
  const w = type.split(".");
  const memo = new Map();
  const go = (i, j) => {
    const key = i * 1000 + j;
    if (memo.has(key)) return memo.get(key);
    let out;
    if (i === p.length) out = j === w.length;
    else if (p[i] === "#") out = go(i + 1, j) || (j < w.length && go(i, j + 1));
    else out = j < w.length && (p[i] === "*" || p[i] === w[j]) && go(i + 1, j + 1);
    memo.set(key, out);
    return out;
  };
  return go(0, 0);
}

/** Parse "5, 30, 120" into [5, 30, 120]; "" into null (the deployment's schedule); "-" or
 * "none" into [] (a single attempt). Throws on anything else. */
export function parseSchedule(text) {
  const value = text.trim();
  if (!value) return null;
  if (value === "-" || value.toLowerCase() === "none") return [];
  return value.split(",").map((part) => {
    const n = Number(part.trim());
    if (!part.trim() || !Number.isFinite(n) || n <= 0) throw new Error(part.trim() || ",");
    return n;
  });
}

/** Parse "5" into {per_second: 5} and "5/10" into {per_second: 5, burst: 10}; "" or "none"
 * into null (not limited). Throws on anything else (the API checks the ranges). */
export function parseRateLimit(text) {
  const value = text.trim();
  if (!value || value.toLowerCase() === "none") return null;
  const [rate, burst, ...rest] = value.split("/").map((part) => part.trim());
  const perSecond = Number(rate);
  if (rest.length || !rate || !Number.isFinite(perSecond) || perSecond <= 0) throw new Error(value);
  if (burst === undefined) return { per_second: perSecond };
  const n = Number(burst);
  if (!burst || !Number.isInteger(n) || n < 1) throw new Error(value);
  return { per_second: perSecond, burst: n };
}

export function splitPatterns(text) {
  return [...new Set(text.split(/[\s,]+/).map((p) => p.trim()).filter(Boolean))];
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
