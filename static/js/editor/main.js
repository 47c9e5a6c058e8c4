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
import {createCanvas} from "./canvas.js";
import {createDrawflow, selectOnClick} from "./drawflow_events.js";
import {createEditing} from "./editing.js";
import * as graph from "./graph.js";
import {createMinimap} from "./minimap.js";
import * as nodes from "./nodes.js";
import {createPalette} from "./palette.js";
import {createPanels} from "./panels.js";
import {createRuns} from "./runs.js";
import {freeSpot} from "./spots.js";
import {bindToolbar} from "./toolbar.js";
import {clone, esc, isObj, num} from "./util.js";

// A module cannot return early at its top: the page is set up in start().
// The editor fills the window below the top bar, whose height varies (icons, a wrapped
// navigation): measured, not assumed, so the page never scrolls a little under the canvas
// (a node would land off from where the canvas was seen).
function fitBelowTopBar() {
  var bar = document.querySelector(".topbar");
  function fit() {
    document.documentElement.style.setProperty("--topbar-height", (bar ? bar.offsetHeight : 0) + "px");
  }
  fit();
  window.addEventListener("resize", fit);
}

function start() {

  var root = document.getElementById("editor-root");
  if (!root || typeof Drawflow === "undefined") return;
  fitBelowTopBar();

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

  // What the parts of the page (canvas.js, editing.js, panels.js, autosave.js, palette.js,
  // runs.js, drawflow_events.js, toolbar.js) share: this page's state and functions, read
  // and written through here.
  var ed = {
    triggerKindOf: nodes.triggerKindOf,
    get MAX_HISTORY() { return MAX_HISTORY; },
    set MAX_HISTORY(v) { MAX_HISTORY = v; },
    get NEW_NODE_WIDTH() { return NEW_NODE_WIDTH; },
    set NEW_NODE_WIDTH(v) { NEW_NODE_WIDTH = v; },
    get actions() { return actions; },
    set actions(v) { actions = v; },
    get addEdge() { return addEdge; },
    set addEdge(v) { addEdge = v; },
    get addFromPalette() { return addFromPalette; },
    set addFromPalette(v) { addFromPalette = v; },
    get addStep() { return addStep; },
    set addStep(v) { addStep = v; },
    get addTrigger() { return addTrigger; },
    set addTrigger(v) { addTrigger = v; },
    get allEdges() { return allEdges; },
    get allProblems() { return allProblems; },
    set allProblems(v) { allProblems = v; },
    get autoLayout() { return autoLayout; },
    set autoLayout(v) { autoLayout = v; },
    get banner() { return banner; },
    set banner(v) { banner = v; },
    get busy() { return busy; },
    set busy(v) { busy = v; },
    get canEdit() { return canEdit; },
    set canEdit(v) { canEdit = v; },
    get canvas() { return canvas; },
    set canvas(v) { canvas = v; },
    get canvasPoint() { return canvasPoint; },
    set canvasPoint(v) { canvasPoint = v; },
    get centreOn() { return centreOn; },
    set centreOn(v) { centreOn = v; },
    get centrePoint() { return centrePoint; },
    set centrePoint(v) { centrePoint = v; },
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
    set connectionEl(v) { connectionEl = v; },
    get coveredBoxes() { return coveredBoxes; },
    set coveredBoxes(v) { coveredBoxes = v; },
    get decorate() { return decorate; },
    set decorate(v) { decorate = v; },
    get deleteSelection() { return deleteSelection; },
    set deleteSelection(v) { deleteSelection = v; },
    get deleteStep() { return deleteStep; },
    set deleteStep(v) { deleteStep = v; },
    get deleteTrigger() { return deleteTrigger; },
    set deleteTrigger(v) { deleteTrigger = v; },
    get df() { return df; },
    set df(v) { df = v; },
    get draftRevision() { return draftRevision; },
    set draftRevision(v) { draftRevision = v; },
    get dragging() { return dragging; },
    set dragging(v) { dragging = v; },
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
    set markProblems(v) { markProblems = v; },
    get markRun() { return markRun; },
    set markRun(v) { markRun = v; },
    get minimap() { return minimap; },
    set minimap(v) { minimap = v; },
    get model() { return model; },
    set model(v) { model = v; },
    get moveNode() { return moveNode; },
    set moveNode(v) { moveNode = v; },
    get nodeBoxes() { return nodeBoxes; },
    set nodeBoxes(v) { nodeBoxes = v; },
    get nodeEl() { return nodeEl; },
    set nodeEl(v) { nodeEl = v; },
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
    set refreshNodes(v) { refreshNodes = v; },
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
    set render(v) { render = v; },
    get renderRunList() { return renderRunList; },
    set renderRunList(v) { renderRunList = v; },
    get renderSoon() { return renderSoon; },
    set renderSoon(v) { renderSoon = v; },
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
    set showNode(v) { showNode = v; },
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
    set stepHtml(v) { stepHtml = v; },
    get stepNode() { return stepNode; },
    set stepNode(v) { stepNode = v; },
    get structureKey() { return structureKey; },
    set structureKey(v) { structureKey = v; },
    get triggerHtml() { return triggerHtml; },
    set triggerHtml(v) { triggerHtml = v; },
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
    set viewBox(v) { viewBox = v; },
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
  var canvasPart = createCanvas(ed);
  var stepHtml = canvasPart.stepHtml;
  var triggerHtml = canvasPart.triggerHtml;
  var structureKey = canvasPart.structureKey;
  var busy = canvasPart.busy;
  var render = canvasPart.render;
  var renderSoon = canvasPart.renderSoon;
  var refreshNodes = canvasPart.refreshNodes;
  var moveNode = canvasPart.moveNode;
  var nodeEl = canvasPart.nodeEl;
  var decorate = canvasPart.decorate;
  var connectionEl = canvasPart.connectionEl;
  var markProblems = canvasPart.markProblems;
  var markRun = canvasPart.markRun;

  // --- editing ------------------------------------------------------------------------------
  var editingPart = createEditing(ed);
  var change = editingPart.change;
  var commit = editingPart.commit;
  var replaceModel = editingPart.replaceModel;
  var undo = editingPart.undo;
  var redo = editingPart.redo;
  var updateHistoryButtons = editingPart.updateHistoryButtons;
  var uniqueId = editingPart.uniqueId;
  var addStep = editingPart.addStep;
  var addTrigger = editingPart.addTrigger;
  var addEdge = editingPart.addEdge;
  var removeEdge = editingPart.removeEdge;
  var deleteStep = editingPart.deleteStep;
  var deleteTrigger = editingPart.deleteTrigger;
  var shiftSelection = editingPart.shiftSelection;
  var renameRefs = editingPart.renameRefs;
  var autoLayout = editingPart.autoLayout;
  var fitView = editingPart.fitView;
  var deleteSelection = editingPart.deleteSelection;

  // --- Drawflow and what is done on its canvas (drawflow_events.js) ----------------------
  var df = createDrawflow(ed);

  var minimap = createMinimap({
    wrap: root.querySelector(".canvas-wrap"),
    // (defined with the palette, below: looked up when the minimap draws)
    nodeBoxes: function () { return nodeBoxes(); },
    viewBox: function () { return viewBox(0); },
    centreOn: function (point) { return centreOn(point); },
  });
  ["translate", "nodeMoved", "zoom"].forEach(function (name) { df.on(name, minimap.update); });

  selectOnClick(ed);

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
  var panelsPart = createPanels(ed);
  var isDraftWrite = panelsPart.isDraftWrite;
  var isPanelForm = panelsPart.isPanelForm;
  var settleForms = panelsPart.settleForms;
  var panelRequest = panelsPart.panelRequest;
  var openNode = panelsPart.openNode;
  var openConfig = panelsPart.openConfig;
  var refreshPanel = panelsPart.refreshPanel;
  var showHelp = panelsPart.showHelp;
  var openPanel = panelsPart.openPanel;
  var insertVariable = panelsPart.insertVariable;
  var updateProblemsSummary = panelsPart.updateProblemsSummary;
  var selectFromProblem = panelsPart.selectFromProblem;

  // --- autosave ---------------------------------------------------------------------------
  var saving = null;
  var status = document.getElementById("save-status");
  var autosavePart = createAutosave(ed);
  var setStatus = autosavePart.setStatus;
  var saveIdle = autosavePart.saveIdle;
  var scheduleSave = autosavePart.scheduleSave;
  var saveNow = autosavePart.saveNow;
  var flushSave = autosavePart.flushSave;
  var whoOf = autosavePart.whoOf;
  var clock = autosavePart.clock;
  var onConflict = autosavePart.onConflict;
  var clearConflict = autosavePart.clearConflict;
  var onDraftFrame = autosavePart.onDraftFrame;
  var judgeRemote = autosavePart.judgeRemote;
  var reloadDraft = autosavePart.reloadDraft;

  // --- the palette: drag a kind onto the canvas ------------------------------------------
  var dragging = null;
  var palettePart = createPalette(ed);
  var canvasPoint = palettePart.canvasPoint;
  var addFromPalette = palettePart.addFromPalette;
  var showNode = palettePart.showNode;
  var centrePoint = palettePart.centrePoint;
  var nodeBoxes = palettePart.nodeBoxes;
  var coveredBoxes = palettePart.coveredBoxes;
  var viewBox = palettePart.viewBox;
  var centreOn = palettePart.centreOn;

  // --- the toolbar and the keyboard (toolbar.js) ----------------------------------------
  var actions = bindToolbar(ed);

  // --- runs on the canvas -----------------------------------------------------------------
  var socket = null;
  var follow = true;
  var live = document.getElementById("editor-live");
  var banner = document.getElementById("run-banner");
  var runsPart = createRuns(ed);
  var setLive = runsPart.setLive;
  var connect = runsPart.connect;
  var onRuns = runsPart.onRuns;
  var renderRunList = runsPart.renderRunList;
  var showRun = runsPart.showRun;
  var onRun = runsPart.onRun;
  var clearRun = runsPart.clearRun;
  var updateBanner = runsPart.updateBanner;

  // --- start ------------------------------------------------------------------------------
  render();
  fitView();
  updateHistoryButtons();
  if (canEdit) setStatus("saved", cfg.savedBy ? "Draft saved by " + cfg.savedBy : "Draft saved");
  connect();
}

start();
