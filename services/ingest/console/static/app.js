// Dihya's web console: endpoints, their secrets, test events, delivery attempts and retries,
// and the audit log — plain DOM, no framework. Text from the API is only ever set as
// textContent (never parsed as HTML); the token and secrets never reach a URL or the console.

import {
  ApiError, call, download, forgetToken, keepToken, matches, parseRateLimit, parseSchedule, sleep,
  splitPatterns, storedToken,
} from "./api.js";
import { addHours, hourlyBars } from "./charts.js";
import {
  everyLanguage, formatNumber, formatTime, initialLanguage, language, t, use,
} from "./i18n.js";

const TEST_EVENT = "dihya.test";
const OUTCOME_KINDS = ["delivery.attempted", "delivery.held", "delivery.parked", "delivery.dead_lettered"];
const TEST_WAIT_MS = 30000;
const POLL_MS = 400;
const PAGE = 50;
/** Every kind of audit record (tests/unit/test_console_static.py keeps it equal to the audit
 * service's list). */
export const KINDS = [
  "event.accepted", "event.rejected", "delivery.attempted", "delivery.dead_lettered",
  "delivery.parked", "delivery.held", "delivery.retry_requested", "endpoint.created",
  "endpoint.updated", "endpoint.deleted", "endpoint.disabled", "endpoint.enabled", "secret.set",
  "token.created", "token.revoked", "access.refused", "tenant.created", "tenant.updated",
  "tenant.deleted", "subject.erased", "retention.purged",
];

const $ = (id) => document.getElementById(id);

const state = {
  config: { audit_url: null },
  me: null,
  view: null,
  endpoints: [], endpointsNext: null,
  endpoint: null,
  attempts: [], attemptsCursor: null,
  failed: [], failedNext: null,
  test: null,
  audit: [], auditCursor: null, auditQuery: {}, verdict: null,
  messages: [], messagesCursor: null, messagesQuery: {},
  event: null,
  tokens: [], tokensNext: null,
  catalog: null,
};

// -- small DOM helpers ------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") el.textContent = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Machine text (ids, URLs, codes) kept left-to-right inside right-to-left pages. */
const code = (text, cls = null) => h("code", { dir: "ltr", class: cls }, text ?? "—");
const dash = "—";
/** A number with its unit ("7.2 ms", "3 s"), or a list of them, isolated left-to-right: in
 * Arabic, a bare "7.2 ms" would be laid out as "ms 7.2" by the bidi algorithm. */
const measure = (text) => h("bdi", { dir: "ltr", class: "measure", text });
const ms = (value) => (value == null ? dash : measure(`${formatNumber(value)} ms`));

function clip(text, n) {
  const s = String(text ?? "");
  return s.length > n ? `${s.slice(0, n)}…` : s;
}

function facts(dl, rows) {
  dl.replaceChildren(...rows.filter(Boolean).flatMap(([term, value]) => [
    h("dt", { text: term }), h("dd", {}, value ?? dash),
  ]));
}

function setHidden(el, hidden) {
  el.hidden = Boolean(hidden);
}

let announceTimer = null;

/** Say something in the polite live region (and show it). */
function announce(message) {
  const region = $("status");
  region.textContent = "";
  clearTimeout(announceTimer);
  // a fresh node so that the same message twice is announced twice
  announceTimer = setTimeout(() => { region.textContent = message; }, 30);
  hideError();
}

let keepBanners = false;

/** Navigate as the result of an action: what the action announces stays on the next page. */
function go(hash) {
  keepBanners = location.hash !== hash; // the same hash fires no hashchange
  location.hash = hash;
}

/** Leave nothing of the previous page's messages behind (on navigation). */
function clearBanners() {
  if (keepBanners) { keepBanners = false; return; }
  clearTimeout(announceTimer);
  $("status").textContent = "";
  hideError();
}

function hideError() {
  const box = $("alert");
  box.hidden = true;
  box.replaceChildren();
}

function describeError(err) {
  if (err instanceof ApiError) {
    const key = `error.${err.code}`;
    const human = t(key) !== key ? t(key) : t("error.generic", { status: err.status });
    const parts = [h("p", {}, h("strong", { text: human }))];
    if (err.fields.length) {
      parts.push(h("ul", {}, err.fields.map((f) => h("li", { text: t("error.field", { field: f.field }) }))));
    }
    // the server's own words are English: offered, folded, for whoever needs them
    parts.push(h("details", { class: "detail" }, h("summary", { text: t("error.technical") }),
      h("p", {}, code(err.code), " ", measure(`HTTP ${err.status}`)),
      err.message ? h("p", { lang: "en", dir: "ltr", text: err.message }) : null,
      err.fields.length ? h("ul", { lang: "en", dir: "ltr" }, err.fields.map((f) => h("li", {}, code(f.field), " ", f.message))) : null));
    return parts;
  }
  if (err && err.code === "unreachable") return [h("p", {}, h("strong", { text: t("error.unreachable") }), " ", code(err.message))];
  return [h("p", { text: t("error.unexpected") })];
}

function showError(err, box = $("alert")) {
  box.replaceChildren(...describeError(err));
  box.hidden = false;
}

/** Run an action; on failure show why (a 401 signs out: the token was revoked or expired). */
async function guard(action, { button = null, box = null } = {}) {
  if (button) { button.disabled = true; button.setAttribute("aria-busy", "true"); }
  try {
    return await action();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401 && state.me) {
      signOut();
      showError(err);
      return undefined;
    }
    showError(err, box || $("alert"));
    if (!(err instanceof ApiError) && err?.code !== "unreachable") console.error(err?.name || "error");
    return undefined;
  } finally {
    if (button) { button.disabled = false; button.removeAttribute("aria-busy"); }
  }
}

// -- roles ------------------------------------------------------------------------------------

const role = () => state.me?.role;
// tenant roles see and manage their own tenant's endpoints only (the API narrows every answer)
const canWrite = () => role() === "admin" || role() === "tenant_admin";
const canManageTokens = () => role() === "admin";
const canPickTenant = () => role() === "admin"; // tenant roles see their own tenant only
const canReadEndpoints = () => ["admin", "viewer", "tenant_admin", "tenant_viewer"].includes(role());
const canReadAudit = () => (role() === "admin" || role() === "auditor") && Boolean(state.config.audit_url);
const audit = () => state.config.audit_url;
const canReadTypes = () => role() !== undefined;

// -- views and routing ------------------------------------------------------------------------

