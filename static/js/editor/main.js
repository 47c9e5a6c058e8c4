/*
 * The visual workflow editor (templates/dashboard/editor.html).
 *
 * This file owns the definition being edited (`model`: the same JSON the API stores);
 * Drawflow only draws it. Every edit changes the model, pushes an undo entry, redraws the
 * canvas from the model and autosaves the draft (valid or not). The server answers each
 * save with the problems of the draft, placed on the nodes they concern.
 *
 * Panels (a node's config form, versions, publish, try, import/export) are server-rendered
 * htmx partials. Requests that need the definition get the model added as the `definition`
 * parameter, so a panel always shows what is on the canvas. A form never writes the draft
 * itself: the server reads it and answers with an `editor:apply` event carrying the new
 * step, trigger or settings, which this file applies like any other edit.
 *
 * Triggers are drawn as nodes with one output, wired to every step without incoming edges
 * (the steps a run starts with); those wires follow from the steps and cannot be edited.
 * Every node keeps its place in the definition: `steps[].position`, `triggers[].position`.
 * A node without one is placed by the layout (a trigger left of the steps it starts).
 *
 * Runs show on the canvas through the editor's WebSocket (/ws/workflows/<slug>/editor/):
 * JSON frames with the latest runs, and the statuses of the run being watched.
 *
 * Two people may edit the same draft. The page holds the draft revision its canvas is
 * based on (`draftRevision`) and sends it with every write; a write based on an older
 * revision is refused (409), and so is, proactively, a canvas that hears over the socket
 * that someone else saved. Then saving pauses (no retries) and a banner offers Reload (the
 * stored draft replaces the canvas; Undo brings the local version back) or Overwrite (save
 * again with `force`). Viewers have nothing to lose: their canvas just follows the draft.
 */
import * as graph from "./graph.js";
import {createMinimap} from "./minimap.js";
import * as nodes from "./nodes.js";
import {freeSpot} from "./spots.js";
import {clone, esc, isObj, num} from "./util.js";

