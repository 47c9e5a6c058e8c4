// What a node shows: its kind's icon and title, its id, a one-line summary of its config,
// and room for its problem and run badges. Colour comes from its kind (editor.css,
// `kind-<name>` / `trigger-<kind>`), so kinds are told apart by colour and by icon.
import {esc, isObj} from "./util.js";

const SUMMARY = 60;

function summary(step) {
  const c = isObj(step.config) ? step.config : {};
  switch (step.kind) {
    case "http_request": return (c.method || "POST") + " " + (c.url || "(no URL)");
    case "log": case "fail": return c.message || "";
    case "condition": case "filter": return c.expression || "(no expression)";
    case "for_each": return "items: " + (c.items || "");
    case "delay": return c.seconds != null ? c.seconds + " s" : (c.until || "");
    case "wait_for_event": return c.event || "";
    case "sub_workflow": return c.workflow || "";
    case "emit_event": return c.type || "";
    case "send_email": return c.subject || "";
    case "python": return c.function || "";
    case "switch": return (Array.isArray(c.cases) ? c.cases.length : 0) + " case(s)";
    default: return "";
  }
}

function shorten(text) {
  return text.length > SUMMARY ? text.slice(0, SUMMARY - 1) + "…" : text;
}

function icon(svg) {
  return '<span class="sb-icon">' + (svg || "") + "</span>";
}

export function kindClass(step) {
  return "kind-" + (isObj(step) ? String(step.kind).replace(/[^a-z0-9_-]/gi, "") : "x");
}

export function stepHtml(step, kinds) {
  const kind = kinds[step.kind];
  const text = summary(step);
  const title = step.name || step.id || "(no id)";
  return '<div class="sb-head">' + icon(kind && kind.svg) +
    '<span class="sb-title" title="' + esc(title) + '">' + esc(title) + "</span></div>" +
    '<div class="sb-sub"><code>' + esc(step.id) + "</code> · " +
    esc(kind ? kind.title : "unknown kind " + step.kind) + "</div>" +
    (text ? '<div class="sb-summary">' + esc(shorten(text)) + "</div>" : "") +
    '<div class="sb-badges"><span class="sb-problems" hidden></span><span class="sb-status" hidden></span></div>';
}

export function triggerKindOf(t) {
  if (!isObj(t)) return "event";
  return ["event", "webhook", "schedule", "manual"].filter(function (k) { return k in t; })[0] || "event";
}

export function triggerHtml(t, triggerKinds) {
  const kind = triggerKindOf(t);
  const info = triggerKinds[kind] || {};
  const text = kind === "event" ? (t.event || "(no type)") + (t.filter ? " if " + t.filter : "")
    : kind === "webhook" ? "/hooks/" + (t.webhook || "?")
    : kind === "schedule" ? (t.schedule || "?") + " " + (t.timezone || "UTC")
    : "by hand";
  return '<div class="sb-head">' + icon(info.svg) + '<span class="sb-title">' + esc(info.title || kind) +
    " trigger</span></div>" +
    '<div class="sb-summary">' + esc(shorten(text)) + "</div>" +
    '<div class="sb-badges"><span class="sb-problems" hidden></span></div>';
}

// Port labels are real elements inside the node, left of their handle, and the node's
// content keeps room for the widest: a label is never cut nor hidden under a neighbour.
export function labelPorts(el, ports) {
  let widest = 0;
  el.querySelectorAll(".outputs .output").forEach(function (out, k) {
    const name = ports[k] || "";
    out.dataset.port = name;
    out.title = "port " + name + ": drag to another step's input";
    out.classList.toggle("port-failure", name === "failure");
    let label = out.querySelector(".sb-port-label");
    if (!label) {
      label = document.createElement("span");
      label.className = "sb-port-label";
      out.appendChild(label);
    }
    label.textContent = name;
    widest = Math.max(widest, label.offsetWidth);
  });
  el.style.setProperty("--ports-width", widest + "px");
}
