// Small inline SVG charts drawn here, by hand: no charting library and nothing fetched (the
// page's Content-Security-Policy allows none). Colours come from style.css classes, so the
// dark theme and the forced-colours mode apply; each chart is an image with a text label.

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

/** Sum several endpoints' hours (same 24 hour starts, oldest first) into one series. */
export function addHours(series) {
  const out = new Map();
  for (const hours of series) {
    for (const h of hours || []) {
      const slot = out.get(h.hour) || { hour: h.hour, delivered: 0, failed: 0 };
      slot.delivered += h.delivered;
      slot.failed += h.failed;
      out.set(h.hour, slot);
    }
  }
  return [...out.values()].sort((a, b) => (a.hour < b.hour ? -1 : a.hour > b.hour ? 1 : 0));
}

/** Stacked bars of attempts per hour: delivered at the bottom, failed on top.
 * ``hours``: [{hour, delivered, failed}], oldest first. The time axis runs left to right in
 * every language (the svg is ``dir="ltr"``), as the hours under it are read. */
export function hourlyBars(hours, { width = 240, height = 48, label = "", titles = null } = {}) {
  const svg = el("svg", {
    viewBox: `0 0 ${width} ${height}`, width, height, role: "img", class: "bars", dir: "ltr",
    "aria-label": label, focusable: "false",
  });
  const title = el("title");
  title.textContent = label;
  svg.append(title);
  const n = Math.max(hours.length, 1);
  const top = Math.max(1, ...hours.map((h) => h.delivered + h.failed));
  const slot = width / n;
  const bar = Math.max(1, slot - 1);
  svg.append(el("line", { x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5, class: "axis" }));
  hours.forEach((h, i) => {
    const x = i * slot;
    const ok = (h.delivered / top) * (height - 2);
    const bad = (h.failed / top) * (height - 2);
    const group = el("g", { "data-hour": h.hour, "data-delivered": h.delivered, "data-failed": h.failed });
    if (titles) {
      const tip = el("title");
      tip.textContent = titles(h);
      group.append(tip);
    }
    if (ok > 0) group.append(el("rect", { x, y: height - 1 - ok, width: bar, height: ok, class: "ok" }));
    if (bad > 0) group.append(el("rect", { x, y: height - 1 - ok - bad, width: bar, height: bad, class: "bad" }));
    svg.append(group);
  });
  return svg;
}
