// Part of the editor page (main.js builds it with the page's shared state `ed`).
import {clone, esc, isObj, num} from "./util.js";
import * as graph from "./graph.js";
import * as nodes from "./nodes.js";

export function createEditing(ed) {
  // --- editing ------------------------------------------------------------------------------
  // Every edit goes through change(): edits made while one user action is handled (Drawflow
  // removing a node fires one event per wire, then one for the node) become one undo entry.
  function change(mutate, opts) {
    if (!ed.canEdit) return false;
    opts = opts || {};
    var before = JSON.stringify(ed.model);
    mutate();
    if (JSON.stringify(ed.model) === before) return false;
    ed.revision++;
    if (opts.render !== false) ed.pendingRender = true;
    // The open panel lists what its node can read (upstream steps): a change made on the
    // canvas may change that; a change made by the panel's own form must not reload it.
    if (opts.render !== false && !opts.fromForm) ed.pendingRefresh = true;
    if (ed.pendingBefore === null) {
      ed.pendingBefore = before;
      Promise.resolve().then(commit);
    }
    return true;
  }

  function commit() {
    if (ed.pendingBefore === null) return;
    ed.past.push(ed.pendingBefore);
    if (ed.past.length > ed.MAX_HISTORY) ed.past.shift();
    ed.future = [];
    ed.pendingBefore = null;
    if (ed.pendingRender) ed.render();
    updateHistoryButtons();
    ed.scheduleSave();
    var panel = ed.sidePanel.querySelector(".panel");
    if (ed.pendingRefresh && panel && panel.id === "node-panel") ed.wantPanel = true;
    ed.pendingRefresh = false;
    ed.flushPanel();
  }

  function replaceModel(next) {
    ed.model = ed.normalize(next);
    ed.revision++;
    if (ed.selection) {
      var list = ed.selection.type === "step" ? ed.model.steps : ed.model.triggers;
      if (ed.selection.index >= list.length) ed.selection = null;
    }
    ed.render();
    updateHistoryButtons();
    ed.scheduleSave();
    ed.refreshPanel();
  }

  function undo() {
    commit();
    if (!ed.past.length) return;
    ed.future.push(JSON.stringify(ed.model));
    replaceModel(JSON.parse(ed.past.pop()));
  }

  function redo() {
    commit();
    if (!ed.future.length) return;
    ed.past.push(JSON.stringify(ed.model));
    replaceModel(JSON.parse(ed.future.pop()));
  }

  function updateHistoryButtons() {
    var u = ed.root.querySelector('[data-action="undo"]');
    var r = ed.root.querySelector('[data-action="redo"]');
    if (u) u.disabled = !ed.past.length && ed.pendingBefore === null;
    if (r) r.disabled = !ed.future.length;
  }

  function uniqueId(base) {
    base = String(base).toLowerCase().replace(/[^a-z0-9_-]/g, "_").replace(/^[^a-z]+/, "") || "step";
    var taken = ed.indexById();
    if (!(base in taken)) return base;
    for (var n = 2; ; n++) {
      if (!((base + "_" + n) in taken)) return base + "_" + n;
    }
  }

  function addStep(kind, point) {
    var id = uniqueId(kind);
    change(function () {
      ed.model.steps.push({id: id, kind: kind, config: {},
        position: {x: Math.round(point.x), y: Math.round(point.y)}});
    });
    ed.select({type: "step", index: ed.model.steps.length - 1});
  }

  function addTrigger(kind, point) {
    var template = ed.cfg.triggerKinds[kind] && ed.cfg.triggerKinds[kind].template;
    if (!template) return;
    change(function () {
      var trigger = clone(template);
      trigger.position = {x: Math.round(point.x), y: Math.round(point.y)};
      ed.model.triggers.push(trigger);
    });
    ed.select({type: "trigger", index: ed.model.triggers.length - 1});
  }

  function addEdge(from, to, port) {
    var ids = ed.indexById();
    var target = ed.stepAt(ids[to]);
    if (!target) return;
    var exists = ed.allEdges().some(function (e) { return e.from === from && e.to === to && e.port === port; });
    if (exists) return;
    if (port === "success") {
      target.after = (Array.isArray(target.after) ? target.after : []).concat([from]);
    } else {
      if (!Array.isArray(ed.model.edges)) ed.model.edges = [];
      ed.model.edges.push({from: from, to: to, port: port});
    }
  }

  function removeEdge(from, to, port) {
    var ids = ed.indexById();
    var target = ed.stepAt(ids[to]);
    if (target && port === "success" && Array.isArray(target.after)) {
      target.after = target.after.filter(function (a) { return a !== from; });
      if (!target.after.length) delete target.after;
    }
    if (Array.isArray(ed.model.edges)) {
      ed.model.edges = ed.model.edges.filter(function (e) {
        return !(isObj(e) && e.from === from && e.to === to && (e.port || "success") === port);
      });
      if (!ed.model.edges.length) delete ed.model.edges;
    }
  }

  function deleteStep(index) {
    var step = ed.stepAt(index);
    ed.model.steps.splice(index, 1);
    if (step) {
      ed.model.steps.forEach(function (s) {
        if (isObj(s) && Array.isArray(s.after)) {
          s.after = s.after.filter(function (a) { return a !== step.id; });
          if (!s.after.length) delete s.after;
        }
      });
      if (Array.isArray(ed.model.edges)) {
        ed.model.edges = ed.model.edges.filter(function (e) {
          return !(isObj(e) && (e.from === step.id || e.to === step.id));
        });
        if (!ed.model.edges.length) delete ed.model.edges;
      }
    }
    shiftSelection("step", index);
  }

  function deleteTrigger(index) {
    ed.model.triggers.splice(index, 1);
    shiftSelection("trigger", index);
  }

  function shiftSelection(type, index) {
    if (!ed.selection || ed.selection.type !== type) return;
    if (ed.selection.index === index) {
      ed.selection = null;
      ed.showHelp();
    } else if (ed.selection.index > index) {
      ed.selection.index -= 1;
    }
  }

  function renameRefs(oldId, newId) {
    ed.model.steps.forEach(function (s) {
      if (isObj(s) && Array.isArray(s.after)) {
        s.after = s.after.map(function (a) { return a === oldId ? newId : a; });
      }
    });
    (Array.isArray(ed.model.edges) ? ed.model.edges : []).forEach(function (e) {
      if (!isObj(e)) return;
      if (e.from === oldId) e.from = newId;
      if (e.to === oldId) e.to = newId;
    });
  }

  function autoLayout() {
    var pos = ed.layout();
    change(function () {
      ed.model.steps.forEach(function (s, i) {
        if (isObj(s) && pos[i]) s.position = {x: pos[i].x, y: pos[i].y};
      });
      ed.model.triggers.forEach(function (t, i) {
        if (isObj(t)) t.position = ed.triggerPosition(i, pos);
      });
    });
    Promise.resolve().then(function () { Promise.resolve().then(fitView); });
  }

  // Show every node: zoom out if needed (never in beyond 100%), then move the view so the
  // top-left node sits near the corner.
  function fitView() {
    var nodes = ed.df.drawflow.drawflow.Home.data;
    var ids = Object.keys(nodes);
    if (!ids.length) return;
    var minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
    ids.forEach(function (id) {
      var n = nodes[id];
      var el = ed.nodeEl(id);
      minX = Math.min(minX, n.pos_x);
      minY = Math.min(minY, n.pos_y);
      maxX = Math.max(maxX, n.pos_x + (el ? el.offsetWidth : 210) + 70);
      maxY = Math.max(maxY, n.pos_y + (el ? el.offsetHeight : 100));
    });
    var w = ed.canvas.clientWidth;
    var h = ed.canvas.clientHeight;
    // Room at the top for the run banner.
    var z = Math.max(ed.df.zoom_min, Math.min(1, (w - 60) / (maxX - minX), (h - 90) / (maxY - minY)));
    var cx = ed.df.precanvas.clientWidth / 2;
    var cy = ed.df.precanvas.clientHeight / 2;
    ed.df.zoom = z;
    ed.df.zoom_last_value = z;
    ed.df.canvas_x = 30 - cx - (minX - cx) * z;
    ed.df.canvas_y = 60 - cy - (minY - cy) * z;
    ed.df.precanvas.style.transform = "translate(" + ed.df.canvas_x + "px, " + ed.df.canvas_y + "px) scale(" + z + ")";
    var label = document.getElementById("zoom-level");
    if (label) label.textContent = Math.round(z * 100) + "%";
    if (ed.minimap) ed.minimap.update();
  }

  function deleteSelection() {
    if (!ed.canEdit) return;
    if (ed.df.connection_selected) {
      ed.df.removeConnection();
    } else if (ed.df.node_selected && document.contains(ed.df.node_selected)) {
      ed.df.removeNodeId(ed.df.node_selected.id);
    } else {
      ed.notice("Select a node or an edge first.");
    }
  }


  return {change, commit, replaceModel, undo, redo, updateHistoryButtons, uniqueId, addStep, addTrigger, addEdge, removeEdge, deleteStep, deleteTrigger, shiftSelection, renameRefs, autoLayout, fitView, deleteSelection};
}