function show(view, { focus = true } = {}) {
  state.view = view;
  for (const section of document.querySelectorAll("main > .view")) {
    section.hidden = section.id !== `view-${view}`;
  }
  for (const link of document.querySelectorAll("#nav a")) {
    const parent = { endpoint: "endpoints", event: "messages" }[view] || view;
    if (link.getAttribute("href") === `#/${parent}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (focus) $(`view-${view}`).querySelector("h1")?.focus();
}

function defaultRoute() {
  if (canReadEndpoints()) return "#/endpoints";
  if (canReadAudit()) return "#/audit";
  return "#/none";
}

async function route() {
  if (!state.me) return showSignin();
  const [, section, id] = location.hash.split("/");
  if (section === "endpoints" && canReadEndpoints()) {
    return id ? showEndpoint(decodeURIComponent(id)) : showEndpoints();
  }
  if (section === "messages" && canReadEndpoints()) return showMessages();
  if (section === "events" && id && canReadEndpoints()) return showEvent(decodeURIComponent(id));
  if (section === "tokens" && canManageTokens()) return showTokens();
  if (section === "event-types" && canReadEndpoints()) return showEventTypes();
  if (section === "audit" && canReadAudit()) return showAudit();
  if (section === "none" || defaultRoute() === "#/none") return showEmpty();
  history.replaceState(null, "", defaultRoute());
  return route();
}

function renderChrome() {
  const signedIn = Boolean(state.me);
  setHidden($("nav"), !signedIn);
  setHidden($("signout"), !signedIn);
  setHidden($("whoami"), !signedIn);
  if (!signedIn) return;
  $("whoami").textContent = t("signin.as", { role: t(`role.${role()}`), id: state.me.token_id });
  setHidden($("nav-endpoints").parentElement, !canReadEndpoints());
  setHidden($("nav-messages").parentElement, !canReadEndpoints());
  setHidden($("nav-event-types").parentElement, !canReadEndpoints());
  setHidden($("nav-tokens").parentElement, !canManageTokens());
  setHidden($("tenant-picker"), !canPickTenant());
  setHidden($("ep-tenant-field"), !canPickTenant());
  setHidden($("messages-tenant-field"), !canPickTenant());
  setHidden($("nav-audit").parentElement, !canReadAudit());
  for (const el of document.querySelectorAll(".admin-only")) setHidden(el, !canWrite());
  setHidden($("endpoints-readonly"), canWrite());
}

function showSignin() {
  renderChrome();
  show("signin", { focus: false });
  $("token").focus();
}

function showEmpty() {
  show("empty");
  let text = t("empty.publisher");
  if (role() === "auditor") text = t("empty.no_audit");
  $("empty-text").textContent = text;
}

async function signIn(token) {
  const me = await call("", "GET", "/v1/me", { token });
  keepToken(token);
  state.me = me;
  renderChrome();
  announce(t("signin.welcome", { role: t(`role.${me.role}`) }));
  if (!location.hash || location.hash === "#/" || location.hash === "#/none") {
    history.replaceState(null, "", defaultRoute()); // no hashchange: route once, below
  }
  await route();
}

function signOut() {
  forgetToken();
  state.me = null;
  state.endpoints = []; state.endpoint = null; state.attempts = []; state.failed = [];
  state.audit = []; state.test = null; state.verdict = null;
  state.messages = []; state.event = null; state.tokens = [];
  for (const tbody of document.querySelectorAll("main tbody")) tbody.replaceChildren();
  $("token").value = "";
  history.replaceState(null, "", location.pathname);
  showSignin();
  announce(t("signin.signed_out"));
}

// -- endpoints list ---------------------------------------------------------------------------

function statusText(ep) {
  const base = t(`estatus.${ep.status}`);
  return ep.disabled_reason ? `${base} (${t(`reason.${ep.disabled_reason}`)})` : base;
}

function patternList(events) {
  // one left-to-right isolate for the whole list: in Arabic the commas stay between the
  // patterns ("a.b, c.*", not "c.* ,a.b")
  return h("bdi", { dir: "ltr", class: "list" }, events.flatMap((e, i) => (i ? [", ", code(e)] : [code(e)])));
}

async function showEndpoints() {
  show("endpoints");
  state.endpoints = [];
  state.endpointsNext = null;
  renderEndpoints();
  $("tenant-pick").value = state.tenant || "";
  await guard(() => loadEndpoints(null));
  await guard(() => loadTenants());
}

async function loadTenants() {
  // the first tenants, as suggestions: any tenant can be typed (there may be 100,000s)
  if (!canPickTenant() || state.tenantsLoaded) return;
  state.tenantsLoaded = true;
  const page = await call("", "GET", "/v1/tenants", { query: { limit: PAGE } });
  $("tenant-list").replaceChildren(...page.items.flatMap((x) => [
    h("option", { value: x.external_id || x.id, label: x.name }),
  ]));
}

async function loadEndpoints(after) {
  const tenant = canPickTenant() ? state.tenant : "";
  const page = await call("", "GET", "/v1/endpoints", { query: { limit: PAGE, after, include: "health", tenant } });
  state.endpoints.push(...page.items);
  state.endpointsNext = page.next;
  renderEndpoints();
}

function percent(rate) {
  return rate == null ? dash : measure(`${formatNumber(rate * 100)} %`);
}

function chartOf(hours, label, size = {}) {
  const total = hours.reduce((n, x) => n + x.delivered + x.failed, 0);
  const failed = hours.reduce((n, x) => n + x.failed, 0);
  return hourlyBars(hours, {
    ...size,
    label: t("health.chart_label", { what: label, n: formatNumber(total, 0), failed: formatNumber(failed, 0) }),
    titles: (x) => t("health.hour", { time: formatTime(x.hour), delivered: formatNumber(x.delivered, 0), failed: formatNumber(x.failed, 0) }),
  });
}

function stateBadge(ep) {
  const s = ep.health?.state || ep.status;
  return h("span", { class: `badge ${s}`, text: s === "failing" ? t("estatus.failing") : statusText(ep) });
}

function renderEndpoints() {
  const rows = state.endpoints.map((ep) => h("tr", { "data-id": ep.id },
    h("th", { scope: "row" }, h("a", { href: `#/endpoints/${encodeURIComponent(ep.id)}` },
      h("bdi", { dir: "ltr", text: ep.url }))),
    h("td", {}, patternList(ep.events)),
    h("td", {}, stateBadge(ep)),
    h("td", { class: "num" }, ep.health ? [percent(ep.health.success_rate), h("br"),
      h("small", { text: t("health.attempts", { n: formatNumber(ep.health.attempts, 0) }) })] : dash),
    h("td", { text: formatTime(ep.health?.last_delivery_at) }),
    h("td", { class: "chart" }, ep.health ? chartOf(ep.health.hours, ep.url) : dash),
    h("td", { text: ep.description || dash })));
  const overall = addHours(state.endpoints.map((ep) => ep.health?.hours));
  $("endpoints-chart").replaceChildren(overall.length ? chartOf(overall, t("health.all"), { width: 720, height: 72 }) : dash);
  setHidden($("endpoints-overall"), state.endpoints.length === 0);
  $("endpoints-table").tBodies[0].replaceChildren(...rows);
  setHidden($("endpoints-none"), state.endpoints.length > 0);
  setHidden($("endpoints-table"), state.endpoints.length === 0);
  setHidden($("endpoints-more"), !state.endpointsNext);
}

// -- endpoint form (create and edit) ----------------------------------------------------------

let formMode = null;

function openEndpointForm(ep) {
  formMode = ep ? { id: ep.id, before: ep } : { id: null };
  $("endpoint-dialog-title").textContent = t(ep ? "form.edit_title" : "form.create_title");
  $("ep-url").value = ep?.url || "";
  $("ep-events").value = ep ? ep.events.join(", ") : "";
  $("ep-description").value = ep?.description || "";
  $("ep-schedule").value = ep?.retry_schedule ? (ep.retry_schedule.length ? ep.retry_schedule.join(", ") : "none") : "";
  $("ep-rate").value = ep?.rate_limit ? `${ep.rate_limit.per_second}/${ep.rate_limit.burst}` : "";
  $("ep-ordering").value = ep?.ordering || "";
  $("ep-ordering-key").value = ep?.ordering_key || "";
  $("ep-scheme").value = ep?.signature_scheme || "hmac-sha256";
  $("ep-scheme").disabled = Boolean(ep); // fixed at creation
  $("ep-tenant").value = ep ? ep.tenant || "" : state.tenant || ""; // the picked one by default
  $("ep-tenant").disabled = Boolean(ep); // an endpoint stays in its tenant
  // values are never shown back (masked by the API): empty keeps them when editing
  $("ep-headers").value = "";
  $("ep-headers").placeholder = ep && Object.keys(ep.headers || {}).length
    ? t("form.headers_keep", { names: Object.keys(ep.headers).join(", ") }) : "X-Api-Key: …";
  $("endpoint-form-error").hidden = true;
  renderCatalogChoices();
  $("endpoint-dialog").showModal();
  $("ep-url").focus();
}

