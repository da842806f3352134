// The console's messages in en, fr, ar and tzm: one flat JSON catalog per language in
// locales/, the same keys in each (a test checks it). A key missing from a catalog falls back
// to English, then to the key itself, so a gap shows rather than breaks the page.

export const LANGS = ["en", "fr", "ar", "tzm"];
const RTL = new Set(["ar"]);
const STORE_KEY = "dihya.console.lang";
const ALIASES = { zgh: "tzm", ber: "tzm" };

const catalogs = new Map();
let current = "en";

async function load(lang) {
  if (!catalogs.has(lang)) {
    const response = await fetch(`locales/${lang}.json`, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`locale ${lang}: HTTP ${response.status}`);
    catalogs.set(lang, await response.json());
  }
  return catalogs.get(lang);
}

/** The language to start with: the one chosen before, else the browser's, else English. */
export function initialLanguage() {
  const saved = localStorage.getItem(STORE_KEY);
  if (LANGS.includes(saved)) return saved;
  for (const tag of navigator.languages || []) {
    const base = tag.toLowerCase().split("-")[0];
    const lang = ALIASES[base] || base;
    if (LANGS.includes(lang)) return lang;
  }
  return "en";
}

export function language() {
  return current;
}

/** Switch to ``lang``: load its catalog, set <html lang dir>, translate the static text. */
export async function use(lang) {
  if (!LANGS.includes(lang)) lang = "en";
  await Promise.all([load("en"), load(lang)]);
  current = lang;
  localStorage.setItem(STORE_KEY, lang);
  document.documentElement.lang = lang;
  document.documentElement.dir = RTL.has(lang) ? "rtl" : "ltr";
  translate(document);
}

/** The message ``key`` with ``{name}`` placeholders filled from ``params``. */
export function t(key, params = {}) {
  const template = catalogs.get(current)?.[key] ?? catalogs.get("en")?.[key] ?? key;
  // in a right-to-left language, each value (an id, a URL, an error in English) is a
  // bidi isolate, so its punctuation stays where it belongs
  const [open, close] = RTL.has(current) ? ["\u2068", "\u2069"] : ["", ""];
  return template.replace(/\{(\w+)\}/g, (whole, name) =>
    Object.hasOwn(params, name) ? `${open}${params[name]}${close}` : whole);
}

/** ``key`` in every language (the test event carries its details in all four). */
export async function everyLanguage(key) {
  const out = {};
  for (const lang of LANGS) out[lang] = (await load(lang))[key] ?? (await load("en"))[key];
  return out;
}

/** Fill every [data-i18n] element's text (and [data-i18n-label]'s aria-label) under ``root``. */
export function translate(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  }
}

/** Intl formatting: Latin digits for Arabic (as in Morocco); unknown tags fall back. */
function locale() {
  return { ar: "ar-MA-u-nu-latn", tzm: "tzm" }[current] || current;
}

export function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  try {
    return new Intl.DateTimeFormat(locale(), { dateStyle: "short", timeStyle: "medium" }).format(date);
  } catch {
    return date.toISOString();
  }
}

export function formatNumber(value, digits = 1) {
  try {
    return new Intl.NumberFormat(locale(), { maximumFractionDigits: digits }).format(value);
  } catch {
    return String(value);
  }
}
