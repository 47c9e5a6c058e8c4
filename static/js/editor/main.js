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
import {createAutosave} from "./autosave.js";
import {createEditing} from "./editing.js";
import * as graph from "./graph.js";
import {createMinimap} from "./minimap.js";
import * as nodes from "./nodes.js";
import {createPanels} from "./panels.js";
import {createRuns} from "./runs.js";
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

  // What the parts of the page (editing.js, panels.js, autosave.js, runs.js) share: this
  // page's state and functions, read and written through here.
  var ed = {
    get MAX_HISTORY() { return MAX_HISTORY; },
    set MAX_HISTORY(v) { MAX_HISTORY = v; },
    get NEW_NODE_WIDTH() { return NEW_NODE_WIDTH; },
    set NEW_NODE_WIDTH(v) { NEW_NODE_WIDTH = v; },
    get actions() { return actions; },
    set actions(v) { actions = v; },
    get addEdge() { return addEdge; },
    set addEdge(v) { addEdge = v; },
    get addFromPalette() { return addFromPalette; },
    get addStep() { return addStep; },
    set addStep(v) { addStep = v; },
    get addTrigger() { return addTrigger; },
    set addTrigger(v) { addTrigger = v; },
    get allEdges() { return allEdges; },
    get allProblems() { return allProblems; },
    set allProblems(v) { allProblems = v; },
    get autoLayout() { return autoLayout; },
    set autoLayout(v) { autoLayout = v; },
    get autosave() { return autosave; },
    set autosave(v) { autosave = v; },
    get banner() { return banner; },
    set banner(v) { banner = v; },
    get busy() { return busy; },
    get canEdit() { return canEdit; },
    set canEdit(v) { canEdit = v; },
    get canvas() { return canvas; },
    set canvas(v) { canvas = v; },
    get canvasPoint() { return canvasPoint; },
    get centreOn() { return centreOn; },
    get centrePoint() { return centrePoint; },
    get cfg() { return cfg; },
    set cfg(v) { cfg = v; },
    get change() { return change; },
    set change(v) { change = v; },
    get clearConflict() { return clearConflict; },
    set clearConflict(v) { clearConflict = v; },
    get clearRun() { return clearRun; },
    set clearRun(v) { clearRun = v; },
    get clientId() { return clientId; },
    set clientId(v) { clientId = v; },
    get clock() { return clock; },
    set clock(v) { clock = v; },
    get commit() { return commit; },
    set commit(v) { commit = v; },
    get conflict() { return conflict; },
    set conflict(v) { conflict = v; },
    get connect() { return connect; },
    set connect(v) { connect = v; },
    get connectionEl() { return connectionEl; },
    get coveredBoxes() { return coveredBoxes; },
    get decorate() { return decorate; },
    get deleteSelection() { return deleteSelection; },
    set deleteSelection(v) { deleteSelection = v; },
    get deleteStep() { return deleteStep; },
    set deleteStep(v) { deleteStep = v; },
    get deleteTrigger() { return deleteTrigger; },
    set deleteTrigger(v) { deleteTrigger = v; },
    get df() { return df; },
    set df(v) { df = v; },
    get downAt() { return downAt; },
    set downAt(v) { downAt = v; },
    get draftRevision() { return draftRevision; },
    set draftRevision(v) { draftRevision = v; },
    get dragging() { return dragging; },
    set dragging(v) { dragging = v; },
    get editing() { return editing; },
    set editing(v) { editing = v; },
    get fitView() { return fitView; },
    set fitView(v) { fitView = v; },
    get flushPanel() { return flushPanel; },
    get flushSave() { return flushSave; },
    set flushSave(v) { flushSave = v; },
    get follow() { return follow; },
    set follow(v) { follow = v; },
    get future() { return future; },
    set future(v) { future = v; },
    get indexById() { return indexById; },
    get insertVariable() { return insertVariable; },
    set insertVariable(v) { insertVariable = v; },
    get isDraftWrite() { return isDraftWrite; },
    set isDraftWrite(v) { isDraftWrite = v; },
    get isPanelForm() { return isPanelForm; },
    set isPanelForm(v) { isPanelForm = v; },
    get judgeRemote() { return judgeRemote; },
    set judgeRemote(v) { judgeRemote = v; },
    get knownRuns() { return knownRuns; },
    set knownRuns(v) { knownRuns = v; },
    get lastField() { return lastField; },
    set lastField(v) { lastField = v; },
    get lastStructure() { return lastStructure; },
    set lastStructure(v) { lastStructure = v; },
    get latestRuns() { return latestRuns; },
    set latestRuns(v) { latestRuns = v; },
    get layout() { return layout; },
    get live() { return live; },
    set live(v) { live = v; },
    get markProblems() { return markProblems; },
    get markRun() { return markRun; },
    get minimap() { return minimap; },
    set minimap(v) { minimap = v; },
    get model() { return model; },
    set model(v) { model = v; },
    get moveNode() { return moveNode; },
    get nodeBoxes() { return nodeBoxes; },
    get nodeEl() { return nodeEl; },
    get nodeMap() { return nodeMap; },
    set nodeMap(v) { nodeMap = v; },
    get nodeProblems() { return nodeProblems; },
    set nodeProblems(v) { nodeProblems = v; },
    get normalize() { return normalize; },
    get notice() { return notice; },
    get onConflict() { return onConflict; },
    set onConflict(v) { onConflict = v; },
    get onDraftFrame() { return onDraftFrame; },
    set onDraftFrame(v) { onDraftFrame = v; },
    get onRun() { return onRun; },
    set onRun(v) { onRun = v; },
    get onRuns() { return onRuns; },
    set onRuns(v) { onRuns = v; },
    get openConfig() { return openConfig; },
    set openConfig(v) { openConfig = v; },
    get openNode() { return openNode; },
    set openNode(v) { openNode = v; },
    get openPanel() { return openPanel; },
    set openPanel(v) { openPanel = v; },
    get panelRequest() { return panelRequest; },
    set panelRequest(v) { panelRequest = v; },
    get panels() { return panels; },
    set panels(v) { panels = v; },
    get past() { return past; },
    set past(v) { past = v; },
    get pendingBefore() { return pendingBefore; },
    set pendingBefore(v) { pendingBefore = v; },
    get pendingRefresh() { return pendingRefresh; },
    set pendingRefresh(v) { pendingRefresh = v; },
    get pendingRender() { return pendingRender; },
    set pendingRender(v) { pendingRender = v; },
    get placement() { return placement; },
    get portsOf() { return portsOf; },
    get redo() { return redo; },
    set redo(v) { redo = v; },
    get refreshNodes() { return refreshNodes; },
    get refreshPanel() { return refreshPanel; },
    set refreshPanel(v) { refreshPanel = v; },
    get reloadDraft() { return reloadDraft; },
    set reloadDraft(v) { reloadDraft = v; },
    get remoteLater() { return remoteLater; },
    set remoteLater(v) { remoteLater = v; },
    get removeEdge() { return removeEdge; },
    set removeEdge(v) { removeEdge = v; },
    get renameRefs() { return renameRefs; },
    set renameRefs(v) { renameRefs = v; },
    get render() { return render; },
    get renderRunList() { return renderRunList; },
    set renderRunList(v) { renderRunList = v; },
    get renderSoon() { return renderSoon; },
    get rendering() { return rendering; },
    set rendering(v) { rendering = v; },
    get replaceModel() { return replaceModel; },
    set replaceModel(v) { replaceModel = v; },
    get revision() { return revision; },
    set revision(v) { revision = v; },
    get root() { return root; },
    set root(v) { root = v; },
    get rootIndexes() { return rootIndexes; },
    get runView() { return runView; },
    set runView(v) { runView = v; },
    get runs() { return runs; },
    set runs(v) { runs = v; },
    get saveIdle() { return saveIdle; },
    set saveIdle(v) { saveIdle = v; },
    get saveNow() { return saveNow; },
    set saveNow(v) { saveNow = v; },
    get savedRevision() { return savedRevision; },
    set savedRevision(v) { savedRevision = v; },
    get saving() { return saving; },
    set saving(v) { saving = v; },
    get scheduleSave() { return scheduleSave; },
    set scheduleSave(v) { scheduleSave = v; },
    get search() { return search; },
    set search(v) { search = v; },
    get select() { return select; },
    get selectFromProblem() { return selectFromProblem; },
    set selectFromProblem(v) { selectFromProblem = v; },
    get selection() { return selection; },
    set selection(v) { selection = v; },
    get setLive() { return setLive; },
    set setLive(v) { setLive = v; },
    get setStatus() { return setStatus; },
    set setStatus(v) { setStatus = v; },
    get settleForms() { return settleForms; },
    set settleForms(v) { settleForms = v; },
    get shiftSelection() { return shiftSelection; },
    set shiftSelection(v) { shiftSelection = v; },
    get showHelp() { return showHelp; },
    set showHelp(v) { showHelp = v; },
    get showNode() { return showNode; },
    get showRun() { return showRun; },
    set showRun(v) { showRun = v; },
    get sidePanel() { return sidePanel; },
    set sidePanel(v) { sidePanel = v; },
    get sizeOf() { return sizeOf; },
    get socket() { return socket; },
    set socket(v) { socket = v; },
    get status() { return status; },
    set status(v) { status = v; },
    get stepAt() { return stepAt; },
    get stepHtml() { return stepHtml; },
    get stepNode() { return stepNode; },
    set stepNode(v) { stepNode = v; },
    get structureKey() { return structureKey; },
    get triggerHtml() { return triggerHtml; },
    get triggerKindOf() { return triggerKindOf; },
    set triggerKindOf(v) { triggerKindOf = v; },
    get triggerNode() { return triggerNode; },
    set triggerNode(v) { triggerNode = v; },
    get triggerPosition() { return triggerPosition; },
    get undo() { return undo; },
    set undo(v) { undo = v; },
    get uniqueId() { return uniqueId; },
    set uniqueId(v) { uniqueId = v; },
    get updateBanner() { return updateBanner; },
    set updateBanner(v) { updateBanner = v; },
    get updateHistoryButtons() { return updateHistoryButtons; },
    set updateHistoryButtons(v) { updateHistoryButtons = v; },
    get updateProblemsSummary() { return updateProblemsSummary; },
    set updateProblemsSummary(v) { updateProblemsSummary = v; },
    get viewBox() { return viewBox; },
    get wantPanel() { return wantPanel; },
    set wantPanel(v) { wantPanel = v; },
    get whoOf() { return whoOf; },
    set whoOf(v) { whoOf = v; },
    get writes() { return writes; },
    set writes(v) { writes = v; },
  };

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
  var editing = createEditing(ed);
  var change = editing.change;
  var commit = editing.commit;
  var replaceModel = editing.replaceModel;
  var undo = editing.undo;
  var redo = editing.redo;
  var updateHistoryButtons = editing.updateHistoryButtons;
  var uniqueId = editing.uniqueId;
  var addStep = editing.addStep;
  var addTrigger = editing.addTrigger;
  var addEdge = editing.addEdge;
  var removeEdge = editing.removeEdge;
  var deleteStep = editing.deleteStep;
  var deleteTrigger = editing.deleteTrigger;
  var shiftSelection = editing.shiftSelection;
  var renameRefs = editing.renameRefs;
  var autoLayout = editing.autoLayout;
  var fitView = editing.fitView;
  var deleteSelection = editing.deleteSelection;

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
  var panels = createPanels(ed);
  var isDraftWrite = panels.isDraftWrite;
  var isPanelForm = panels.isPanelForm;
  var settleForms = panels.settleForms;
  var panelRequest = panels.panelRequest;
  var openNode = panels.openNode;
  var openConfig = panels.openConfig;
  var refreshPanel = panels.refreshPanel;
  var showHelp = panels.showHelp;
  var openPanel = panels.openPanel;
  var insertVariable = panels.insertVariable;
  var updateProblemsSummary = panels.updateProblemsSummary;
  var selectFromProblem = panels.selectFromProblem;

  // --- autosave ---------------------------------------------------------------------------
  var saving = null;
  var status = document.getElementById("save-status");
  var autosave = createAutosave(ed);
  var setStatus = autosave.setStatus;
  var saveIdle = autosave.saveIdle;
  var scheduleSave = autosave.scheduleSave;
  var saveNow = autosave.saveNow;
  var flushSave = autosave.flushSave;
  var whoOf = autosave.whoOf;
  var clock = autosave.clock;
  var onConflict = autosave.onConflict;
  var clearConflict = autosave.clearConflict;
  var onDraftFrame = autosave.onDraftFrame;
  var judgeRemote = autosave.judgeRemote;
  var reloadDraft = autosave.reloadDraft;

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
  var follow = true;
  var live = document.getElementById("editor-live");
  var banner = document.getElementById("run-banner");
  var runs = createRuns(ed);
  var setLive = runs.setLive;
  var connect = runs.connect;
  var onRuns = runs.onRuns;
  var renderRunList = runs.renderRunList;
  var showRun = runs.showRun;
  var onRun = runs.onRun;
  var clearRun = runs.clearRun;
  var updateBanner = runs.updateBanner;

  // --- start ------------------------------------------------------------------------------
  render();
  fitView();
  updateHistoryButtons();
  if (canEdit) setStatus("saved", cfg.savedBy ? "Draft saved by " + cfg.savedBy : "Draft saved");
  connect();
}

start();