// "Name: value" lines → an object; null when empty (keep / none). The API checks the names.
function parseHeaders(text) {
  const lines = text.split("\n").map((l) => l.trim()).filter(Boolean);
  if (!lines.length) return null;
  const out = {};
  for (const line of lines) {
    const at = line.indexOf(":");
    if (at < 1) throw new Error(line.slice(0, 40));
    out[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return out;
}

function formError(message) {
  const box = $("endpoint-form-error");
  box.replaceChildren(h("p", { text: message }));
  box.hidden = false;
}

async function submitEndpointForm(event) {
  event.preventDefault();
  const url = $("ep-url").value.trim();
  const events = splitPatterns($("ep-events").value);
  const description = $("ep-description").value.trim();
  if (!url) { formError(t("form.url_required")); $("ep-url").focus(); return; }
  if (!events.length) { formError(t("form.events_required")); $("ep-events").focus(); return; }
  let schedule;
  try {
    schedule = parseSchedule($("ep-schedule").value);
  } catch (err) {
    formError(t("form.schedule_invalid", { value: err.message }));
    $("ep-schedule").focus();
    return;
  }
  let rate;
  try {
    rate = parseRateLimit($("ep-rate").value);
  } catch (err) {
    formError(t("form.rate_invalid", { value: err.message }));
    $("ep-rate").focus();
    return;
  }
  let headers;
  try {
    headers = parseHeaders($("ep-headers").value);
  } catch (err) {
    formError(t("form.headers_invalid", { value: err.message }));
    $("ep-headers").focus();
    return;
  }
  const ordering = $("ep-ordering").value || null;
  const orderingKey = $("ep-ordering-key").value.trim() || null;
  const submit = event.submitter || $("endpoint-form").querySelector("[type=submit]");
  const box = $("endpoint-form-error");
  if (!formMode.id) {
    const body = { url, events, ...(description ? { description } : {}), ...(schedule !== null ? { retry_schedule: schedule } : {}),
      signature_scheme: $("ep-scheme").value, ...(headers ? { headers } : {}), ...(rate ? { rate_limit: rate } : {}),
      ...(ordering ? { ordering } : {}), ...(orderingKey ? { ordering_key: orderingKey } : {}) };
    const tenant = canPickTenant() ? $("ep-tenant").value.trim() : "";
    if (tenant) body.tenant = tenant;
    const created = await guard(() => call("", "POST", "/v1/endpoints", { body }), { button: submit, box });
    if (!created) return;
    $("endpoint-dialog").close();
    announce(t("endpoint.created", { id: created.id }));
    go(`#/endpoints/${encodeURIComponent(created.id)}`);
    if (created.secret) showSecret(created.secret, null);
    else announce(t("form.public_key", { key: created.public_keys?.[0]?.key || "" }));
    return;
  }
  const before = formMode.before;
  const body = {};
  if (url !== before.url) body.url = url;
  if (events.join("\n") !== before.events.join("\n")) body.events = events;
  if (description !== (before.description || "")) body.description = description || null;
  if (JSON.stringify(schedule) !== JSON.stringify(before.retry_schedule ?? null)) body.retry_schedule = schedule;
  if (headers) body.headers = headers;
  const rateBefore = before.rate_limit ? { per_second: before.rate_limit.per_second, burst: before.rate_limit.burst } : null;
  const rateAfter = rate ? { burst: 1, ...rate } : null;
  if (JSON.stringify(rateAfter) !== JSON.stringify(rateBefore)) body.rate_limit = rate;
  if (ordering !== (before.ordering ?? null)) body.ordering = ordering;
  if (orderingKey !== (before.ordering_key ?? null)) body.ordering_key = orderingKey;
  if (!Object.keys(body).length) { $("endpoint-dialog").close(); announce(t("endpoint.unchanged")); return; }
  const updated = await guard(() => call("", "PATCH", `/v1/endpoints/${encodeURIComponent(before.id)}`, { body }), { button: submit, box });
  if (!updated) return;
  $("endpoint-dialog").close();
  state.endpoint = updated;
  renderEndpoint();
  announce(t("endpoint.saved"));
}

// -- the secret, shown once -------------------------------------------------------------------

function showSecret(secret, previousValidUntil, kind = "secret") {
  const dialog = $("secret-dialog");
  $("secret-title").textContent = t(`${kind}.title`);
  $("secret-warning").textContent = t(`${kind}.once`);
  $("secret-label").textContent = t(`${kind}.label`);
  $("secret-value").value = secret;
  const valid = $("secret-valid");
  valid.textContent = previousValidUntil ? t("secret.previous_valid", { time: formatTime(previousValidUntil) }) : "";
  setHidden(valid, !previousValidUntil);
  dialog.showModal();
  $("secret-value").focus();
  $("secret-value").select();
}

async function copySecret() {
  const input = $("secret-value");
  try {
    await navigator.clipboard.writeText(input.value);
  } catch {
    input.focus();
    input.select();
    document.execCommand("copy");
  }
  announce(t("secret.copied"));
}

// -- confirmation -----------------------------------------------------------------------------

function confirmAction(text, yesLabel) {
  const dialog = $("confirm-dialog");
  $("confirm-text").textContent = text;
  $("confirm-yes").textContent = yesLabel;
  return new Promise((resolve) => {
    let answered = false;
    const finish = (value) => {
      if (answered) return;
      answered = true;
      $("confirm-yes").onclick = null;
      $("confirm-no").onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(value);
    };
    $("confirm-yes").onclick = () => finish(true);
    $("confirm-no").onclick = () => finish(false);
    dialog.onclose = () => finish(false); // Escape
    dialog.showModal();
    $("confirm-no").focus();
  });
}

// -- one endpoint -----------------------------------------------------------------------------

async function showEndpoint(id) {
  show("endpoint", { focus: false });
  if (state.endpoint?.id !== id) {
    state.endpoint = null;
    state.test = null;
    $("endpoint-title").textContent = t("app.loading");
    $("endpoint-facts").replaceChildren();
  }
  state.attempts = []; state.attemptsCursor = null;
  state.failed = []; state.failedNext = null;
  renderAttempts(); renderFailed(); renderTest();
  const ep = await guard(() => call("", "GET", `/v1/endpoints/${encodeURIComponent(id)}`));
  if (!ep) return;
  state.endpoint = ep;
  renderEndpoint();
  $("endpoint-title").focus();
  await Promise.all([guard(() => loadAttempts()), guard(() => loadFailed()), guard(() => loadHealth())]);
}

async function loadHealth() {
  if (!state.endpoint) return;
  state.endpoint.health = await call("", "GET", `/v1/endpoints/${encodeURIComponent(state.endpoint.id)}/health`);
  renderHealth();
}

function renderHealth() {
  const health = state.endpoint?.health;
  if (!health) { $("health-facts").replaceChildren(); $("health-chart").replaceChildren(); return; }
  facts($("health-facts"), [
    [t("field.state"), h("span", { class: `badge ${health.state}`, text: t(`estatus.${health.state}`) })],
    [t("field.success_rate"), percent(health.success_rate)],
    [t("field.attempts"), h("span", {}, measure(formatNumber(health.attempts, 0)), " ",
      t("health.split", { delivered: formatNumber(health.delivered, 0), failed: formatNumber(health.failed, 0) }))],
    [t("field.last_delivery"), formatTime(health.last_delivery_at)],
  ]);
  $("health-chart").replaceChildren(chartOf(health.hours, state.endpoint.url, { width: 720, height: 72 }));
}

async function retryFailed(button) {
  const ep = state.endpoint;
  if (!await confirmAction(t("retry_failed.confirm"), t("endpoint.retry_failed"))) return;
  const out = await guard(() => call("", "POST", `/v1/endpoints/${encodeURIComponent(ep.id)}/retry-failed`), { button });
  if (!out) return;
  announce(t("retry_failed.done", { n: formatNumber(out.retried, 0) }));
  await guard(() => loadFailed());
}

async function recoverSince(event) {
  event.preventDefault();
  const ep = state.endpoint;
  const value = $("recover-since").value;
  if (!value) { $("recover-since").focus(); return; }
  const since = new Date(value).toISOString(); // the browser's local time
  const out = await guard(() => call("", "POST", `/v1/endpoints/${encodeURIComponent(ep.id)}/recover`, { body: { since } }),
    { button: event.submitter });
  if (!out) return;
  announce(t("recover.done", { n: formatNumber(out.count, 0) }));
  await guard(() => loadFailed());
}

function orderingText(ep) {
  if (!ep.ordering) return t("endpoint.ordering_none");
  if (!ep.ordering_key) return t("endpoint.ordering_whole");
  return t("endpoint.ordering_text", { path: ep.ordering_key });
}

function rateText(limit) {
  if (!limit) return t("endpoint.rate_none");
  return measure(t("endpoint.rate_text", { rate: formatNumber(limit.per_second), burst: formatNumber(limit.burst, 0) }));
}

function scheduleText(schedule) {
  if (schedule === null || schedule === undefined) return t("endpoint.schedule_default");
  if (!schedule.length) return t("endpoint.schedule_single");
  return measure(schedule.map((s) => `${formatNumber(s)} s`).join(", "));
}

function renderEndpoint() {
  const ep = state.endpoint;
  if (!ep) return;
  $("endpoint-title").replaceChildren(h("bdi", { dir: "ltr", text: ep.url }));
  facts($("endpoint-facts"), [
    [t("field.id"), code(ep.id)],
    [t("field.status"), h("span", { class: `badge ${ep.status}`, text: statusText(ep) })],
    [t("field.events"), patternList(ep.events)],
    [t("field.description"), ep.description || dash],
    [t("field.retry_schedule"), scheduleText(ep.retry_schedule)],
    [t("field.rate_limit"), rateText(ep.rate_limit)],
    [t("field.ordering"), orderingText(ep)],
    [t("field.created_at"), formatTime(ep.created_at)],
    [t("field.updated_at"), formatTime(ep.updated_at)],
    ep.failing_since && [t("field.failing_since"), formatTime(ep.failing_since)],
    ep.disabled_at && [t("field.disabled_at"), formatTime(ep.disabled_at)],
  ]);
  $("endpoint-toggle").textContent = t(ep.status === "enabled" ? "endpoint.disable" : "endpoint.enable");
  $("endpoint-test").disabled = ep.status !== "enabled";
  setHidden($("attempts-body"), !canReadAudit());
  const off = $("attempts-off");
  setHidden(off, canReadAudit());
  off.textContent = state.config.audit_url ? t("attempts.role") : t("attempts.no_audit");
}

async function toggleEndpoint(button) {
  const ep = state.endpoint;
  const status = ep.status === "enabled" ? "disabled" : "enabled";
  const out = await guard(() => call("", "PATCH", `/v1/endpoints/${encodeURIComponent(ep.id)}`, { body: { status } }), { button });
  if (!out) return;
  state.endpoint = out;
  renderEndpoint();
  if (status === "disabled") announce(t("endpoint.disabled_now"));
  else announce(out.held_deliveries ? t("endpoint.enabled_held", { n: out.held_deliveries }) : t("endpoint.enabled_now"));
}

async function rotateSecret(button) {
  const ep = state.endpoint;
  if (!await confirmAction(t("rotate.confirm"), t("endpoint.rotate"))) return;
  const out = await guard(() => call("", "POST", `/v1/endpoints/${encodeURIComponent(ep.id)}/secret/rotate`, { body: {} }), { button });
  if (!out) return;
  announce(t("rotate.done"));
  showSecret(out.secret, out.previous_valid_until);
}

async function deleteEndpoint(button) {
  const ep = state.endpoint;
  if (!await confirmAction(t("delete.confirm", { url: ep.url }), t("endpoint.delete"))) return;
  const done = await guard(async () => {
    await call("", "DELETE", `/v1/endpoints/${encodeURIComponent(ep.id)}`);
    return true;
  }, { button });
  if (!done) return;
  state.endpoint = null;
  go("#/endpoints");
  announce(t("delete.done", { id: ep.id }));
}

// -- test event -------------------------------------------------------------------------------

async function waitOutcome(eventId, endpointId) {
  const deadline = Date.now() + TEST_WAIT_MS;
  for (;;) {
    const page = await call(audit(), "GET", "/v1/audit/records",
      { query: { event_id: eventId, endpoint_id: endpointId, limit: 100 } });
    const found = page.records.find((r) => OUTCOME_KINDS.includes(r.kind));
    if (found) return found;
    if (Date.now() >= deadline) return null;
    await sleep(POLL_MS);
  }
}

async function sendTest(button) {
  const ep = state.endpoint;
  const path = `/v1/endpoints/${encodeURIComponent(ep.id)}`;
  await guard(async () => {
    let added = false;
    if (!ep.events.some((p) => matches(p, TEST_EVENT))) {
      await call("", "PATCH", path, { body: { events: [...ep.events, TEST_EVENT] } });
      added = true;
    }
    let accepted;
    let record = null;
    try {
      const details = await everyLanguage("test.details");
      accepted = await call("", "POST", "/v1/events", {
        body: { event: TEST_EVENT, lang: language(), data: { test: true, endpoint_id: ep.id, details } },
      });
      state.test = { eventId: accepted.id, waiting: Boolean(audit()), record: null };
      renderTest();
      announce(t("test.published", { id: accepted.id }));
      if (audit()) record = await waitOutcome(accepted.id, ep.id);
    } finally {
      if (added) { // take back the test subscription only (other changes made meanwhile stay)
        const current = await call("", "GET", path);
        const events = current.events.filter((e) => e !== TEST_EVENT);
        if (events.length && events.length !== current.events.length) await call("", "PATCH", path, { body: { events } });
      }
    }
    state.test = { eventId: accepted.id, waiting: false, record, timedOut: Boolean(audit()) && !record };
    renderTest();
    if (record) announce(testSummary(record));
    await loadAttempts();
  }, { button });
}

function nextText(details) {
  if (!details) return dash;
  if (details.next === "retry") return h("span", { text: t("next.retry", { seconds: formatNumber((details.retry_in_ms || 0) / 1000, 2) }) });
  if (details.next === "dead_letter") return t("next.dead_letter", { reason: details.dead_letter_reason || dash });
  if (details.next === "done") return t("next.done");
  return dash;
}

function testSummary(record) {
  if (record.kind !== "delivery.attempted") return t("test.not_attempted", { kind: record.kind, reason: record.reason || dash });
  if (record.outcome === "delivered") return t("test.delivered", { status: record.status_code });
  return t("test.failed", { status: record.status_code ?? dash, error: record.error || record.reason || dash });
}

function renderTest() {
  const panel = $("test-result");
  const test = state.test;
  setHidden(panel, !test);
  if (!test) return;
  const summary = $("test-summary");
  const rec = test.record;
  summary.className = rec ? (rec.outcome === "delivered" ? "ok" : "bad") : "";
  if (test.waiting) summary.textContent = t("test.waiting", { id: test.eventId });
  else if (!audit()) summary.textContent = t("test.no_audit", { id: test.eventId });
  else if (!rec) summary.textContent = t("test.timeout", { id: test.eventId });
  else summary.textContent = testSummary(rec);
  const d = rec?.details || {};
  facts($("test-facts"), rec && rec.kind === "delivery.attempted" ? [
    [t("field.event_id"), code(test.eventId)],
    [t("field.delivery_id"), code(rec.delivery_id)],
    [t("field.attempt"), rec.attempt],
    [t("field.status_code"), rec.status_code ?? dash],
    [t("field.latency"), ms(rec.duration_ms)],
    [t("field.outcome"), t(`outcome.${rec.outcome}`)],
    rec.error && [t("field.error"), code(rec.error)],
    d.response_excerpt && [t("field.response"), code(clip(d.response_excerpt, 300))],
    [t("field.next"), nextText(d)],
  ] : [[t("field.event_id"), code(test.eventId)]]);
}

// -- delivery attempts (audit) and failed deliveries (ingest) ---------------------------------

async function loadAttempts(more = false) {
  if (!state.endpoint || !canReadAudit()) return;
  if (!more) { state.attempts = []; state.attemptsCursor = null; }
  const period = $("attempts-period").value;
  const since = period ? new Date(Date.now() - Number(period) * 1000).toISOString() : undefined;
  const page = await call(audit(), "GET", "/v1/audit/records", {
    query: { endpoint_id: state.endpoint.id, kind: "delivery.attempted", since, limit: 100, cursor: more ? state.attemptsCursor : undefined },
  });
  state.attempts.push(...page.records);
  state.attemptsCursor = page.next_cursor;
  renderAttempts();
}

function renderAttempts() {
  const rows = [...state.attempts].reverse().map((r) => h("tr", { "data-delivery": r.delivery_id, "data-attempt": r.attempt },
    h("th", { scope: "row" }, code(r.delivery_id), h("br"), h("small", {}, code(r.event_type))),
    h("td", { text: r.attempt ?? dash }),
    h("td", { text: formatTime(r.occurred_at) }),
    h("td", {}, h("span", { class: `badge ${r.outcome}`, text: t(`outcome.${r.outcome}`) })),
    h("td", { class: "num", text: r.status_code ?? dash }),
    h("td", { class: "num" }, ms(r.duration_ms)),
    h("td", {}, r.details?.response_excerpt ? code(clip(r.details.response_excerpt, 160)) : (r.error ? code(r.error) : dash)),
    h("td", {}, nextText(r.details))));
  $("attempts-table").tBodies[0].replaceChildren(...rows);
  setHidden($("attempts-none"), state.attempts.length > 0);
  setHidden($("attempts-table"), state.attempts.length === 0);
  setHidden($("attempts-more"), !state.attemptsCursor);
}

async function loadFailed(more = false) {
  if (!state.endpoint) return;
  if (!more) { state.failed = []; state.failedNext = null; }
  const page = await call("", "GET", `/v1/endpoints/${encodeURIComponent(state.endpoint.id)}/deliveries`, {
    query: { status: $("failed-status").value, limit: PAGE, after: more ? state.failedNext : undefined },
  });
  state.failed.push(...page.items);
  state.failedNext = page.next;
  renderFailed();
}

function renderFailed() {
  const rows = state.failed.map((d) => h("tr", { "data-delivery": d.delivery_id },
    h("th", { scope: "row" }, code(d.delivery_id)),
    h("td", {}, code(d.event_type), h("br"), h("small", {}, code(d.event_id))),
    h("td", {}, code(d.reason), d.error ? [h("br"), h("small", {}, code(clip(d.error, 120)))] : null),
    h("td", { text: formatTime(d.failed_at) }),
    h("td", {}, h("ol", { class: "attempts" }, d.attempts.map((a) => h("li", { value: a.attempt },
      `${t(`outcome.${a.outcome}`)} · `, measure(String(a.status_code ?? dash)), " · ", ms(a.duration_ms))))),
    h("td", {}, canWrite() && d.status !== "retried"
      ? h("button", { type: "button", class: "retry", "data-delivery": d.delivery_id,
        "aria-label": t("failed.retry_label", { id: d.delivery_id }), text: t("failed.retry"),
        onclick: (e) => retryDelivery(d, e.currentTarget) })
      : (d.retried_at ? t("failed.retried_at", { time: formatTime(d.retried_at) }) : dash))));
  $("failed-table").tBodies[0].replaceChildren(...rows);
  setHidden($("failed-none"), state.failed.length > 0);
  setHidden($("failed-table"), state.failed.length === 0);
  setHidden($("failed-more"), !state.failedNext);
}

async function retryDelivery(delivery, button) {
  const out = await guard(() => call("", "POST", `/v1/deliveries/${encodeURIComponent(delivery.delivery_id)}/retry`), { button });
  if (!out) return;
  announce(t("failed.retried", { id: out.delivery_id, attempt: out.attempt }));
  await guard(() => loadFailed());
}

// -- audit log --------------------------------------------------------------------------------

/** A filter form's query: its non-empty text fields, and its since/until (the browser's local
 * time) as ISO instants. */
function formQuery(formId, fields) {
  const form = $(formId);
  const query = {};
  for (const name of fields) {
    const value = form.elements[name].value.trim();
    if (value) query[name] = value;
  }
  for (const name of ["since", "until"]) {
    const value = form.elements[name].value;
    if (value) query[name] = new Date(value).toISOString(); // the browser's local time
  }
  return query;
}

function auditQuery() {
  return formQuery("audit-form",
    ["kind", "event_type", "event_id", "endpoint_id", "delivery_id", "outcome"]);
}

async function showAudit() {
  show("audit");
  const select = $("audit-kind");
  if (select.options.length === 1) select.append(...KINDS.map((k) => h("option", { value: k, text: k })));
  if (!state.audit.length) await guard(() => searchAudit());
}

async function searchAudit(more = false) {
  if (!more) { state.auditQuery = auditQuery(); state.audit = []; state.auditCursor = null; }
  const page = await call(audit(), "GET", "/v1/audit/records", {
    query: { ...state.auditQuery, order: "desc", limit: 100, cursor: more ? state.auditCursor : undefined },
  });
  state.audit.push(...page.records);
  state.auditCursor = page.next_cursor;
  renderAudit();
  if (!more) announce(t("audit.found", { n: state.audit.length, more: state.auditCursor ? "+" : "" }));
}

function idsOf(r) {
  const pairs = [["field.event_id", r.event_id], ["field.endpoint_id", r.endpoint_id], ["field.delivery_id", r.delivery_id], ["field.actor", r.actor]];
  return pairs.filter(([, v]) => v).flatMap(([k, v], i) => [i ? h("br") : null, h("small", { text: `${t(k)} ` }), code(v)]);
}

function renderAudit() {
  const rows = state.audit.map((r) => h("tr", { "data-seq": r.seq },
    h("th", { scope: "row", class: "num", text: r.seq }),
    h("td", { text: formatTime(r.occurred_at) }),
    h("td", {}, code(r.kind, "nowrap"), r.event_type ? [h("br"), h("small", {}, code(r.event_type))] : null),
    h("td", { text: r.service }),
    h("td", {}, idsOf(r)),
    h("td", {}, r.outcome ? code(r.outcome) : dash, r.status_code ? ` ${r.status_code}` : "", r.reason ? [h("br"), h("small", {}, code(r.reason))] : null),
    h("td", {}, detailList(r.details))));
  $("audit-table").tBodies[0].replaceChildren(...rows);
  setHidden($("audit-none"), state.audit.length > 0);
  setHidden($("audit-table"), state.audit.length === 0);
  setHidden($("audit-more"), !state.auditCursor);
  renderVerdict();
}

/** An audit record's details as a short list of names and values, not a JSON blob. */
function detailList(details) {
  const names = Object.keys(details || {});
  if (!names.length) return dash;
  return h("dl", { class: "details" }, names.slice(0, 12).flatMap((n) => {
    const v = details[n];
    let shown;
    if (Array.isArray(v) && v.every((x) => typeof x !== "object")) shown = h("bdi", { dir: "ltr", class: "list" }, v.flatMap((x, i) => (i ? [", ", code(String(x))] : [code(String(x))])));
    else if (v !== null && typeof v === "object") shown = code(clip(JSON.stringify(v), 160));
    else if (typeof v === "number") shown = measure(formatNumber(v, 3));
    else shown = code(clip(String(v), 160));
    return [h("dt", {}, code(n)), h("dd", {}, shown)];
  }));
}

async function verifyChain(button) {
  const report = await guard(() => call(audit(), "GET", "/v1/audit/verify"), { button });
  if (!report) return;
  state.verdict = report;
  renderVerdict();
  announce($("audit-verdict").textContent);
}

function renderVerdict() {
  const box = $("audit-verdict");
  const v = state.verdict;
  setHidden(box, !v);
  if (!v) return;
  box.className = `verdict ${v.ok ? "ok" : "bad"}`;
  box.textContent = v.ok
    ? t("audit.intact", { n: v.records, head: v.head_hash.slice(0, 16) })
    : t("audit.broken", { seq: v.first_bad_seq, problem: v.problem });
}

async function exportAudit(format, button) {
  await guard(async () => {
    const response = await download(audit(), "/v1/audit/export", { ...auditQuery(), format });
    const blob = await response.blob();
    const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\..*/, "");
    const link = h("a", { href: URL.createObjectURL(blob), download: `dihya-audit-${stamp}.${format}`, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    announce(t("audit.exported", { format: format.toUpperCase(), size: formatNumber(blob.size / 1024) }));
  }, { button });
}

// -- message log ------------------------------------------------------------------------------

const LOG_STATUSES = ["delivered", "failed", "pending", "held"];

function messagesQuery() {
  // an admin may narrow the log to one tenant; a tenant role sees its own only (the API narrows)
  return formQuery("messages-form", canPickTenant() ? ["type", "status", "endpoint", "tenant"] : ["type", "status", "endpoint"]);
}

async function showMessages() {
  show("messages");
  // one picked tenant for the endpoints and the log: picked on either page, the other follows
  if (canPickTenant() && $("messages-tenant").value.trim() !== (state.tenant || "")) {
    $("messages-tenant").value = state.tenant || "";
    state.messages = [];
  }
  await guard(() => loadCatalog());
  await guard(() => loadTenants());
  if (!state.messages.length) await guard(() => searchMessages());
}

async function searchMessages(more = false) {
  const id = $("messages-id").value.trim();
  if (!more && id) { location.hash = `#/events/${encodeURIComponent(id)}`; return; }
  if (!more) {
    state.messagesQuery = messagesQuery();
    if (canPickTenant()) state.tenant = state.messagesQuery.tenant || "";
    state.messages = []; state.messagesCursor = null;
  }
  const page = await call("", "GET", "/v1/events", {
    query: { ...state.messagesQuery, limit: PAGE, cursor: more ? state.messagesCursor : undefined },
  });
  state.messages.push(...page.items);
  state.messagesCursor = page.next_cursor;
  renderMessages();
  if (!more) announce(t("messages.found", { n: formatNumber(state.messages.length, 0), more: state.messagesCursor ? "+" : "" }));
}

function countBadges(counts) {
  const parts = LOG_STATUSES.filter((s) => counts[s]).map((s) =>
    h("span", { class: `badge ${s}`, text: t(`lcount.${s}`, { n: formatNumber(counts[s], 0) }) }));
  return parts.length ? h("span", { class: "badges" }, parts) : t("messages.no_delivery");
}

function renderMessages() {
  const rows = state.messages.map((e) => h("tr", { "data-event": e.id },
    h("th", { scope: "row" }, h("a", { href: `#/events/${encodeURIComponent(e.id)}` }, code(e.id))),
    h("td", {}, code(e.event)),
    h("td", { text: formatTime(e.received_at) }),
    h("td", {}, countBadges(e.deliveries))));
  $("messages-table").tBodies[0].replaceChildren(...rows);
  setHidden($("messages-none"), state.messages.length > 0);
  setHidden($("messages-table"), state.messages.length === 0);
  setHidden($("messages-more"), !state.messagesCursor);
}

async function showEvent(id) {
  show("event", { focus: false });
  if (state.event?.id !== id) {
    state.event = null;
    $("event-title").textContent = t("app.loading");
    for (const box of ["event-facts", "event-details", "event-payload", "event-deliveries"]) $(box).replaceChildren();
  }
  const event = await guard(() => call("", "GET", `/v1/events/${encodeURIComponent(id)}`));
  if (!event) return;
  state.event = event;
  renderEvent();
  $("event-title").focus();
}

const DETAIL_LANGS = [["fr", "ltr"], ["en", "ltr"], ["ar", "rtl"], ["tzm", "auto"]];

function renderEvent() {
  const e = state.event;
  if (!e) return;
  $("event-title").replaceChildren(t("event.title"), " ", code(e.id));
  facts($("event-facts"), [
    [t("field.event_type"), code(e.event)],
    [t("field.received_at"), formatTime(e.received_at)],
    e.payload?.lang && [t("field.lang"), code(e.payload.lang)],
    e.payload?.timestamp && [t("field.timestamp"), formatTime(e.payload.timestamp)],
  ]);
  const details = e.payload?.data?.details;
  $("event-details").replaceChildren(...(details && typeof details === "object"
    ? DETAIL_LANGS.map(([lang, dir]) => h("figure", { class: "language" },
      h("figcaption", {}, code(lang)),
      h("blockquote", { lang, dir, text: typeof details[lang] === "string" ? details[lang] : dash })))
    : [h("p", { class: "hint", text: t("event.no_details") })]));
  setHidden($("event-payload-gone"), e.payload !== null);
  setHidden($("event-payload"), e.payload === null);
  $("event-payload").textContent = e.payload === null ? "" : JSON.stringify(e.payload, null, 2);
  setHidden($("event-deliveries-none"), e.deliveries.length > 0);
  $("event-deliveries").replaceChildren(...e.deliveries.map(deliveryPanel));
}

function headerList(headers) {
  const names = Object.keys(headers || {});
  if (!names.length) return dash;
  return h("dl", { class: "headers", dir: "ltr" }, names.flatMap((n) => [h("dt", {}, code(n)), h("dd", {}, code(headers[n]))]));
}

function deliveryPanel(d) {
  const resend = canWrite() && !["pending", "retried"].includes(d.status)
    ? h("button", { type: "button", class: "resend", "data-delivery": d.id,
      "aria-label": t("event.resend_label", { id: d.id }), text: t("event.resend"),
      onclick: (ev) => resendDelivery(d, ev.currentTarget) })
    : null;
  const rows = d.attempts.map((a) => h("tr", { "data-attempt": a.attempt },
    h("th", { scope: "row", class: "num", text: a.attempt }),
    h("td", { text: formatTime(a.at) }),
    h("td", {}, h("span", { class: `badge ${a.outcome}`, text: t(`outcome.${a.outcome}`) }),
      a.error ? [h("br"), h("small", {}, code(clip(a.error, 200)))] : null),
    h("td", { class: "num" }, a.status_code == null ? dash : measure(String(a.status_code))),
    h("td", { class: "num" }, ms(a.latency_ms)),
    h("td", {}, h("details", {}, h("summary", { text: t("event.headers_sent", { n: Object.keys(a.request_headers).length }) }),
      headerList(a.request_headers))),
    h("td", {}, h("details", {}, h("summary", { text: t("event.headers_received", { n: Object.keys(a.response_headers).length }) }),
      headerList(a.response_headers)), a.response_excerpt ? h("pre", { dir: "ltr", class: "excerpt", text: clip(a.response_excerpt, 600) }) : null)));
  return h("section", { class: "delivery panel", "data-delivery": d.id, "data-endpoint": d.endpoint_id },
    h("h3", {}, h("a", { href: `#/endpoints/${encodeURIComponent(d.endpoint_id)}` }, h("bdi", { dir: "ltr", text: d.url }))),
    h("p", { class: "line" }, h("span", { class: `badge ${d.status}`, text: t(`lstatus.${d.status}`) }), " ",
      h("small", { text: `${t("field.delivery_id")} ` }), code(d.id),
      d.next_retry_at ? [" ", h("small", { text: t("event.next_retry", { time: formatTime(d.next_retry_at) }) })] : null,
      resend ? [" ", resend] : null),
    d.attempts.length ? h("table", { class: "attempts" },
      h("caption", { class: "visually-hidden", text: t("event.attempts_of", { url: d.url }) }),
      h("thead", {}, h("tr", {}, ["field.attempt", "field.time", "field.outcome", "field.status_code", "field.latency",
        "field.request_headers", "field.response"].map((k) => h("th", { scope: "col", text: t(k) })))),
      h("tbody", {}, rows)) : h("p", { class: "hint", text: t("event.no_attempt") }));
}

async function resendDelivery(delivery, button) {
  const out = await guard(() => call("", "POST", `/v1/deliveries/${encodeURIComponent(delivery.id)}/resend`), { button });
  if (!out) return;
  announce(t("event.resent", { id: out.delivery_id, attempt: out.attempt }));
  const event = await guard(() => call("", "GET", `/v1/events/${encodeURIComponent(state.event.id)}`));
  if (event) { state.event = event; renderEvent(); }
}

// -- event types (the catalog) ----------------------------------------------------------------

async function loadCatalog() {
  if (state.catalog) return;
  state.catalog = await call("", "GET", "/v1/event-types");
  $("catalog-types").replaceChildren(...state.catalog.items.map((x) => h("option", { value: x.event })));
}

function examplePayload(type) {
  const data = { test: true };
  for (const name of type.placeholders) data[name] = `example-${name}`;
  return { event: type.event, lang: shortLang(), data };
}

/** The catalog's language of the page ("tzm" for both Tamazight scripts). */
function shortLang() {
  return language().split("-")[0];
}

async function showEventTypes() {
  show("event-types");
  await guard(() => loadCatalog());
  if (canWrite()) { // the endpoints a test can go to, as they are now
    state.endpoints = []; state.endpointsNext = null;
    await guard(() => loadEndpoints(null));
  }
  renderEventTypes();
}

function renderEventTypes() {
  const catalog = state.catalog;
  if (!catalog) return;
  $("types-policy").textContent = t(`types.policy_${catalog.unknown_event_types}`);
  $("types-list").replaceChildren(...catalog.items.map((type) => {
    const lang = shortLang();
    // the catalog says which translations still await a native speaker's review
    const pending = (l) => (type.awaiting_native_review || []).includes(l)
      ? [" ", h("small", { class: "review", text: t("types.unreviewed") })] : null;
    return h("section", { class: "panel type", "data-type": type.event },
      h("h2", {}, code(type.event), type.internal ? [" ", h("small", { text: t("types.internal") })] : null),
      h("p", {}, h("span", { text: type.description[lang] || type.description.en }), pending(lang)),
      h("div", { class: "languages" }, DETAIL_LANGS.map(([l, dir]) => h("figure", { class: "language", "data-lang": l },
        h("figcaption", {}, code(l), pending(l)), h("blockquote", { lang: l, dir, text: type.details[l] || dash })))),
      h("details", {}, h("summary", { text: t("types.example") }),
        h("pre", { dir: "ltr", text: JSON.stringify(examplePayload(type), null, 2) })),
      canWrite() ? sendTestForm(type) : null);
  }));
}

/** "Send a test of this type" to one endpoint (POST /v1/endpoints/{id}/test: ingest makes
 * that endpoint's delivery only, whoever else subscribes to the type). */
function sendTestForm(type) {
  const enabled = state.endpoints.filter((ep) => ep.status === "enabled");
  if (!enabled.length) return h("p", { class: "hint", text: t("types.no_endpoint") });
  const id = `type-ep-${type.event.replace(/[^a-z0-9]/g, "-")}`;
  const select = h("select", { id, name: "endpoint" }, enabled.map((ep) => h("option", { value: ep.id, text: ep.url })));
  return h("form", { class: "inline send-test", onsubmit: (ev) => { ev.preventDefault(); sendTypeTest(type, select.value, ev.submitter); } },
    h("div", { class: "field" }, h("label", { for: id, text: t("types.endpoint") }), select),
    h("button", { type: "submit", "aria-label": t("types.send_label", { type: type.event }), text: t("types.send") }));
}

async function sendTypeTest(type, endpointId, button) {
  const out = await guard(() => call("", "POST", `/v1/endpoints/${encodeURIComponent(endpointId)}/test`,
    { body: { event: type.event, lang: shortLang() } }), { button });
  if (!out) return;
  const ep = state.endpoints.find((x) => x.id === endpointId);
  announce(t("types.sent", { id: out.id, url: ep ? ep.url : endpointId }));
  state.messages = []; // the log shows it next time
}

// -- tokens -----------------------------------------------------------------------------------

async function showTokens() {
  show("tokens");
  state.tokens = []; state.tokensNext = null;
  await guard(() => loadTokens(null));
}

async function loadTokens(after) {
  const page = await call("", "GET", "/v1/tokens", { query: { limit: PAGE, after } });
  state.tokens.push(...page.items);
  state.tokensNext = page.next;
  renderTokens();
}

function renderTokens() {
  const rows = state.tokens.map((tok) => h("tr", { "data-token": tok.id },
    h("th", { scope: "row" }, code(tok.id)),
    h("td", { text: t(`role.${tok.role}`) }),
    h("td", { text: tok.description || dash }),
    h("td", { text: formatTime(tok.created_at) }),
    h("td", { text: tok.revoked_at ? formatTime(tok.revoked_at) : dash }),
    h("td", {}, tok.revoked_at || tok.id === state.me?.token_id ? dash
      : h("button", { type: "button", class: "danger revoke", "aria-label": t("tokens.revoke_label", { id: tok.id }),
        text: t("tokens.revoke"), onclick: (ev) => revokeToken(tok, ev.currentTarget) }))));
  $("tokens-table").tBodies[0].replaceChildren(...rows);
  setHidden($("tokens-more"), !state.tokensNext);
}

async function createToken(event) {
  event.preventDefault();
  const roleName = $("token-role").value;
  const description = $("token-description").value.trim();
  const out = await guard(() => call("", "POST", "/v1/tokens", { body: { role: roleName, ...(description ? { description } : {}) } }),
    { button: event.submitter });
  if (!out) return;
  $("token-description").value = "";
  announce(t("tokens.created", { id: out.id }));
  showSecret(out.token, null, "token");
  state.tokens = []; state.tokensNext = null;
  await guard(() => loadTokens(null));
}

async function revokeToken(tok, button) {
  if (!await confirmAction(t("tokens.revoke_confirm", { id: tok.id }), t("tokens.revoke"))) return;
  const done = await guard(async () => { await call("", "DELETE", `/v1/tokens/${encodeURIComponent(tok.id)}`); return true; }, { button });
  if (!done) return;
  announce(t("tokens.revoked", { id: tok.id }));
  state.tokens = []; state.tokensNext = null;
  await guard(() => loadTokens(null));
}

// -- endpoint form: event filters picked from the catalog ------------------------------------

function renderCatalogChoices() {
  const box = $("ep-catalog-list");
  const chosen = new Set(splitPatterns($("ep-events").value));
  const types = (state.catalog?.items || []).filter((x) => x.event !== TEST_EVENT);
  setHidden($("ep-catalog"), types.length === 0);
  box.replaceChildren(...types.map((x, i) => h("div", { class: "check" },
    h("input", { type: "checkbox", id: `ep-type-${i}`, value: x.event, checked: chosen.has(x.event),
      onchange: (ev) => pickType(x.event, ev.currentTarget.checked) }),
    h("label", { for: `ep-type-${i}` }, code(x.event), " ", h("small", { text: x.description[shortLang()] || x.description.en })))));
}

function pickType(type, on) {
  const current = splitPatterns($("ep-events").value).filter((p) => p !== type);
  if (on) current.push(type);
  $("ep-events").value = current.join(", ");
}

// -- wiring -----------------------------------------------------------------------------------

function rerender() {
  renderChrome();
  if (!state.me) return;
  if (state.view === "empty") showEmpty();
  renderEndpoints();
  renderEndpoint();
  renderTest();
  renderAttempts();
  renderFailed();
  renderAudit();
  renderHealth();
  renderMessages();
  renderEvent();
  renderTokens();
  renderEventTypes();
  if (state.view === "endpoint" && !state.endpoint) $("endpoint-title").textContent = t("app.loading");
}

function wire() {
  $("lang").addEventListener("change", async (e) => {
    const before = language();
    await use(e.target.value);
    rerender();
    if (language() !== before) announce(t("lang.changed"));
  });
  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (!token) {
      $("alert").replaceChildren(h("p", { text: t("signin.empty") }));
      $("alert").hidden = false;
      $("token").focus();
      return;
    }
    const button = e.submitter || $("signin-form").querySelector("[type=submit]");
    await guard(async () => { await signIn(token); $("token").value = ""; }, { button });
  });
  $("signout").addEventListener("click", signOut);
  window.addEventListener("hashchange", () => {
    clearBanners();
    if (location.hash.startsWith("#portal=")) return startPortal(); // a link opened in this tab
    return route();
  });

  $("endpoint-new").addEventListener("click", async () => { await guard(() => loadCatalog()); openEndpointForm(null); });
  $("ep-events").addEventListener("input", () => renderCatalogChoices());
  $("messages-form").addEventListener("submit", (e) => { e.preventDefault(); guard(() => searchMessages(), { button: e.submitter }); });
  $("messages-more").addEventListener("click", (e) => guard(() => searchMessages(true), { button: e.currentTarget }));
  $("token-form").addEventListener("submit", createToken);
  $("tokens-more").addEventListener("click", (e) => guard(() => loadTokens(state.tokensNext), { button: e.currentTarget }));
  $("endpoint-retry-failed").addEventListener("click", (e) => retryFailed(e.currentTarget));
  $("recover-form").addEventListener("submit", recoverSince);
  $("endpoints-more").addEventListener("click", (e) => guard(() => loadEndpoints(state.endpointsNext), { button: e.currentTarget }));
  $("endpoint-form").addEventListener("submit", submitEndpointForm);
  $("tenant-picker").addEventListener("submit", (event) => {
    event.preventDefault();
    state.tenant = $("tenant-pick").value.trim();
    showEndpoints();
  });
  $("endpoint-form").querySelector(".cancel").addEventListener("click", () => $("endpoint-dialog").close());

  $("endpoint-edit").addEventListener("click", async () => { await guard(() => loadCatalog()); openEndpointForm(state.endpoint); });
  $("endpoint-toggle").addEventListener("click", (e) => toggleEndpoint(e.currentTarget));
  $("endpoint-rotate").addEventListener("click", (e) => rotateSecret(e.currentTarget));
  $("endpoint-delete").addEventListener("click", (e) => deleteEndpoint(e.currentTarget));
  $("endpoint-test").addEventListener("click", (e) => sendTest(e.currentTarget));

  $("attempts-form").addEventListener("submit", (e) => { e.preventDefault(); guard(() => loadAttempts(), { button: e.submitter }); });
  $("attempts-more").addEventListener("click", (e) => guard(() => loadAttempts(true), { button: e.currentTarget }));
  $("failed-form").addEventListener("submit", (e) => { e.preventDefault(); guard(() => loadFailed(), { button: e.submitter }); });
  $("failed-more").addEventListener("click", (e) => guard(() => loadFailed(true), { button: e.currentTarget }));

  $("secret-copy").addEventListener("click", copySecret);
  // once means once: the secret leaves the page as the dialog closes (button or Escape)
  $("secret-done").addEventListener("click", () => { $("secret-value").value = ""; $("secret-dialog").close(); });
  $("secret-dialog").addEventListener("close", () => { $("secret-value").value = ""; });

  $("audit-form").addEventListener("submit", (e) => { e.preventDefault(); state.verdict = null; guard(() => searchAudit(), { button: e.submitter }); });
  $("audit-more").addEventListener("click", (e) => guard(() => searchAudit(true), { button: e.currentTarget }));
  $("audit-verify").addEventListener("click", (e) => verifyChain(e.currentTarget));
  $("audit-export-jsonl").addEventListener("click", (e) => exportAudit("jsonl", e.currentTarget));
  $("audit-export-csv").addEventListener("click", (e) => exportAudit("csv", e.currentTarget));
}

// -- portal sessions ----------------------------------------------------------------------------
// A platform opens the console for one of its customers with a link whose fragment holds a
// one-time code (#portal=…): exchanged once for a tenant-scoped session token, then removed from
// the address bar and history. The fragment never reaches a server, so no log holds the code.

const PORTAL_KEY = "dihya.console.portal";

function applyPortal(portal) {
  document.body.classList.add("portal");
  if (portal.accent) document.documentElement.style.setProperty("--accent", portal.accent);
  const brand = document.querySelector(".brand [data-i18n='app.name']");
  if (brand && portal.platform_name) {
    brand.removeAttribute("data-i18n");
    brand.textContent = portal.platform_name;
  }
}

async function openPortal() {
  const match = /^#portal=([A-Za-z0-9_-]{1,128})$/.exec(location.hash);
  if (match) {
    history.replaceState(null, "", location.pathname);
    const opened = await guard(() => call("", "POST", "/v1/portal/exchange",
                                          { token: "", body: { code: match[1] } }));
    if (!opened) return;
    keepToken(opened.token);
    const portal = { platform_name: opened.platform_name, accent: opened.accent,
                     tenant_name: opened.tenant_name };
    sessionStorage.setItem(PORTAL_KEY, JSON.stringify(portal));
    if (opened.lang) { await use(opened.lang); $("lang").value = language(); }
  }
  const kept = sessionStorage.getItem(PORTAL_KEY);
  if (kept) applyPortal(JSON.parse(kept));
}

async function startPortal() {
  await openPortal();
  const token = storedToken();
  if (token) await guard(() => signIn(token));
}

async function start() {
  wire();
  await use(initialLanguage());
  $("lang").value = language();
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    if (response.ok) state.config = await response.json();
  } catch {
    // no config: the audit features stay hidden
  }
  await openPortal();
  const token = storedToken();
  if (token) {
    const ok = await guard(async () => { await signIn(token); return true; });
    if (!ok) { forgetToken(); showSignin(); }
  } else {
    showSignin();
  }
  document.body.dataset.ready = "true";
}

start();
