// Small helpers shared by the editor's modules (static/js/editor/).
export function isObj(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}
export function clone(v) {
  return JSON.parse(JSON.stringify(v));
}
export function esc(text) {
  return String(text == null ? "" : text).replace(/[&<>"']/g, function (c) {
    return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
  });
}
export function num(v, fallback) {
  return typeof v === "number" && isFinite(v) ? v : fallback;
}
export function unique(list) {
  return list.filter(function (v, i) { return list.indexOf(v) === i; });
}
