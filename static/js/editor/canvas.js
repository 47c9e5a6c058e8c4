// Part of the editor page (main.js builds it with the page's shared state `ed`).
import {clone, esc, isObj, num} from "./util.js";
import * as graph from "./graph.js";
import * as nodes from "./nodes.js";

export function createCanvas(ed) {
  // --- drawing ------------------------------------------------------------------------------
  function stepHtml(step) { return nodes.stepHtml(step, ed.cfg.kinds); }
  function triggerHtml(t) { return nodes.triggerHtml(t, ed.cfg.triggerKinds); }
  var triggerKindOf = nodes.triggerKindOf;

  // What Drawflow's DOM depends on: which nodes, their ports and the wires between them.
  function structureKey() {
    var ids = ed.indexById();
    return JSON.stringify({
      steps: ed.model.steps.map(function (s, i) { return [isObj(s) ? s.id : null, ed.portsOf(i)]; }),
      edges: ed.allEdges().map(function (e) { return [ids[e.from], ids[e.to], e.port]; }),
      triggers: ed.model.triggers.length,
      roots: ed.rootIndexes(),
    });
  }

  function busy() {
    return !!(ed.df.drag || ed.df.connection || ed.df.drag_point || ed.df.editor_selected || ed.dragging);
  }

  // Redraw the canvas from the model. Not in the middle of a drag (that would pull the node
  // or the wire from under the pointer): then once the mouse is released. When only what
  // nodes say changed (a config edit), their content is updated in place.
  function render() {
    if (busy()) {
      ed.pendingRender = true;
      return;
    }
    var key = structureKey();
    if (key === ed.lastStructure && ed.canvas.querySelector(".drawflow-node")) {
      ed.pendingRender = false;
      return refreshNodes();
    }
    ed.lastStructure = key;
    ed.rendering = true;
    ed.pendingRender = false;
    var data = {};
    ed.nodeMap = {};
    ed.stepNode = {};
    ed.triggerNode = {};
    var next = 1;
    var place = ed.placement();
    var positions = place.steps;
    ed.model.steps.forEach(function (s, i) {
      var id = next++;
      ed.stepNode[i] = id;
      ed.nodeMap[id] = {type: "step", index: i};
      var outputs = {};
      ed.portsOf(i).forEach(function (_p, k) { outputs["output_" + (k + 1)] = {connections: []}; });
      data[id] = {
        id: id, name: "step", data: {}, class: "sb-node sb-step kind-" + (isObj(s) ? String(s.kind).replace(/[^a-z0-9_-]/gi, "") : "x"),
        html: isObj(s) ? stepHtml(s) : "(not a step)", typenode: false,
        inputs: {input_1: {connections: []}}, outputs: outputs,
        pos_x: positions[i].x, pos_y: positions[i].y,
      };
    });
    var ids = ed.indexById();
    ed.allEdges().forEach(function (e) {
      var a = ids[e.from];
      var b = ids[e.to];
      if (a === undefined || b === undefined || a === b) return;
      var k = ed.portsOf(a).indexOf(e.port);
      if (k < 0) return;
      var out = "output_" + (k + 1);
      var conns = data[ed.stepNode[a]].outputs[out].connections;
      if (conns.some(function (c) { return c.node === String(ed.stepNode[b]); })) return;
      conns.push({node: String(ed.stepNode[b]), output: "input_1"});
      data[ed.stepNode[b]].inputs.input_1.connections.push({node: String(ed.stepNode[a]), input: out});
    });
    var roots = ed.rootIndexes();
    ed.model.triggers.forEach(function (t, i) {
      var id = next++;
      ed.triggerNode[i] = id;
      ed.nodeMap[id] = {type: "trigger", index: i};
      var pos = place.triggers[i];
      data[id] = {
        id: id, name: "trigger", data: {}, class: "sb-node sb-trigger trigger-" + triggerKindOf(t),
        html: triggerHtml(t), typenode: false, inputs: {},
        outputs: {output_1: {connections: roots.map(function (r) {
          return {node: String(ed.stepNode[r]), output: "input_1"};
        })}},
        pos_x: pos.x, pos_y: pos.y,
      };
      roots.forEach(function (r) {
        data[ed.stepNode[r]].inputs.input_1.connections.push({node: String(id), input: "output_1"});
      });
    });
    ed.df.import({drawflow: {Home: {data: data}}});
    // Drawflow remembers the selected DOM node; after a redraw it must be the new one.
    ed.df.node_selected = null;
    ed.df.connection_selected = null;
    decorate();
    // Nodes without a stored place were laid out with estimated sizes; drawn, some are wider
    // (long labels): lay them out again with the sizes they have, so none covers another.
    if (ed.model.steps.some(function (s) { return !graph.storedPosition(s); })) refreshNodes();
    ed.rendering = false;
    var empty = document.getElementById("canvas-empty");
    if (empty) empty.hidden = ed.model.steps.length > 0 || ed.model.triggers.length > 0;
  }

  // Drawflow fires its events in the middle of its own handlers: redraw once they are done.
  function renderSoon() {
    ed.pendingRender = true;
    Promise.resolve().then(function () {
      if (ed.pendingRender && ed.pendingBefore === null) render();
    });
  }

  function refreshNodes() {
    var place = ed.placement();
    ed.model.steps.forEach(function (s, i) {
      var el = nodeEl(ed.stepNode[i]);
      if (!el || !isObj(s)) return;
      el.querySelector(".drawflow_content_node").innerHTML = stepHtml(s);
      moveNode(ed.stepNode[i], place.steps[i]);
    });
    ed.model.triggers.forEach(function (t, i) {
      var el = nodeEl(ed.triggerNode[i]);
      if (!el) return;
      el.querySelector(".drawflow_content_node").innerHTML = triggerHtml(t);
      moveNode(ed.triggerNode[i], place.triggers[i]);
    });
    decorate();
  }

  // A node whose place in the model changed (undo, redo, auto-layout, a reload) goes there.
  function moveNode(id, pos) {
    var node = ed.df.drawflow.drawflow.Home.data[id];
    var el = nodeEl(id);
    if (!node || !el || !pos || (node.pos_x === pos.x && node.pos_y === pos.y)) return;
    node.pos_x = pos.x;
    node.pos_y = pos.y;
    el.style.left = pos.x + "px";
    el.style.top = pos.y + "px";
    ed.df.updateConnectionNodes("node-" + id);
  }

  function nodeEl(id) {
    return document.getElementById("node-" + id);
  }

  function decorate() {
    var stepProblems = (ed.nodeProblems && ed.nodeProblems.steps) || {};
    var triggerProblems = (ed.nodeProblems && ed.nodeProblems.triggers) || {};
    var edgeProblems = (ed.nodeProblems && ed.nodeProblems.edges) || {};
    Object.keys(ed.stepNode).forEach(function (i) {
      var el = nodeEl(ed.stepNode[i]);
      var step = ed.stepAt(Number(i));
      if (!el) return;
      el.dataset.step = step ? step.id : "";
      el.dataset.index = i;
      var ports = ed.portsOf(Number(i));
      nodes.labelPorts(el, ports);
      var input = el.querySelector(".inputs .input");
      if (input) input.title = "input";
      markProblems(el, stepProblems[i]);
      markRun(el, step);
      el.classList.toggle("selected", !!ed.selection && ed.selection.type === "step" && ed.selection.index === Number(i));
      if (el.classList.contains("selected")) ed.df.node_selected = el;
    });
    Object.keys(ed.triggerNode).forEach(function (i) {
      var el = nodeEl(ed.triggerNode[i]);
      if (!el) return;
      el.dataset.trigger = i;
      var out = el.querySelector(".outputs .output");
      if (out) {
        out.dataset.port = "start";
        out.title = "starts every step without incoming edges";
      }
      markProblems(el, triggerProblems[i]);
      el.dataset.runStatus = ed.runView ? "fired" : "";
      el.classList.toggle("selected", !!ed.selection && ed.selection.type === "trigger" && ed.selection.index === Number(i));
      if (el.classList.contains("selected")) ed.df.node_selected = el;
      ed.canvas.querySelectorAll(".connection.node_out_node-" + ed.triggerNode[i]).forEach(function (c) {
        c.classList.add("sb-trigger-edge");
      });
    });
    // Edges: problems, and the ports a shown run took.
    var ids = ed.indexById();
    ed.canvas.querySelectorAll(".connection").forEach(function (c) {
      c.classList.remove("has-problem", "taken");
    });
    (Array.isArray(ed.model.edges) ? ed.model.edges : []).forEach(function (e, k) {
      if (!edgeProblems[k] || !isObj(e)) return;
      var c = connectionEl(ids[e.from], ids[e.to], e.port || "success");
      if (c) c.classList.add("has-problem");
    });
    if (ed.runView) {
      ed.model.steps.forEach(function (s, i) {
        var st = isObj(s) && ed.runView.steps[s.id];
        if (!st || st.status !== "succeeded" || !st.port) return;
        var k = ed.portsOf(i).indexOf(st.port);
        if (k < 0) return;
        ed.canvas.querySelectorAll(".connection.node_out_node-" + ed.stepNode[i] + ".output_" + (k + 1))
          .forEach(function (c) { c.classList.add("taken"); });
      });
    }
    ed.updateProblemsSummary();
    if (ed.minimap) ed.minimap.update();
  }

  function connectionEl(a, b, port) {
    if (a === undefined || b === undefined) return null;
    var k = ed.portsOf(a).indexOf(port);
    if (k < 0) return null;
    return ed.canvas.querySelector(".connection.node_out_node-" + ed.stepNode[a] + ".node_in_node-" +
      ed.stepNode[b] + ".output_" + (k + 1));
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
    if (!ed.runView || !step) {
      el.dataset.runStatus = "";
      if (badge) badge.hidden = true;
      return;
    }
    var st = ed.runView.steps[step.id];
    var finished = ["succeeded", "failed", "cancelled"].indexOf(ed.runView.status) >= 0;
    var shown = st ? st.status : (finished ? "not-run" : "pending");
    el.dataset.runStatus = shown;
    if (badge) {
      badge.hidden = false;
      badge.textContent = shown + (st && st.attempt > 1 ? " #" + st.attempt : "");
      badge.title = st && st.error ? st.error : "";
    }
  }


  return {stepHtml, triggerHtml, structureKey, busy, render, renderSoon, refreshNodes, moveNode, nodeEl, decorate, connectionEl, markProblems, markRun};
}
