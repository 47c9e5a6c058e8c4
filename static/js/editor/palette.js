// Part of the editor page (main.js builds it with the page's shared state `ed`).
import {clone, esc, isObj, num} from "./util.js";
import * as graph from "./graph.js";
import * as nodes from "./nodes.js";
import {freeSpot} from "./spots.js";

export function createPalette(ed) {
  // --- the palette: drag a kind onto the canvas ------------------------------------------
  function canvasPoint(clientX, clientY) {
    var rect = ed.df.precanvas.getBoundingClientRect();
    return {x: (clientX - rect.left) / ed.df.zoom, y: (clientY - rect.top) / ed.df.zoom};
  }

  // A new node goes where it was dropped, or as near as there is room: inside the part of
  // the canvas in view, clear of every node and of what covers the canvas (spots.js).
  function addFromPalette(item, point) {
    var kind = item.dataset.paletteKind;
    var ports = kind ? (ed.cfg.kinds[kind] ? ed.cfg.kinds[kind].ports.length : 2) : 1;
    var size = {w: ed.NEW_NODE_WIDTH, h: Math.max(96, 26 * ports + 30)};
    var spot = freeSpot({x: point.x - 100, y: point.y - 30}, size, nodeBoxes(), coveredBoxes(), viewBox(8));
    if (kind) ed.addStep(kind, spot);
    else ed.addTrigger(item.dataset.paletteTrigger, spot);
    Promise.resolve().then(function () { Promise.resolve().then(showNode); });
  }

  // The node just added, when it could only go outside the view: the view moves to it.
  function showNode() {
    var el = ed.canvas.querySelector(".drawflow-node.selected");
    if (!el) return;
    var view = viewBox(0);
    var x = parseFloat(el.style.left);
    var y = parseFloat(el.style.top);
    if (x + el.offsetWidth > view.x + view.w || y + el.offsetHeight > view.y + view.h) {
      centreOn({x: x + el.offsetWidth / 2, y: y + el.offsetHeight / 2});
    }
  }

  function centrePoint() {
    var rect = ed.canvas.getBoundingClientRect();
    return canvasPoint(rect.left + rect.width / 2, rect.top + rect.height / 3);
  }

  // Boxes in canvas pixels: the nodes drawn, what covers the canvas, the part in view.
  function nodeBoxes() {
    var data = ed.df.drawflow.drawflow.Home.data;
    return Object.keys(data).map(function (id) {
      var el = ed.nodeEl(id);
      var info = ed.nodeMap[id];
      var kind = info && info.type === "step" ? nodes.kindClass(ed.stepAt(info.index))
        : "trigger-" + ed.triggerKindOf(info ? ed.model.triggers[info.index] : null);
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
    var r = ed.canvas.getBoundingClientRect();
    var a = canvasPoint(r.left + inset, r.top + inset);
    var b = canvasPoint(r.right - inset, r.bottom - inset);
    return {x: a.x, y: a.y, w: b.x - a.x, h: b.y - a.y};
  }

  // Move the view (not the zoom) so that `point` (canvas pixels) is in its middle.
  function centreOn(point) {
    var r = ed.canvas.getBoundingClientRect();
    var here = canvasPoint(r.left + r.width / 2, r.top + r.height / 2);
    ed.df.canvas_x -= (point.x - here.x) * ed.df.zoom;
    ed.df.canvas_y -= (point.y - here.y) * ed.df.zoom;
    ed.df.precanvas.style.transform = "translate(" + ed.df.canvas_x + "px, " + ed.df.canvas_y + "px) scale(" + ed.df.zoom + ")";
    if (ed.minimap) ed.minimap.update();
  }

  ed.root.querySelectorAll(".palette-item").forEach(function (item) {
    item.addEventListener("mousedown", function (e) {
      if (e.button !== 0) return;
      e.preventDefault();
      var ghost = item.cloneNode(true);
      ghost.classList.add("palette-ghost");
      ghost.style.left = e.clientX + "px";
      ghost.style.top = e.clientY + "px";
      document.body.appendChild(ghost);
      ed.dragging = {item: item, ghost: ghost};
      ed.root.classList.add("dragging-kind");
    });
    item.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        addFromPalette(item, centrePoint());
      }
    });
  });
  document.addEventListener("mousemove", function (e) {
    if (!ed.dragging) return;
    ed.dragging.ghost.style.left = e.clientX + "px";
    ed.dragging.ghost.style.top = e.clientY + "px";
  });
  // A redraw put off while something was being dragged happens once it is dropped.
  document.addEventListener("mouseup", function () {
    setTimeout(function () { if (ed.pendingRender && ed.pendingBefore === null) ed.render(); }, 0);
  });
  document.addEventListener("mouseup", function (e) {
    if (!ed.dragging) return;
    var drag = ed.dragging;
    ed.dragging = null;
    drag.ghost.remove();
    ed.root.classList.remove("dragging-kind");
    var rect = ed.canvas.getBoundingClientRect();
    if (e.clientX >= rect.left && e.clientX <= rect.right && e.clientY >= rect.top && e.clientY <= rect.bottom) {
      addFromPalette(drag.item, canvasPoint(e.clientX, e.clientY));
    }
  });

  var search = document.getElementById("palette-search");
  if (search) {
    search.addEventListener("input", function () {
      var terms = search.value.toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0;
      ed.root.querySelectorAll(".palette-group").forEach(function (group) {
        var visible = 0;
        group.querySelectorAll(".palette-item").forEach(function (item) {
          var hit = terms.every(function (t) { return item.dataset.search.indexOf(t) >= 0; });
          item.hidden = !hit;
          if (hit) visible++;
        });
        group.hidden = !visible;
        shown += visible;
      });
      ed.root.querySelector(".palette-empty").hidden = shown > 0;
    });
  }


  return {canvasPoint, addFromPalette, showNode, centrePoint, nodeBoxes, coveredBoxes, viewBox, centreOn};
}
