// Part of the editor page (main.js builds it with the page's shared state `ed`).
import {clone, esc, isObj, num} from "./util.js";
import * as graph from "./graph.js";
import * as nodes from "./nodes.js";

export function createRuns(ed) {
  // --- runs on the canvas -----------------------------------------------------------------
  var retries = 0;

  function setLive(state, text) {
    ed.live.dataset.state = state;
    ed.live.textContent = text;
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    ed.socket = new WebSocket(scheme + "//" + location.host + "/ws/workflows/" + encodeURIComponent(ed.cfg.slug) + "/editor/");
    setLive("connecting", "connecting…");
    ed.socket.onopen = function () {
      retries = 0;
      setLive("open", "live");
      // Saves made while the socket was away are heard of in the answer.
      ed.socket.send(JSON.stringify({draft: ed.draftRevision}));
      if (ed.runView) ed.socket.send(JSON.stringify({watch: ed.runView.id}));
    };
    ed.socket.onmessage = function (e) {
      var frame = JSON.parse(e.data);
      if (frame.type === "runs") onRuns(frame.runs);
      else if (frame.type === "run") onRun(frame);
      else if (frame.type === "draft") ed.onDraftFrame(frame);
    };
    ed.socket.onclose = function (e) {
      if (e.code === 4401 || e.code === 4403) return setLive("closed", "not allowed");
      setLive("closed", "reconnecting…");
      setTimeout(connect, Math.min(10000, 500 * Math.pow(2, retries++)));
    };
  }

  function onRuns(runs) {
    ed.latestRuns = runs;
    var fresh = runs.filter(function (r) { return ed.knownRuns && !ed.knownRuns[r.id]; });
    ed.knownRuns = ed.knownRuns || {};
    runs.forEach(function (r) { ed.knownRuns[r.id] = true; });
    renderRunList();
    var panelOpen = !!document.getElementById("runs-panel");
    if (fresh.length && ed.follow && panelOpen) showRun(fresh[0].id);
  }

  function renderRunList() {
    var list = document.getElementById("editor-run-list");
    if (!list || !ed.latestRuns) return;
    list.innerHTML = ed.latestRuns.length ? ed.latestRuns.map(function (r) {
      return '<li><button type="button" class="run-pick' + (ed.runView && ed.runView.id === r.id ? " current" : "") +
        '" data-run="' + r.id + '" data-status="' + esc(r.status) + '">#' + r.id +
        ' <span class="status status-' + esc(r.status) + '">' + esc(r.status) + "</span>" +
        ' <span class="muted small">' + (r.origin === "try" ? "try" : "v" + esc(r.version)) + "</span></button></li>";
    }).join("") : '<li class="muted small empty">No runs yet. Send an event of a trigger\'s type, or use <em>Try it</em>.</li>';
    var box = document.getElementById("follow-runs");
    if (box) box.checked = ed.follow;
  }

  function showRun(id) {
    ed.runView = {id: id, status: "queued", origin: "", steps: {}};
    if (ed.socket && ed.socket.readyState === WebSocket.OPEN) ed.socket.send(JSON.stringify({watch: id}));
    ed.root.classList.add("showing-run");
    updateBanner();
    ed.decorate();
    renderRunList();
  }

  function onRun(frame) {
    if (!ed.runView || frame.id !== ed.runView.id) return;
    ed.runView = frame;
    updateBanner();
    ed.decorate();
    var panel = document.getElementById("run-step-panel");
    if (panel && Number(panel.dataset.run) === frame.id) {
      var st = frame.steps[panel.dataset.step];
      var shown = document.getElementById("run-step-status");
      if (st && (!shown || shown.textContent.trim() !== st.status)) ed.openNode();
    }
  }

  function clearRun() {
    ed.runView = null;
    if (ed.socket && ed.socket.readyState === WebSocket.OPEN) ed.socket.send(JSON.stringify({watch: null}));
    ed.root.classList.remove("showing-run");
    ed.banner.hidden = true;
    ed.decorate();
    renderRunList();
  }

  function updateBanner() {
    ed.banner.hidden = false;
    ed.banner.dataset.status = ed.runView.status;
    ed.banner.innerHTML = "Showing run <a href=\"/runs/" + ed.runView.id + "/\">#" + ed.runView.id + "</a>" +
      (ed.runView.origin === "try" ? " (a try of the draft)" : ed.runView.version ? " of v" + esc(ed.runView.version) : "") +
      ': <span class="status status-' + esc(ed.runView.status) + '" id="run-banner-status">' + esc(ed.runView.status) + "</span>" +
      (ed.runView.error ? ' <span class="error small">' + esc(ed.runView.error) + "</span>" : "") +
      ' <button type="button" id="run-banner-close">Back to editing</button>';
    document.getElementById("run-banner-close").addEventListener("click", clearRun);
  }


  return {setLive, connect, onRuns, renderRunList, showRun, onRun, clearRun, updateBanner};
}
