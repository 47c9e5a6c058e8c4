// The workflow as a graph, read from the definition (`model`) alone: ports, edges, roots,
// and where nodes go when nobody placed them (the left-to-right layout). Pure functions.
import {isObj, num, unique} from "./util.js";

export const COLUMN_GAP = 110; // room between columns, for the wires
export const ROW_GAP = 50;
export const NODE_WIDTH = 210; // a node's width before its content widens it
const LEFT = 80;
const TOP = 40;

export function stepAt(model, index) {
  const s = model.steps[index];
  return isObj(s) ? s : null;
}

export function portsOf(model, kinds, index) {
  const step = stepAt(model, index);
  if (!step) return ["success", "failure"];
  if (step.kind === "switch") {
    const cases = isObj(step.config) && Array.isArray(step.config.cases) ? step.config.cases : [];
    const names = cases.map(function (c) { return isObj(c) ? c.name : null; })
      .filter(function (n) { return typeof n === "string" && n; });
    return unique(names.concat(["default", "failure"]));
  }
  const kind = kinds[step.kind];
  return kind ? kind.ports.slice() : ["success", "failure"];
}

export function allEdges(model) {
  const out = [];
  model.steps.forEach(function (s) {
    if (!isObj(s) || !Array.isArray(s.after)) return;
    s.after.forEach(function (a) { out.push({from: a, to: s.id, port: "success"}); });
  });
  (Array.isArray(model.edges) ? model.edges : []).forEach(function (e, k) {
    if (isObj(e)) out.push({from: e.from, to: e.to, port: e.port || "success", index: k});
  });
  return out;
}

export function indexById(model) {
  const map = {};
  model.steps.forEach(function (s, i) {
    if (isObj(s) && typeof s.id === "string" && !(s.id in map)) map[s.id] = i;
  });
  return map;
}

export function predecessors(model) {
  const ids = indexById(model);
  const preds = model.steps.map(function () { return []; });
  allEdges(model).forEach(function (e) {
    const a = ids[e.from];
    const b = ids[e.to];
    if (a !== undefined && b !== undefined && a !== b && preds[b].indexOf(a) < 0) preds[b].push(a);
  });
  return preds;
}

export function rootIndexes(model) {
  return predecessors(model).map(function (p, i) { return p.length ? -1 : i; })
    .filter(function (i) { return i >= 0 && stepAt(model, i); });
}

// A node's height before it is drawn: its ports are stacked on its right.
export function estimatedHeight(model, kinds, index) {
  return Math.max(96, 26 * portsOf(model, kinds, index).length + 30);
}

// Columns by longest path from a root (so every wire goes left to right), ordered inside a
// column by the average place of their predecessors (fewer crossings). Columns are as wide
// as their widest node and rows as tall as their nodes: `sizeOf(i)` ({w, h}) is the drawn
// size when the node is on the canvas, so nothing overlaps, labels included.
export function layout(model, sizeOf) {
  const preds = predecessors(model);
  const layer = model.steps.map(function () { return -1; });
  function depth(i, visiting) {
    if (layer[i] >= 0) return layer[i];
    if (visiting[i]) return 0; // a cycle: the server reports it, the layout just stops
    visiting[i] = true;
    let d = 0;
    preds[i].forEach(function (p) { d = Math.max(d, depth(p, visiting) + 1); });
    visiting[i] = false;
    layer[i] = d;
    return d;
  }
  model.steps.forEach(function (_s, i) { depth(i, {}); });
  const columns = {};
  layer.forEach(function (l, i) { (columns[l] = columns[l] || []).push(i); });
  const pos = {};
  function centre(i) {
    if (!preds[i].length) return i * 1000;
    let sum = 0;
    preds[i].forEach(function (p) { sum += pos[p] ? pos[p].y + sizeOf(p).h / 2 : 0; });
    return sum / preds[i].length;
  }
  let x = LEFT + NODE_WIDTH + COLUMN_GAP; // the triggers' column comes first
  Object.keys(columns).map(Number).sort(function (a, b) { return a - b; }).forEach(function (l) {
    const column = columns[l];
    column.sort(function (a, b) { return centre(a) - centre(b) || a - b; });
    let y = TOP;
    let widest = NODE_WIDTH;
    column.forEach(function (i) {
      const size = sizeOf(i);
      pos[i] = {x: x, y: y};
      y += size.h + ROW_GAP;
      widest = Math.max(widest, size.w);
    });
    x += widest + COLUMN_GAP;
  });
  return pos;
}

// Where a trigger without a stored position goes: left of the steps a run starts with.
export function triggerPosition(model, index, stepPositions) {
  const xs = rootIndexes(model).map(function (i) { return stepPositions[i].x; });
  const x = (xs.length ? Math.min.apply(null, xs) : LEFT + NODE_WIDTH + COLUMN_GAP) -
    NODE_WIDTH - COLUMN_GAP;
  return {x: Math.max(x, -2000), y: TOP + index * 130};
}

export function storedPosition(item) {
  if (!isObj(item) || !isObj(item.position) || typeof item.position.x !== "number") return null;
  return {x: num(item.position.x, 0), y: num(item.position.y, 0)};
}

// Where every node goes: its stored position, else where the layout puts it.
export function placement(model, sizeOf) {
  let laid = null;
  const steps = {};
  model.steps.forEach(function (s, i) {
    const stored = storedPosition(s);
    if (stored) {
      steps[i] = stored;
    } else {
      laid = laid || layout(model, sizeOf);
      steps[i] = laid[i] || {x: LEFT + NODE_WIDTH + COLUMN_GAP, y: TOP + i * 140};
    }
  });
  const triggers = {};
  model.triggers.forEach(function (t, i) {
    triggers[i] = storedPosition(t) || triggerPosition(model, i, steps);
  });
  return {steps: steps, triggers: triggers};
}
