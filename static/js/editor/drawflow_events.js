// Part of the editor page (main.js builds it with the page's shared state `ed`): Drawflow
// itself, and what the person does on its canvas (moving nodes, wiring and unwiring ports,
// deleting nodes, clicking a node) turned into edits of the model or a selection.
import {isObj, num} from "./util.js";

export function createDrawflow(ed) {
  var df = new Drawflow(ed.canvas);
  df.curvature = 0.4;
  df.zoom_min = 0.3;
  df.zoom_max = 1.6;
  df.editor_mode = ed.canEdit ? "edit" : "view";
  df.start();

  df.on("nodeMoved", function (id) {
    var info = ed.nodeMap[id];
    var node = df.drawflow.drawflow.Home.data[id];
    if (!info || !node) return;
    // Drawflow 0.0.60 records pos_x/pos_y one mouse move off the place it draws the node
    // at (it subtracts the last move twice): keep the drawn place, which is what was seen.
    var el = ed.nodeEl(id);
    var x = el ? num(parseFloat(el.style.left), node.pos_x) : node.pos_x;
    var y = el ? num(parseFloat(el.style.top), node.pos_y) : node.pos_y;
    node.pos_x = x;
    node.pos_y = y;
    ed.change(function () {
      var moved = info.type === "trigger" ? ed.model.triggers[info.index] : ed.stepAt(info.index);
      if (isObj(moved)) moved.position = {x: Math.round(x), y: Math.round(y)};
    }, {render: false});
  });

  df.on("connectionCreated", function (c) {
    if (ed.rendering) return;
    var src = ed.nodeMap[c.output_id];
    var dst = ed.nodeMap[c.input_id];
    if (!src || !dst || dst.type !== "step") return ed.renderSoon();
    if (src.type === "trigger") {
      ed.notice("A trigger starts every step that has no incoming edge; this one starts after the steps wired into it.");
      return ed.renderSoon();
    }
    var port = ed.portsOf(src.index)[parseInt(c.output_class.split("_")[1], 10) - 1];
    var from = ed.stepAt(src.index).id;
    var to = ed.stepAt(dst.index).id;
    if (!ed.change(function () { ed.addEdge(from, to, port); })) ed.renderSoon();
  });

  df.on("connectionRemoved", function (c) {
    if (ed.rendering) return;
    var src = ed.nodeMap[c.output_id];
    var dst = ed.nodeMap[c.input_id];
    if (!src || !dst || dst.type !== "step") return;
    if (src.type === "trigger") {
      // Derived from the steps: it comes back unless its step now has incoming edges.
      return ed.renderSoon();
    }
    var port = ed.portsOf(src.index)[parseInt(c.output_class.split("_")[1], 10) - 1];
    var from = ed.stepAt(src.index) && ed.stepAt(src.index).id;
    var to = ed.stepAt(dst.index) && ed.stepAt(dst.index).id;
    ed.change(function () { ed.removeEdge(from, to, port); });
  });

  df.on("nodeRemoved", function (id) {
    if (ed.rendering) return;
    var info = ed.nodeMap[id];
    if (!info) return;
    delete ed.nodeMap[id];
    ed.change(function () {
      if (info.type === "step") ed.deleteStep(info.index);
      else ed.deleteTrigger(info.index);
    });
  });

  df.on("zoom", function (z) {
    var label = document.getElementById("zoom-level");
    if (label) label.textContent = Math.round(z * 100) + "%";
  });

  return df;
}

// A click (not a drag) on a node selects it and opens its panel.
export function selectOnClick(ed) {
  var downAt = null;
  ed.canvas.addEventListener("mousedown", function (e) { downAt = {x: e.clientX, y: e.clientY}; }, true);
  ed.canvas.addEventListener("click", function (e) {
    if (downAt && Math.abs(e.clientX - downAt.x) + Math.abs(e.clientY - downAt.y) > 4) return;
    if (e.target.closest(".output, .input")) return;
    var el = e.target.closest(".drawflow-node");
    if (!el) return;
    var info = ed.nodeMap[el.id.slice(5)];
    if (info) ed.select({type: info.type, index: info.index});
  });
}
