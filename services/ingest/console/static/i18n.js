// The console's messages in en, fr, ar and Tamazight: one flat JSON catalog per language in
// locales/, the same keys in each (a test checks it). A key missing from a catalog falls back
// to English, then to the key itself, so a gap shows rather than breaks the page.
// Tamazight comes in two scripts: Latin ("tzm", the default, as the integration guide writes
// it: "Yettwarna template amaynut") and Tifinagh ("tzm-Tfng", Morocco's standard).

export const LANGS = ["en", "fr", "ar", "tzm", "tzm-Tfng"];
const RTL = new Set(["ar"]);
/** Languages whose catalogs await a native speaker's review: the page says so beside the picker. */
const UNREVIEWED = new Set(["ar", "tzm", "tzm-Tfng"]);
const STORE_KEY = "dihya.console.lang";
const ALIASES = { zgh: "tzm-Tfng", ber: "tzm", kab: "tzm", shy: "tzm" };
/** The BCP 47 tag of each choice, for <html lang> (the script said, as screen readers and
 * fonts need). */
const TAGS = { tzm: "tzm-Latn", "tzm-Tfng": "tzm-Tfng" };

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
    const parts = tag.toLowerCase().split("-");
    const base = parts[0];
    if ((base === "tzm" || base === "zgh") && parts.includes("tfng")) return "tzm-Tfng";
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
  document.documentElement.lang = TAGS[lang] || lang;
  document.documentElement.dir = RTL.has(lang) ? "rtl" : "ltr";
  const review = document.getElementById("lang-review");
  if (review) review.hidden = !UNREVIEWED.has(lang);
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

/** ``key`` in every language of an event's ``details`` (fr, en, ar, tzm); the Tamazight one
 * in the script the page uses (Latin unless Tifinagh was chosen). */
export async function everyLanguage(key) {
  const out = {};
  for (const lang of ["fr", "en", "ar", "tzm"]) {
    const source = lang === "tzm" && current === "tzm-Tfng" ? "tzm-Tfng" : lang;
    out[lang] = (await load(source))[key] ?? (await load("en"))[key];
  }
  return out;
}

/** Fill every [data-i18n] element's text (and [data-i18n-label]'s aria-label) under ``root``. */
export function translate(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  }
}

/** Intl formatting: Latin digits for Arabic (as in Morocco). Tamazight has no date and
 * number formats of its own in the browser's data: it used to fall back to the US format
 * (month first, AM/PM); it now takes Morocco's French formats (day first, 24 hours), whose
 * short forms are numeric. */
function locale() {
  return { ar: "ar-MA-u-nu-latn", tzm: "fr-MA", "tzm-Tfng": "fr-MA" }[current] || current;
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