// A module cannot return early at its top: the page is set up in start().
function start() {

  var root = document.getElementById("editor-root");
  if (!root || typeof Drawflow === "undefined") return;

  var cfg = JSON.parse(document.getElementById("editor-config").textContent);
  var canEdit = !!cfg.canEdit;
  var canvas = document.getElementById("editor-canvas");
  var sidePanel = document.getElementById("side-panel");
  var MAX_HISTORY = 100;
  var NEW_NODE_WIDTH = 260; // room for a node not drawn yet: its content and port labels

  var model = normalize(cfg.draft);
  var nodeProblems = cfg.nodes || {};
  var allProblems = cfg.problems || [];
  var past = [];
  var future = [];
  var pendingBefore = null;
  var pendingRender = false;
  var pendingRefresh = false;
  var wantPanel = false;
  var revision = 0;
  var savedRevision = 0;
  var selection = null; // {type: "step" | "trigger", index}
  var nodeMap = {}; // Drawflow node id -> {type, index}
  var stepNode = {}; // step index -> Drawflow node id
  var triggerNode = {}; // trigger index -> Drawflow node id
  var rendering = false;
  var lastStructure = null;
  var runView = null; // the run shown on the canvas: {id, status, origin, steps}
  var latestRuns = null;
  var knownRuns = null;
  var lastField = null;
  var draftRevision = num(cfg.draftRevision, 0); // the stored revision the canvas is based on
  var conflict = null; // {revision, by, at}: someone else saved; saving waits for the person
  var clientId = Math.random().toString(36).slice(2) + Date.now().toString(36);
  var writes = 0; // draft writes of this page awaiting their answer
  var remoteLater = null; // a revision heard of while a write was out, judged once it is back

  // --- small helpers ----------------------------------------------------------------------
  function normalize(raw) {
    var out = isObj(raw) ? clone(raw) : {};
    if (typeof out.name !== "string") out.name = cfg.slug;
    if (!Array.isArray(out.triggers)) out.triggers = [];
    if (!Array.isArray(out.steps)) out.steps = [];
    return out;
  }
  function stepAt(index) {
    var s = model.steps[index];
    return isObj(s) ? s : null;
  }
  function notice(text, kind) {
    var el = document.getElementById("editor-notice");
    if (!el) {
      el = document.createElement("div");
      el.id = "editor-notice";
      el.setAttribute("role", "status");
      root.querySelector(".canvas-wrap").appendChild(el);
    }
    el.className = "editor-notice " + (kind || "");
    el.textContent = text;
    el.hidden = false;
    clearTimeout(notice.timer);
    notice.timer = setTimeout(function () { el.hidden = true; }, 6000);
  }

  // --- the graph (graph.js), over this page's model -----------------------------------------
  function portsOf(index) { return graph.portsOf(model, cfg.kinds, index); }
  function allEdges() { return graph.allEdges(model); }
  function indexById() { return graph.indexById(model); }
  function rootIndexes() { return graph.rootIndexes(model); }
  function layout() { return graph.layout(model, sizeOf); }
  function triggerPosition(index, stepPositions) { return graph.triggerPosition(model, index, stepPositions); }
  function placement() { return graph.placement(model, sizeOf); }

  // A step's size as drawn (labels and all), or as it will be before it is.
  function sizeOf(index) {
    var el = nodeEl(stepNode[index]);
    if (el && el.offsetWidth) return {w: el.offsetWidth, h: el.offsetHeight};
    return {w: graph.NODE_WIDTH, h: graph.estimatedHeight(model, cfg.kinds, index)};
  }

  // --- drawing ------------------------------------------------------------------------------
  function stepHtml(step) { return nodes.stepHtml(step, cfg.kinds); }
  function triggerHtml(t) { return nodes.triggerHtml(t, cfg.triggerKinds); }
  var triggerKindOf = nodes.triggerKindOf;

  // What Drawflow's DOM depends on: which nodes, their ports and the wires between them.
  function structureKey() {
    var ids = indexById();
    return JSON.stringify({
      steps: model.steps.map(function (s, i) { return [isObj(s) ? s.id : null, portsOf(i)]; }),
      edges: allEdges().map(function (e) { return [ids[e.from], ids[e.to], e.port]; }),
      triggers: model.triggers.length,
      roots: rootIndexes(),
    });
  }

  function busy() {
    return !!(df.drag || df.connection || df.drag_point || df.editor_selected || dragging);
  }

  // Redraw the canvas from the model. Not in the middle of a drag (that would pull the node
  // or the wire from under the pointer): then once the mouse is released. When only what
  // nodes say changed (a config edit), their content is updated in place.
  function render() {
    if (busy()) {
      pendingRender = true;
      return;
    }
    var key = structureKey();
    if (key === lastStructure && canvas.querySelector(".drawflow-node")) {
      pendingRender = false;
      return refreshNodes();
    }
    lastStructure = key;
    rendering = true;
    pendingRender = false;
    var data = {};
    nodeMap = {};
    stepNode = {};
    triggerNode = {};
    var next = 1;
    var place = placement();
    var positions = place.steps;
    model.steps.forEach(function (s, i) {
      var id = next++;
      stepNode[i] = id;
      nodeMap[id] = {type: "step", index: i};
      var outputs = {};
      portsOf(i).forEach(function (_p, k) { outputs["output_" + (k + 1)] = {connections: []}; });
      data[id] = {
        id: id, name: "step", data: {}, class: "sb-node sb-step kind-" + (isObj(s) ? String(s.kind).replace(/[^a-z0-9_-]/gi, "") : "x"),
        html: isObj(s) ? stepHtml(s) : "(not a step)", typenode: false,
        inputs: {input_1: {connections: []}}, outputs: outputs,
        pos_x: positions[i].x, pos_y: positions[i].y,
      };
    });
    var ids = indexById();
    allEdges().forEach(function (e) {
      var a = ids[e.from];
      var b = ids[e.to];
      if (a === undefined || b === undefined || a === b) return;
      var k = portsOf(a).indexOf(e.port);
      if (k < 0) return;
      var out = "output_" + (k + 1);
      var conns = data[stepNode[a]].outputs[out].connections;
      if (conns.some(function (c) { return c.node === String(stepNode[b]); })) return;
      conns.push({node: String(stepNode[b]), output: "input_1"});
      data[stepNode[b]].inputs.input_1.connections.push({node: String(stepNode[a]), input: out});
    });
    var roots = rootIndexes();
    model.triggers.forEach(function (t, i) {
      var id = next++;
      triggerNode[i] = id;
      nodeMap[id] = {type: "trigger", index: i};
      var pos = place.triggers[i];
      data[id] = {
        id: id, name: "trigger", data: {}, class: "sb-node sb-trigger trigger-" + triggerKindOf(t),
        html: triggerHtml(t), typenode: false, inputs: {},
        outputs: {output_1: {connections: roots.map(function (r) {
          return {node: String(stepNode[r]), output: "input_1"};
        })}},
        pos_x: pos.x, pos_y: pos.y,
      };
      roots.forEach(function (r) {
        data[stepNode[r]].inputs.input_1.connections.push({node: String(id), input: "output_1"});
      });
    });
    df.import({drawflow: {Home: {data: data}}});
    // Drawflow remembers the selected DOM node; after a redraw it must be the new one.
    df.node_selected = null;
    df.connection_selected = null;
    decorate();
    rendering = false;
    var empty = document.getElementById("canvas-empty");
    if (empty) empty.hidden = model.steps.length > 0 || model.triggers.length > 0;
  }

  // Drawflow fires its events in the middle of its own handlers: redraw once they are done.
  function renderSoon() {
    pendingRender = true;
    Promise.resolve().then(function () {
      if (pendingRender && pendingBefore === null) render();
    });
  }

  function refreshNodes() {
    var place = placement();
    model.steps.forEach(function (s, i) {
      var el = nodeEl(stepNode[i]);
      if (!el || !isObj(s)) return;
      el.querySelector(".drawflow_content_node").innerHTML = stepHtml(s);
      moveNode(stepNode[i], place.steps[i]);
    });
    model.triggers.forEach(function (t, i) {
      var el = nodeEl(triggerNode[i]);
      if (!el) return;
      el.querySelector(".drawflow_content_node").innerHTML = triggerHtml(t);
      moveNode(triggerNode[i], place.triggers[i]);
    });
    decorate();
  }

  // A node whose place in the model changed (undo, redo, auto-layout, a reload) goes there.
  function moveNode(id, pos) {
    var node = df.drawflow.drawflow.Home.data[id];
    var el = nodeEl(id);
    if (!node || !el || !pos || (node.pos_x === pos.x && node.pos_y === pos.y)) return;
    node.pos_x = pos.x;
    node.pos_y = pos.y;
    el.style.left = pos.x + "px";
    el.style.top = pos.y + "px";
    df.updateConnectionNodes("node-" + id);
  }

  function nodeEl(id) {
    return document.getElementById("node-" + id);
  }

  function decorate() {
    var stepProblems = (nodeProblems && nodeProblems.steps) || {};
    var triggerProblems = (nodeProblems && nodeProblems.triggers) || {};
    var edgeProblems = (nodeProblems && nodeProblems.edges) || {};
    Object.keys(stepNode).forEach(function (i) {
      var el = nodeEl(stepNode[i]);
      var step = stepAt(Number(i));
      if (!el) return;
      el.dataset.step = step ? step.id : "";
      el.dataset.index = i;
      var ports = portsOf(Number(i));
      nodes.labelPorts(el, ports);
      var input = el.querySelector(".inputs .input");
      if (input) input.title = "input";
      markProblems(el, stepProblems[i]);
      markRun(el, step);
      el.classList.toggle("selected", !!selection && selection.type === "step" && selection.index === Number(i));
      if (el.classList.contains("selected")) df.node_selected = el;
    });
    Object.keys(triggerNode).forEach(function (i) {
      var el = nodeEl(triggerNode[i]);
      if (!el) return;
      el.dataset.trigger = i;
      var out = el.querySelector(".outputs .output");
      if (out) {
        out.dataset.port = "start";
        out.title = "starts every step without incoming edges";
      }
      markProblems(el, triggerProblems[i]);
      el.dataset.runStatus = runView ? "fired" : "";
      el.classList.toggle("selected", !!selection && selection.type === "trigger" && selection.index === Number(i));
      if (el.classList.contains("selected")) df.node_selected = el;
      canvas.querySelectorAll(".connection.node_out_node-" + triggerNode[i]).forEach(function (c) {
        c.classList.add("sb-trigger-edge");
      });
    });
    // Edges: problems, and the ports a shown run took.
    var ids = indexById();
    canvas.querySelectorAll(".connection").forEach(function (c) {
      c.classList.remove("has-problem", "taken");
    });
    (Array.isArray(model.edges) ? model.edges : []).forEach(function (e, k) {
      if (!edgeProblems[k] || !isObj(e)) return;
      var c = connectionEl(ids[e.from], ids[e.to], e.port || "success");
      if (c) c.classList.add("has-problem");
    });
    if (runView) {
      model.steps.forEach(function (s, i) {
        var st = isObj(s) && runView.steps[s.id];
        if (!st || st.status !== "succeeded" || !st.port) return;
        var k = portsOf(i).indexOf(st.port);
        if (k < 0) return;
        canvas.querySelectorAll(".connection.node_out_node-" + stepNode[i] + ".output_" + (k + 1))
          .forEach(function (c) { c.classList.add("taken"); });
      });
    }
    updateProblemsSummary();
    if (minimap) minimap.update();
  }

  function connectionEl(a, b, port) {
    if (a === undefined || b === undefined) return null;
    var k = portsOf(a).indexOf(port);
    if (k < 0) return null;
    return canvas.querySelector(".connection.node_out_node-" + stepNode[a] + ".node_in_node-" +
      stepNode[b] + ".output_" + (k + 1));
  }

  function markProblems(el, messages) {
    var badge = el.querySelector(".sb-problems");
    var has = !!(messages && messages.length);
    el.classList.toggle("has-problems", has);
    el.dataset.problems = has ? messages.length : 0;
    if (badge) {
      badge.hidden = !has;
      badge.textContent = has ? "⚠ " + messages.length : "";
      badge.title = has ? messages.join("\n") : "";
    }
  }

  function markRun(el, step) {
    var badge = el.querySelector(".sb-status");
    if (!runView || !step) {
      el.dataset.runStatus = "";
      if (badge) badge.hidden = true;
      return;
    }
    var st = runView.steps[step.id];
    var finished = ["succeeded", "failed", "cancelled"].indexOf(runView.status) >= 0;
    var status = st ? st.status : (finished ? "not-run" : "pending");
    el.dataset.runStatus = status;
    if (badge) {
      badge.hidden = false;
      badge.textContent = status + (st && st.attempt > 1 ? " #" + st.attempt : "");
      badge.title = st && st.error ? st.error : "";
    }
  }

  // --- editing ------------------------------------------------------------------------------
  // Every edit goes through change(): edits made while one user action is handled (Drawflow
  // removing a node fires one event per wire, then one for the node) become one undo entry.
  function change(mutate, opts) {
    if (!canEdit) return false;
    opts = opts || {};
    var before = JSON.stringify(model);
    mutate();
    if (JSON.stringify(model) === before) return false;
    revision++;
    if (opts.render !== false) pendingRender = true;
    // The open panel lists what its node can read (upstream steps): a change made on the
    // canvas may change that; a change made by the panel's own form must not reload it.
    if (opts.render !== false && !opts.fromForm) pendingRefresh = true;
    if (pendingBefore === null) {
      pendingBefore = before;
      Promise.resolve().then(commit);
    }
    return true;
  }

  function commit() {
    if (pendingBefore === null) return;
    past.push(pendingBefore);
    if (past.length > MAX_HISTORY) past.shift();
    future = [];
    pendingBefore = null;
    if (pendingRender) render();
    updateHistoryButtons();
    scheduleSave();
    var panel = sidePanel.querySelector(".panel");
    if (pendingRefresh && panel && panel.id === "node-panel") wantPanel = true;
    pendingRefresh = false;
    flushPanel();
  }

  function replaceModel(next) {
    model = normalize(next);
    revision++;
    if (selection) {
      var list = selection.type === "step" ? model.steps : model.triggers;
      if (selection.index >= list.length) selection = null;
    }
    render();
    updateHistoryButtons();
    scheduleSave();
    refreshPanel();
  }

  function undo() {
    commit();
    if (!past.length) return;
    future.push(JSON.stringify(model));
    replaceModel(JSON.parse(past.pop()));
  }

  function redo() {
    commit();
    if (!future.length) return;
    past.push(JSON.stringify(model));
    replaceModel(JSON.parse(future.pop()));
  }

  function updateHistoryButtons() {
    var u = root.querySelector('[data-action="undo"]');
    var r = root.querySelector('[data-action="redo"]');
    if (u) u.disabled = !past.length && pendingBefore === null;
    if (r) r.disabled = !future.length;
  }

  function uniqueId(base) {
    base = String(base).toLowerCase().replace(/[^a-z0-9_-]/g, "_").replace(/^[^a-z]+/, "") || "step";
    var taken = indexById();
    if (!(base in taken)) return base;
    for (var n = 2; ; n++) {
      if (!((base + "_" + n) in taken)) return base + "_" + n;
    }
  }

  function addStep(kind, point) {
    var id = uniqueId(kind);
    change(function () {
      model.steps.push({id: id, kind: kind, config: {},
        position: {x: Math.round(point.x), y: Math.round(point.y)}});
    });
    select({type: "step", index: model.steps.length - 1});
  }

  function addTrigger(kind, point) {
    var template = cfg.triggerKinds[kind] && cfg.triggerKinds[kind].template;
    if (!template) return;
    change(function () {
      var trigger = clone(template);
      trigger.position = {x: Math.round(point.x), y: Math.round(point.y)};
      model.triggers.push(trigger);
    });
    select({type: "trigger", index: model.triggers.length - 1});
  }

  function addEdge(from, to, port) {
    var ids = indexById();
    var target = stepAt(ids[to]);
    if (!target) return;
    var exists = allEdges().some(function (e) { return e.from === from && e.to === to && e.port === port; });
    if (exists) return;
    if (port === "success") {
      target.after = (Array.isArray(target.after) ? target.after : []).concat([from]);
    } else {
      if (!Array.isArray(model.edges)) model.edges = [];
      model.edges.push({from: from, to: to, port: port});
    }
  }

  function removeEdge(from, to, port) {
    var ids = indexById();
    var target = stepAt(ids[to]);
    if (target && port === "success" && Array.isArray(target.after)) {
      target.after = target.after.filter(function (a) { return a !== from; });
      if (!target.after.length) delete target.after;
    }
    if (Array.isArray(model.edges)) {
      model.edges = model.edges.filter(function (e) {
        return !(isObj(e) && e.from === from && e.to === to && (e.port || "success") === port);
      });
      if (!model.edges.length) delete model.edges;
    }
  }

  function deleteStep(index) {
    var step = stepAt(index);
    model.steps.splice(index, 1);
    if (step) {
      model.steps.forEach(function (s) {
        if (isObj(s) && Array.isArray(s.after)) {
          s.after = s.after.filter(function (a) { return a !== step.id; });
          if (!s.after.length) delete s.after;
        }
      });
      if (Array.isArray(model.edges)) {
        model.edges = model.edges.filter(function (e) {
          return !(isObj(e) && (e.from === step.id || e.to === step.id));
        });
        if (!model.edges.length) delete model.edges;
      }
    }
    shiftSelection("step", index);
  }

  function deleteTrigger(index) {
    model.triggers.splice(index, 1);
    shiftSelection("trigger", index);
  }

  function shiftSelection(type, index) {
    if (!selection || selection.type !== type) return;
    if (selection.index === index) {
      selection = null;
      showHelp();
    } else if (selection.index > index) {
      selection.index -= 1;
    }
  }

  function renameRefs(oldId, newId) {
    model.steps.forEach(function (s) {
      if (isObj(s) && Array.isArray(s.after)) {
        s.after = s.after.map(function (a) { return a === oldId ? newId : a; });
      }
    });
    (Array.isArray(model.edges) ? model.edges : []).forEach(function (e) {
      if (!isObj(e)) return;
      if (e.from === oldId) e.from = newId;
      if (e.to === oldId) e.to = newId;
    });
  }

  function autoLayout() {
    var pos = layout();
    change(function () {
      model.steps.forEach(function (s, i) {
        if (isObj(s) && pos[i]) s.position = {x: pos[i].x, y: pos[i].y};
      });
      model.triggers.forEach(function (t, i) {
        if (isObj(t)) t.position = triggerPosition(i, pos);
      });
    });
    Promise.resolve().then(function () { Promise.resolve().then(fitView); });
  }

  // Show every node: zoom out if needed (never in beyond 100%), then move the view so the
  // top-left node sits near the corner.
  function fitView() {
    var nodes = df.drawflow.drawflow.Home.data;
    var ids = Object.keys(nodes);
    if (!ids.length) return;
    var minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
    ids.forEach(function (id) {
      var n = nodes[id];
      var el = nodeEl(id);
      minX = Math.min(minX, n.pos_x);
      minY = Math.min(minY, n.pos_y);
      maxX = Math.max(maxX, n.pos_x + (el ? el.offsetWidth : 210) + 70);
      maxY = Math.max(maxY, n.pos_y + (el ? el.offsetHeight : 100));
    });
    var w = canvas.clientWidth;
    var h = canvas.clientHeight;
    // Room at the top for the run banner.
    var z = Math.max(df.zoom_min, Math.min(1, (w - 60) / (maxX - minX), (h - 90) / (maxY - minY)));
    var cx = df.precanvas.clientWidth / 2;
    var cy = df.precanvas.clientHeight / 2;
    df.zoom = z;
    df.zoom_last_value = z;
    df.canvas_x = 30 - cx - (minX - cx) * z;
    df.canvas_y = 60 - cy - (minY - cy) * z;
    df.precanvas.style.transform = "translate(" + df.canvas_x + "px, " + df.canvas_y + "px) scale(" + z + ")";
    var label = document.getElementById("zoom-level");
    if (label) label.textContent = Math.round(z * 100) + "%";
    if (minimap) minimap.update();
  }

  function deleteSelection() {
    if (!canEdit) return;
    if (df.connection_selected) {
      df.removeConnection();
    } else if (df.node_selected && document.contains(df.node_selected)) {
      df.removeNodeId(df.node_selected.id);
    } else {
      notice("Select a node or an edge first.");
    }
  }

  // --- Drawflow ---------------------------------------------------------------------------
  var df = new Drawflow(canvas);
  df.curvature = 0.4;
  df.zoom_min = 0.3;
  df.zoom_max = 1.6;
  df.editor_mode = canEdit ? "edit" : "view";
  df.start();

  df.on("nodeMoved", function (id) {
    var info = nodeMap[id];
    var node = df.drawflow.drawflow.Home.data[id];
    if (!info || !node) return;
    // Drawflow 0.0.60 records pos_x/pos_y one mouse move off the place it draws the node
    // at (it subtracts the last move twice): keep the drawn place, which is what was seen.
    var el = nodeEl(id);
    var x = el ? num(parseFloat(el.style.left), node.pos_x) : node.pos_x;
    var y = el ? num(parseFloat(el.style.top), node.pos_y) : node.pos_y;
    node.pos_x = x;
    node.pos_y = y;
    change(function () {
      var moved = info.type === "trigger" ? model.triggers[info.index] : stepAt(info.index);
      if (isObj(moved)) moved.position = {x: Math.round(x), y: Math.round(y)};
    }, {render: false});
  });

  df.on("connectionCreated", function (c) {
    if (rendering) return;
    var src = nodeMap[c.output_id];
    var dst = nodeMap[c.input_id];
    if (!src || !dst || dst.type !== "step") return renderSoon();
    if (src.type === "trigger") {
      notice("A trigger starts every step that has no incoming edge; this one starts after the steps wired into it.");
      return renderSoon();
    }
    var port = portsOf(src.index)[parseInt(c.output_class.split("_")[1], 10) - 1];
    var from = stepAt(src.index).id;
    var to = stepAt(dst.index).id;
    if (!change(function () { addEdge(from, to, port); })) renderSoon();
  });

  df.on("connectionRemoved", function (c) {
    if (rendering) return;
    var src = nodeMap[c.output_id];
    var dst = nodeMap[c.input_id];
    if (!src || !dst || dst.type !== "step") return;
    if (src.type === "trigger") {
      // Derived from the steps: it comes back unless its step now has incoming edges.
      return renderSoon();
    }
    var port = portsOf(src.index)[parseInt(c.output_class.split("_")[1], 10) - 1];
    var from = stepAt(src.index) && stepAt(src.index).id;
    var to = stepAt(dst.index) && stepAt(dst.index).id;
    change(function () { removeEdge(from, to, port); });
  });

  df.on("nodeRemoved", function (id) {
    if (rendering) return;
    var info = nodeMap[id];
    if (!info) return;
    delete nodeMap[id];
    change(function () {
      if (info.type === "step") deleteStep(info.index);
      else deleteTrigger(info.index);
    });
  });

  var minimap = createMinimap({
    wrap: root.querySelector(".canvas-wrap"),
    nodeBoxes: nodeBoxes,
    viewBox: function () { return viewBox(0); },
    centreOn: centreOn,
  });
  ["translate", "nodeMoved", "zoom"].forEach(function (name) { df.on(name, minimap.update); });

  df.on("zoom", function (z) {
    var label = document.getElementById("zoom-level");
    if (label) label.textContent = Math.round(z * 100) + "%";
  });

  // A click (not a drag) on a node selects it and opens its panel.
  var downAt = null;
  canvas.addEventListener("mousedown", function (e) { downAt = {x: e.clientX, y: e.clientY}; }, true);
  canvas.addEventListener("click", function (e) {
    if (downAt && Math.abs(e.clientX - downAt.x) + Math.abs(e.clientY - downAt.y) > 4) return;
    if (e.target.closest(".output, .input")) return;
    var el = e.target.closest(".drawflow-node");
    if (!el) return;
    var info = nodeMap[el.id.slice(5)];
    if (info) select({type: info.type, index: info.index});
  });

  function select(info) {
    selection = info;
    wantPanel = true;
    Promise.resolve().then(flushPanel);
  }

  // Open the selected node's panel once the edits of this moment are committed.
  function flushPanel() {
    if (pendingBefore !== null || !wantPanel) return;
    wantPanel = false;
    decorate();
    if (selection) openNode();
  }

  // --- panels -----------------------------------------------------------------------------
  var definitionPaths = ["step", "stepApply", "trigger", "triggerApply", "settings",
    "settingsApply", "publish", "try"].map(function (k) { return cfg.urls[k]; });

  var writePaths = ["publish", "try", "import"].map(function (k) { return cfg.urls[k]; });

  function isDraftWrite(detail) {
    var path = String((detail.requestConfig || detail).path || "").split("?")[0];
    var verb = String((detail.requestConfig || detail).verb || "").toLowerCase();
    return verb === "post" && (writePaths.indexOf(path) >= 0 || /\/versions\/\d+\/restore$/.test(path));
  }

  document.body.addEventListener("htmx:configRequest", function (e) {
    var path = String(e.detail.path || "").split("?")[0];
    if (e.detail.verb === "post" && definitionPaths.indexOf(path) >= 0) {
      e.detail.parameters["definition"] = JSON.stringify(model);
    }
    // What a panel that writes the draft (publish, try, restore, import) is based on.
    e.detail.headers["X-Draft-Revision"] = String(draftRevision);
    e.detail.headers["X-Editor-Client"] = clientId;
  });
  document.body.addEventListener("htmx:beforeRequest", function (e) {
    if (isDraftWrite(e.detail)) writes++;
  });
  document.body.addEventListener("htmx:afterRequest", function (e) {
    if (!isDraftWrite(e.detail)) return;
    writes = Math.max(0, writes - 1);
    judgeRemote();
  });
  // A panel refused because the draft changed answers 409 with the panel saying so.
  document.body.addEventListener("htmx:beforeSwap", function (e) {
    if (e.detail.xhr && e.detail.xhr.status === 409) {
      e.detail.shouldSwap = true;
      e.detail.isError = false;
    }
  });
  document.body.addEventListener("editor:conflict", function (e) {
    var d = e.detail || {};
    onConflict({revision: d.revision, by: d.saved_by, at: d.saved_at});
  });
  document.body.addEventListener("editor:draft", function (e) {
    if (typeof e.detail.revision === "number") draftRevision = e.detail.revision;
  });

  // Publish, try, restore and import act on the stored draft: save what is pending first.
  document.body.addEventListener("htmx:confirm", function (e) {
    var elt = e.detail.elt;
    if (!elt || !elt.closest || !elt.closest("[data-flush-first]") || saveIdle()) return;
    e.preventDefault();
    flushSave().then(function () { e.detail.issueRequest(false); });
  });

  // A config form posts what was typed after a pause; before its panel is replaced, what it
  // still holds is sent and its answer applied (the answer's event must reach the page
  // while the form is in it).
  var formDirty = false;
  var formBusy = 0;
  var idleWaiters = [];

  function isPanelForm(elt) {
    return !!(elt && elt.matches && elt.matches("#node-form, #settings-form"));
  }
  ["input", "change"].forEach(function (type) {
    sidePanel.addEventListener(type, function (e) {
      if (e.target.closest && e.target.closest("#node-form, #settings-form")) formDirty = true;
    });
  });
  document.body.addEventListener("htmx:beforeRequest", function (e) {
    if (!isPanelForm(e.detail.elt)) return;
    formDirty = false;
    formBusy++;
  });
  document.body.addEventListener("htmx:afterRequest", function (e) {
    if (!isPanelForm(e.detail.elt)) return;
    formBusy = Math.max(0, formBusy - 1);
    if (!formBusy) idleWaiters.splice(0).forEach(function (resolve) { resolve(); });
  });

  function settleForms() {
    var form = sidePanel.querySelector("#node-form[hx-post], #settings-form[hx-post]");
    if (form && formDirty) htmx.trigger(form, "change");
    if (!formBusy) {
      formDirty = false;
      return Promise.resolve();
    }
    return new Promise(function (resolve) {
      idleWaiters.push(resolve);
      setTimeout(resolve, 5000); // never wait forever on a lost answer
    });
  }

  function panelRequest(verb, url, values) {
    return settleForms().then(function () {
      return htmx.ajax(verb, url, {source: sidePanel, target: "#side-panel", swap: "innerHTML", values: values || {}});
    });
  }

  function openNode() {
    if (!selection) return showHelp();
    if (selection.type === "step") {
      var step = stepAt(selection.index);
      if (runView && step) {
        return panelRequest("GET", cfg.urls.runStep + runView.id + "/" + encodeURIComponent(step.id));
      }
      return panelRequest("POST", cfg.urls.step, {index: selection.index});
    }
    return panelRequest("POST", cfg.urls.trigger, {index: selection.index});
  }

  function openConfig() {
    if (!selection) return showHelp();
    return panelRequest("POST", selection.type === "step" ? cfg.urls.step : cfg.urls.trigger,
      {index: selection.index});
  }

  function refreshPanel() {
    var current = sidePanel.querySelector(".panel");
    if (!current) return;
    if (current.id === "node-panel") {
      openNode();
    } else if (current.id === "settings-panel") {
      panelRequest("POST", cfg.urls.settings);
    }
  }

  function showHelp() {
    var panel = sidePanel.querySelector(".panel");
    if (panel && panel.id === "help-panel") return;
    settleForms().then(function () {
      htmx.swap(sidePanel, helpHtml, {swapStyle: "innerHTML"});
    });
  }
  var helpHtml = sidePanel.innerHTML;

  function openPanel(name) {
    selection = null;
    decorate();
    var verb = name === "settings" ? "POST" : "GET";
    return panelRequest(verb, cfg.urls[name]);
  }

  root.querySelectorAll("[data-panel]").forEach(function (button) {
    button.addEventListener("click", function () { openPanel(button.dataset.panel); });
  });

  document.body.addEventListener("editor:apply", function (e) {
    var d = e.detail || {};
    if (d.what === "step") {
      var current = stepAt(d.index);
      if (!current || current.id !== d.id) return; // the canvas moved on meanwhile
      change(function () {
        var next = clone(d.step);
        // Position and wiring belong to the canvas, which may have changed meanwhile.
        if (current.position) next.position = current.position; else delete next.position;
        if (current.after) next.after = current.after; else delete next.after;
        model.steps[d.index] = next;
        if (d.renamed) renameRefs(d.renamed[0], d.renamed[1]);
      }, {fromForm: true});
    } else if (d.what === "trigger") {
      if (d.index >= model.triggers.length) return;
      change(function () {
        var was = model.triggers[d.index];
        var trigger = clone(d.trigger);
        // Its place belongs to the canvas, which may have moved it meanwhile.
        if (isObj(was) && was.position) trigger.position = was.position; else delete trigger.position;
        model.triggers[d.index] = trigger;
      }, {fromForm: true});
    } else if (d.what === "workflow") {
      change(function () {
        Object.keys(d.settings || {}).forEach(function (key) {
          var value = d.settings[key];
          if (value === null || value === undefined) delete model[key];
          else model[key] = value;
        });
      }, {render: false, fromForm: true});
      var title = document.getElementById("editor-title");
      if (title && model.name) title.textContent = model.name;
    }
  });

  document.body.addEventListener("editor:reload", function (e) {
    var d = e.detail || {};
    commit();
    past.push(JSON.stringify(model));
    future = [];
    selection = null;
    model = normalize(d.definition);
    revision++;
    if (typeof d.draftRevision === "number") draftRevision = d.draftRevision;
    clearConflict();
    if (d.nodes) nodeProblems = d.nodes;
    if (d.problems) allProblems = d.problems;
    render();
    updateHistoryButtons();
    scheduleSave();
    var title = document.getElementById("editor-title");
    if (title && model.name) title.textContent = model.name;
    if (d.message) notice(d.message, "ok");
  });

  document.body.addEventListener("editor:published", function (e) {
    var label = document.getElementById("editor-version");
    if (label) label.textContent = "live: v" + e.detail.version;
    notice("Published v" + e.detail.version + ".", "ok");
  });

  document.body.addEventListener("editor:show-run", function (e) {
    showRun(e.detail.run, e.detail.origin);
  });

  sidePanel.addEventListener("focusin", function (e) {
    if (e.target.matches("input[type=text], textarea")) lastField = e.target;
  });

  sidePanel.addEventListener("click", function (e) {
    var variable = e.target.closest(".var");
    if (variable) return insertVariable(variable.dataset.insert);
    var pick = e.target.closest(".run-pick");
    if (pick) return showRun(Number(pick.dataset.run));
    if (e.target.closest('[data-action="edit-node"]')) return openConfig();
    var problem = e.target.closest("[data-problem-node]");
    if (problem) return selectFromProblem(problem.dataset.problemNode);
  });

  sidePanel.addEventListener("change", function (e) {
    if (e.target.id === "follow-runs") follow = e.target.checked;
  });

  function insertVariable(path) {
    var field = lastField && document.contains(lastField) ? lastField : sidePanel.querySelector("#node-form textarea, #node-form input[type=text]");
    if (!field || field.disabled) return notice("Click into a field first, then on a variable.");
    var expression = !!field.closest(".field-expression");
    var text = expression ? path : "{{ " + path + " }}";
    var start = field.selectionStart == null ? field.value.length : field.selectionStart;
    var end = field.selectionEnd == null ? start : field.selectionEnd;
    field.value = field.value.slice(0, start) + text + field.value.slice(end);
    field.focus();
    field.setSelectionRange(start + text.length, start + text.length);
    field.dispatchEvent(new Event("input", {bubbles: true}));
  }

  // --- problems ---------------------------------------------------------------------------
  var problemsToggle = document.getElementById("problems-toggle");
  var problemsList = document.getElementById("problems-list");

  function updateProblemsSummary() {
    var n = allProblems.length;
    problemsToggle.dataset.count = n;
    problemsToggle.textContent = n ? n + (n === 1 ? " problem" : " problems") : "No problems";
    problemsList.innerHTML = n ? "<h3>The draft cannot be published yet</h3><ul>" + allProblems.map(function (p) {
      var m = /^\/(steps|triggers)\/(\d+)/.exec(p.path);
      var label = p.path;
      if (m && m[1] === "steps" && stepAt(Number(m[2]))) label = "step " + stepAt(Number(m[2])).id + p.path.slice(m[0].length);
      if (m && m[1] === "triggers") label = "trigger " + (Number(m[2]) + 1) + p.path.slice(m[0].length);
      return "<li>" + (m ? '<button type="button" class="link" data-problem-node="' + m[1] + ":" + m[2] + '">' + esc(label) + "</button>" : "<code>" + esc(label) + "</code>") +
        " " + esc(p.message) + "</li>";
    }).join("") + "</ul>" : "<p>No problems: the draft can be published.</p>";
  }

  problemsToggle.addEventListener("click", function () {
    problemsList.hidden = !problemsList.hidden;
    problemsToggle.setAttribute("aria-expanded", String(!problemsList.hidden));
  });
  problemsList.addEventListener("click", function (e) {
    var b = e.target.closest("[data-problem-node]");
    if (b) selectFromProblem(b.dataset.problemNode);
  });

  function selectFromProblem(ref) {
    var parts = ref.split(":");
    select({type: parts[0] === "steps" ? "step" : "trigger", index: Number(parts[1])});
  }

  // --- autosave ---------------------------------------------------------------------------
  var saveTimer = null;
  var saving = null;
  var lastSaveFailed = false;
  var status = document.getElementById("save-status");

  function setStatus(state, text) {
    if (!status) return;
    status.dataset.state = state;
    status.textContent = text;
  }

  function saveIdle() {
    return !canEdit || (!saveTimer && !saving && savedRevision === revision);
  }

  function scheduleSave() {
    if (!canEdit) return;
    if (conflict) return setStatus("conflict", "Not saved: " + whoOf(conflict) + " changed the draft");
    setStatus("dirty", "Unsaved changes…");
    clearTimeout(saveTimer);
    saveTimer = setTimeout(saveNow, 500);
  }

  // `force` (only from the conflict banner's Overwrite) saves over someone else's revision.
  function saveNow(force) {
    force = force === true;
    clearTimeout(saveTimer);
    saveTimer = null;
    if (saving) return saving;
    // While the draft is someone else's newer revision, nothing is saved over it unasked.
    if (conflict && !force) return Promise.resolve();
    var rev = revision;
    setStatus("saving", force ? "Overwriting…" : "Saving…");
    writes++;
    saving = fetch(cfg.urls.save, {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": cfg.csrf},
      body: JSON.stringify({definition: model, revision: rev, baseRevision: draftRevision,
        force: force, client: clientId}),
    }).then(function (response) {
      return response.json().then(function (body) {
        if (response.status === 409) {
          var refused = new Error(body.detail || "changed by someone else");
          refused.conflict = {revision: body.revision, by: body.saved_by, at: body.saved_at};
          throw refused;
        }
        if (!response.ok) throw new Error(body.error || "HTTP " + response.status);
        return body;
      });
    }).then(function (body) {
      lastSaveFailed = false;
      savedRevision = rev;
      draftRevision = body.draftRevision;
      if (force) {
        var over = conflict;
        clearConflict();
        if (over) notice("Saved: your version replaced " + whoOf(over) + "'s.", "ok");
      }
      if (rev === revision) {
        nodeProblems = body.nodes;
        allProblems = body.problems;
        decorate();
        var time = new Date(body.savedAt).toLocaleTimeString();
        setStatus("saved", "Draft saved " + time + (allProblems.length ? " · not publishable yet" : ""));
      }
    }).catch(function (err) {
      lastSaveFailed = true;
      // A conflict is for the person to settle: retrying would only be refused again.
      if (err.conflict) return onConflict(err.conflict);
      setStatus("error", "Not saved: " + err.message + " (trying again)");
      saveTimer = setTimeout(saveNow, 3000);
    }).then(function () {
      saving = null;
      writes--;
      judgeRemote();
      if (!lastSaveFailed && !conflict && savedRevision !== revision && !saveTimer) saveNow();
    });
    return saving;
  }

  function flushSave() {
    if (conflict || saveIdle()) return Promise.resolve();
    var pending = saving || saveNow();
    return pending.then(function () {
      return lastSaveFailed || conflict || saveIdle() ? null : flushSave();
    });
  }

  // --- someone else saved the draft ---------------------------------------------------------
  var conflictBanner = document.getElementById("conflict-banner");

  function whoOf(info) {
    return (info && info.by) || "Someone";
  }

  function clock(iso) {
    var d = new Date(iso);
    return isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", hourCycle: "h23"});
  }

  function onConflict(info) {
    if (!canEdit) return;
    if (conflict && info.revision < conflict.revision) return;
    conflict = info;
    clearTimeout(saveTimer);
    saveTimer = null;
    var at = clock(info.at);
    document.getElementById("conflict-message").textContent = whoOf(info) + " changed this workflow" +
      (at ? " at " + at : "") + ". Reload to see their version, or overwrite with yours.";
    conflictBanner.dataset.revision = info.revision;
    conflictBanner.hidden = false;
    setStatus("conflict", saveIdle() ? whoOf(info) + " changed the draft" : "Not saved: " + whoOf(info) + " changed the draft");
  }

  function clearConflict() {
    conflict = null;
    if (conflictBanner) conflictBanner.hidden = true;
  }

  // A revision someone else saved (heard over the socket): the next save would be refused,
  // so say so now. Never judged while a write of this page is out: it may be our own.
  function onDraftFrame(frame) {
    if (frame.client && frame.client === clientId) return;
    if (!(frame.revision > draftRevision)) return;
    if (writes > 0) {
      remoteLater = frame;
      return;
    }
    if (!canEdit) return reloadDraft();
    onConflict({revision: frame.revision, by: frame.by, at: frame.at});
  }

  function judgeRemote() {
    if (writes > 0 || !remoteLater) return;
    var frame = remoteLater;
    remoteLater = null;
    onDraftFrame(frame);
  }

  // Reload: the stored draft replaces the canvas (an undo entry keeps the local version).
  function reloadDraft() {
    return (saving || Promise.resolve()).then(function () {
      return fetch(cfg.urls.save, {credentials: "same-origin", headers: {Accept: "application/json"}});
    }).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.json();
    }).then(function (body) {
      commit();
      clearTimeout(saveTimer);
      saveTimer = null;
      if (canEdit) {
        past.push(JSON.stringify(model));
        if (past.length > MAX_HISTORY) past.shift();
        future = [];
      }
      model = normalize(body.definition);
      revision++;
      savedRevision = revision;
      draftRevision = body.revision;
      lastSaveFailed = false;
      clearConflict();
      nodeProblems = body.nodes;
      allProblems = body.problems;
      if (selection) {
        var list = selection.type === "step" ? model.steps : model.triggers;
        if (selection.index >= list.length) selection = null;
      }
      render();
      updateHistoryButtons();
      refreshPanel();
      var title = document.getElementById("editor-title");
      if (title && model.name) title.textContent = model.name;
      if (canEdit) {
        setStatus("saved", "Draft saved" + (body.savedBy ? " by " + body.savedBy : "") + " " + clock(body.savedAt));
      }
    }).catch(function (err) {
      notice("Could not load the draft: " + err.message);
    });
  }

  if (conflictBanner) {
    document.getElementById("conflict-reload").addEventListener("click", function () { reloadDraft(); });
    document.getElementById("conflict-overwrite").addEventListener("click", function () {
      commit();
      (saving || Promise.resolve()).then(function () { saveNow(true); });
    });
  }

  window.addEventListener("beforeunload", function (e) {
    if (!saveIdle()) {
      saveNow();
      e.preventDefault();
      e.returnValue = "";
    }
  });

  // --- the palette: drag a kind onto the canvas ------------------------------------------
  function canvasPoint(clientX, clientY) {
    var rect = df.precanvas.getBoundingClientRect();
    return {x: (clientX - rect.left) / df.zoom, y: (clientY - rect.top) / df.zoom};
  }

  // A new node goes where it was dropped, or as near as there is room: inside the part of
  // the canvas in view, clear of every node and of what covers the canvas (spots.js).
  function addFromPalette(item, point) {
    var kind = item.dataset.paletteKind;
    var ports = kind ? (cfg.kinds[kind] ? cfg.kinds[kind].ports.length : 2) : 1;
    var size = {w: NEW_NODE_WIDTH, h: Math.max(96, 26 * ports + 30)};
    var spot = freeSpot({x: point.x - 100, y: point.y - 30}, size, nodeBoxes(), coveredBoxes(), viewBox(8));
    if (kind) addStep(kind, spot);
    else addTrigger(item.dataset.paletteTrigger, spot);
    Promise.resolve().then(function () { Promise.resolve().then(showNode); });
  }

  // The node just added, when it could only go outside the view: the view moves to it.
  function showNode() {
    var el = canvas.querySelector(".drawflow-node.selected");
    if (!el) return;
    var view = viewBox(0);
    var x = parseFloat(el.style.left);
    var y = parseFloat(el.style.top);
    if (x + el.offsetWidth > view.x + view.w || y + el.offsetHeight > view.y + view.h) {
      centreOn({x: x + el.offsetWidth / 2, y: y + el.offsetHeight / 2});
    }
  }

  function centrePoint() {
    var rect = canvas.getBoundingClientRect();
    return canvasPoint(rect.left + rect.width / 2, rect.top + rect.height / 3);
  }

  // Boxes in canvas pixels: the nodes drawn, what covers the canvas, the part in view.
  function nodeBoxes() {
    var data = df.drawflow.drawflow.Home.data;
    return Object.keys(data).map(function (id) {
      var el = nodeEl(id);
      var info = nodeMap[id];
      var kind = info && info.type === "step" ? nodes.kindClass(stepAt(info.index))
        : "trigger-" + triggerKindOf(info ? model.triggers[info.index] : null);
      return {id: id, x: data[id].pos_x, y: data[id].pos_y, w: el ? el.offsetWidth : 210,
        h: el ? el.offsetHeight : 96, kind: kind};
    });
  }

  function coveredBoxes() {
    var covers = ["#problems-list", "#run-banner", "#editor-minimap", "#editor-notice", "#conflict-banner"];
    return covers.map(function (sel) { return document.querySelector(sel); })
      .filter(function (el) { return el && !el.hidden && el.offsetWidth; })
      .map(function (el) {
        var r = el.getBoundingClientRect();
        var a = canvasPoint(r.left, r.top);
        var b = canvasPoint(r.right, r.bottom);
        return {x: a.x, y: a.y, w: b.x - a.x, h: b.y - a.y};
      });
  }

  function viewBox(inset) {
    var r = canvas.getBoundingClientRect();
    var a = canvasPoint(r.left + inset, r.top + inset);
    var b = canvasPoint(r.right - inset, r.bottom - inset);
    return {x: a.x, y: a.y, w: b.x - a.x, h: b.y - a.y};
  }

  // Move the view (not the zoom) so that `point` (canvas pixels) is in its middle.
  function centreOn(point) {
    var r = canvas.getBoundingClientRect();
    var here = canvasPoint(r.left + r.width / 2, r.top + r.height / 2);
    df.canvas_x -= (point.x - here.x) * df.zoom;
    df.canvas_y -= (point.y - here.y) * df.zoom;
    df.precanvas.style.transform = "translate(" + df.canvas_x + "px, " + df.canvas_y + "px) scale(" + df.zoom + ")";
    if (minimap) minimap.update();
  }

  var dragging = null;
  root.querySelectorAll(".palette-item").forEach(function (item) {
    item.addEventListener("mousedown", function (e) {
      if (e.button !== 0) return;
      e.preventDefault();
      var ghost = item.cloneNode(true);
      ghost.classList.add("palette-ghost");
      ghost.style.left = e.clientX + "px";
      ghost.style.top = e.clientY + "px";
      document.body.appendChild(ghost);
      dragging = {item: item, ghost: ghost};
      root.classList.add("dragging-kind");
    });
    item.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        addFromPalette(item, centrePoint());
      }
    });
  });
  document.addEventListener("mousemove", function (e) {
    if (!dragging) return;
    dragging.ghost.style.left = e.clientX + "px";
    dragging.ghost.style.top = e.clientY + "px";
  });
  // A redraw put off while something was being dragged happens once it is dropped.
  document.addEventListener("mouseup", function () {
    setTimeout(function () { if (pendingRender && pendingBefore === null) render(); }, 0);
  });
  document.addEventListener("mouseup", function (e) {
    if (!dragging) return;
    var drag = dragging;
    dragging = null;
    drag.ghost.remove();
    root.classList.remove("dragging-kind");
    var rect = canvas.getBoundingClientRect();
    if (e.clientX >= rect.left && e.clientX <= rect.right && e.clientY >= rect.top && e.clientY <= rect.bottom) {
      addFromPalette(drag.item, canvasPoint(e.clientX, e.clientY));
    }
  });

  var search = document.getElementById("palette-search");
  if (search) {
    search.addEventListener("input", function () {
      var terms = search.value.toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0;
      root.querySelectorAll(".palette-group").forEach(function (group) {
        var visible = 0;
        group.querySelectorAll(".palette-item").forEach(function (item) {
          var hit = terms.every(function (t) { return item.dataset.search.indexOf(t) >= 0; });
          item.hidden = !hit;
          if (hit) visible++;
        });
        group.hidden = !visible;
        shown += visible;
      });
      root.querySelector(".palette-empty").hidden = shown > 0;
    });
  }

  // --- the toolbar and the keyboard -------------------------------------------------------
  var actions = {
    "undo": undo,
    "redo": redo,
    "delete": deleteSelection,
    "layout": autoLayout,
    "zoom-in": function () { df.zoom_in(); },
    "zoom-out": function () { df.zoom_out(); },
    "zoom-reset": function () { df.zoom_reset(); },
    "fit": fitView,
  };
  root.querySelectorAll(".editor-toolbar [data-action]").forEach(function (button) {
    button.addEventListener("click", function () { actions[button.dataset.action](); });
  });

  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (t && (t.matches("input, textarea, select") || t.isContentEditable)) return;
    var key = e.key.toLowerCase();
    if ((e.ctrlKey || e.metaKey) && key === "z") {
      e.preventDefault();
      return e.shiftKey ? redo() : undo();
    }
    if ((e.ctrlKey || e.metaKey) && key === "y") {
      e.preventDefault();
      return redo();
    }
    // Drawflow handles Delete itself while the canvas has the focus.
    if (e.key === "Delete" && !canvas.contains(t)) deleteSelection();
  });

  document.querySelectorAll("[data-flush-first-link]").forEach(function (a) {
    a.addEventListener("click", function (e) {
      if (saveIdle()) return;
      e.preventDefault();
      flushSave().then(function () { window.location.href = a.href; });
    });
  });
  document.body.addEventListener("htmx:afterSwap", function () {
    sidePanel.querySelectorAll("[data-flush-first-link]").forEach(function (a) {
      if (a.dataset.bound) return;
      a.dataset.bound = "1";
      a.addEventListener("click", function (e) {
        if (saveIdle()) return;
        e.preventDefault();
        flushSave().then(function () { window.location.href = a.href; });
      });
    });
    renderRunList();
  });

  // --- runs on the canvas -----------------------------------------------------------------
  var socket = null;
  var retries = 0;
  var follow = true;
  var live = document.getElementById("editor-live");
  var banner = document.getElementById("run-banner");

  function setLive(state, text) {
    live.dataset.state = state;
    live.textContent = text;
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(scheme + "//" + location.host + "/ws/workflows/" + encodeURIComponent(cfg.slug) + "/editor/");
    setLive("connecting", "connecting…");
    socket.onopen = function () {
      retries = 0;
      setLive("open", "live");
      // Saves made while the socket was away are heard of in the answer.
      socket.send(JSON.stringify({draft: draftRevision}));
      if (runView) socket.send(JSON.stringify({watch: runView.id}));
    };
    socket.onmessage = function (e) {
      var frame = JSON.parse(e.data);
      if (frame.type === "runs") onRuns(frame.runs);
      else if (frame.type === "run") onRun(frame);
      else if (frame.type === "draft") onDraftFrame(frame);
    };
    socket.onclose = function (e) {
      if (e.code === 4401 || e.code === 4403) return setLive("closed", "not allowed");
      setLive("closed", "reconnecting…");
      setTimeout(connect, Math.min(10000, 500 * Math.pow(2, retries++)));
    };
  }

  function onRuns(runs) {
    latestRuns = runs;
    var fresh = runs.filter(function (r) { return knownRuns && !knownRuns[r.id]; });
    knownRuns = knownRuns || {};
    runs.forEach(function (r) { knownRuns[r.id] = true; });
    renderRunList();
    var panelOpen = !!document.getElementById("runs-panel");
    if (fresh.length && follow && panelOpen) showRun(fresh[0].id);
  }

  function renderRunList() {
    var list = document.getElementById("editor-run-list");
    if (!list || !latestRuns) return;
    list.innerHTML = latestRuns.length ? latestRuns.map(function (r) {
      return '<li><button type="button" class="run-pick' + (runView && runView.id === r.id ? " current" : "") +
        '" data-run="' + r.id + '" data-status="' + esc(r.status) + '">#' + r.id +
        ' <span class="status status-' + esc(r.status) + '">' + esc(r.status) + "</span>" +
        ' <span class="muted small">' + (r.origin === "try" ? "try" : "v" + esc(r.version)) + "</span></button></li>";
    }).join("") : '<li class="muted small empty">No runs yet. Send an event of a trigger\'s type, or use <em>Try it</em>.</li>';
    var box = document.getElementById("follow-runs");
    if (box) box.checked = follow;
  }

  function showRun(id) {
    runView = {id: id, status: "queued", origin: "", steps: {}};
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({watch: id}));
    root.classList.add("showing-run");
    updateBanner();
    decorate();
    renderRunList();
  }

  function onRun(frame) {
    if (!runView || frame.id !== runView.id) return;
    runView = frame;
    updateBanner();
    decorate();
    var panel = document.getElementById("run-step-panel");
    if (panel && Number(panel.dataset.run) === frame.id) {
      var st = frame.steps[panel.dataset.step];
      var shown = document.getElementById("run-step-status");
      if (st && (!shown || shown.textContent.trim() !== st.status)) openNode();
    }
  }

  function clearRun() {
    runView = null;
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({watch: null}));
    root.classList.remove("showing-run");
    banner.hidden = true;
    decorate();
    renderRunList();
  }

  function updateBanner() {
    banner.hidden = false;
    banner.dataset.status = runView.status;
    banner.innerHTML = "Showing run <a href=\"/runs/" + runView.id + "/\">#" + runView.id + "</a>" +
      (runView.origin === "try" ? " (a try of the draft)" : runView.version ? " of v" + esc(runView.version) : "") +
      ': <span class="status status-' + esc(runView.status) + '" id="run-banner-status">' + esc(runView.status) + "</span>" +
      (runView.error ? ' <span class="error small">' + esc(runView.error) + "</span>" : "") +
      ' <button type="button" id="run-banner-close">Back to editing</button>';
    document.getElementById("run-banner-close").addEventListener("click", clearRun);
  }

  // --- start ------------------------------------------------------------------------------
  render();
  fitView();
  updateHistoryButtons();
  if (canEdit) setStatus("saved", cfg.savedBy ? "Draft saved by " + cfg.savedBy : "Draft saved");
  connect();
}

start();
