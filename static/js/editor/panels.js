// Part of the editor page (main.js builds it with the page's shared state `ed`).
import {clone, esc, isObj, num} from "./util.js";
import * as graph from "./graph.js";
import * as nodes from "./nodes.js";

export function createPanels(ed) {
  // --- panels -----------------------------------------------------------------------------
  var definitionPaths = ["step", "stepApply", "trigger", "triggerApply", "settings",
    "settingsApply", "publish", "try"].map(function (k) { return ed.cfg.urls[k]; });

  var writePaths = ["publish", "try", "import"].map(function (k) { return ed.cfg.urls[k]; });

  function isDraftWrite(detail) {
    var path = String((detail.requestConfig || detail).path || "").split("?")[0];
    var verb = String((detail.requestConfig || detail).verb || "").toLowerCase();
    return verb === "post" && (writePaths.indexOf(path) >= 0 || /\/versions\/\d+\/restore$/.test(path));
  }

  document.body.addEventListener("htmx:configRequest", function (e) {
    var path = String(e.detail.path || "").split("?")[0];
    if (e.detail.verb === "post" && definitionPaths.indexOf(path) >= 0) {
      e.detail.parameters["definition"] = JSON.stringify(ed.model);
    }
    // What a panel that writes the draft (publish, try, restore, import) is based on.
    e.detail.headers["X-Draft-Revision"] = String(ed.draftRevision);
    e.detail.headers["X-Editor-Client"] = ed.clientId;
  });
  document.body.addEventListener("htmx:beforeRequest", function (e) {
    if (isDraftWrite(e.detail)) ed.writes++;
  });
  document.body.addEventListener("htmx:afterRequest", function (e) {
    if (!isDraftWrite(e.detail)) return;
    ed.writes = Math.max(0, ed.writes - 1);
    ed.judgeRemote();
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
    ed.onConflict({revision: d.revision, by: d.saved_by, at: d.saved_at});
  });
  document.body.addEventListener("editor:draft", function (e) {
    if (typeof e.detail.revision === "number") ed.draftRevision = e.detail.revision;
  });

  // Publish, try, restore and import act on the stored draft: save what is pending first.
  document.body.addEventListener("htmx:confirm", function (e) {
    var elt = e.detail.elt;
    if (!elt || !elt.closest || !elt.closest("[data-flush-first]") || ed.saveIdle()) return;
    e.preventDefault();
    ed.flushSave().then(function () { e.detail.issueRequest(false); });
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
    ed.sidePanel.addEventListener(type, function (e) {
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
    var form = ed.sidePanel.querySelector("#node-form[hx-post], #settings-form[hx-post]");
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
      return htmx.ajax(verb, url, {source: ed.sidePanel, target: "#side-panel", swap: "innerHTML", values: values || {}});
    });
  }

  function openNode() {
    if (!ed.selection) return showHelp();
    if (ed.selection.type === "step") {
      var step = ed.stepAt(ed.selection.index);
      if (ed.runView && step) {
        return panelRequest("GET", ed.cfg.urls.runStep + ed.runView.id + "/" + encodeURIComponent(step.id));
      }
      return panelRequest("POST", ed.cfg.urls.step, {index: ed.selection.index});
    }
    return panelRequest("POST", ed.cfg.urls.trigger, {index: ed.selection.index});
  }

  function openConfig() {
    if (!ed.selection) return showHelp();
    return panelRequest("POST", ed.selection.type === "step" ? ed.cfg.urls.step : ed.cfg.urls.trigger,
      {index: ed.selection.index});
  }

  function refreshPanel() {
    var current = ed.sidePanel.querySelector(".panel");
    if (!current) return;
    if (current.id === "node-panel") {
      openNode();
    } else if (current.id === "settings-panel") {
      panelRequest("POST", ed.cfg.urls.settings);
    }
  }

  function showHelp() {
    var panel = ed.sidePanel.querySelector(".panel");
    if (panel && panel.id === "help-panel") return;
    settleForms().then(function () {
      htmx.swap(ed.sidePanel, helpHtml, {swapStyle: "innerHTML"});
    });
  }
  var helpHtml = ed.sidePanel.innerHTML;

  function openPanel(name) {
    ed.selection = null;
    ed.decorate();
    var verb = name === "settings" ? "POST" : "GET";
    return panelRequest(verb, ed.cfg.urls[name]);
  }

  ed.root.querySelectorAll("[data-panel]").forEach(function (button) {
    button.addEventListener("click", function () { openPanel(button.dataset.panel); });
  });

  document.body.addEventListener("editor:apply", function (e) {
    var d = e.detail || {};
    if (d.what === "step") {
      var current = ed.stepAt(d.index);
      if (!current || current.id !== d.id) return; // the canvas moved on meanwhile
      ed.change(function () {
        var next = clone(d.step);
        // Position and wiring belong to the canvas, which may have changed meanwhile.
        if (current.position) next.position = current.position; else delete next.position;
        if (current.after) next.after = current.after; else delete next.after;
        ed.model.steps[d.index] = next;
        if (d.renamed) ed.renameRefs(d.renamed[0], d.renamed[1]);
      }, {fromForm: true});
    } else if (d.what === "trigger") {
      if (d.index >= ed.model.triggers.length) return;
      ed.change(function () {
        var was = ed.model.triggers[d.index];
        var trigger = clone(d.trigger);
        // Its place belongs to the canvas, which may have moved it meanwhile.
        if (isObj(was) && was.position) trigger.position = was.position; else delete trigger.position;
        ed.model.triggers[d.index] = trigger;
      }, {fromForm: true});
    } else if (d.what === "workflow") {
      ed.change(function () {
        Object.keys(d.settings || {}).forEach(function (key) {
          var value = d.settings[key];
          if (value === null || value === undefined) delete ed.model[key];
          else ed.model[key] = value;
        });
      }, {render: false, fromForm: true});
      var title = document.getElementById("editor-title");
      if (title && ed.model.name) title.textContent = ed.model.name;
    }
  });

  document.body.addEventListener("editor:reload", function (e) {
    var d = e.detail || {};
    ed.commit();
    ed.past.push(JSON.stringify(ed.model));
    ed.future = [];
    ed.selection = null;
    ed.model = ed.normalize(d.definition);
    ed.revision++;
    if (typeof d.draftRevision === "number") ed.draftRevision = d.draftRevision;
    ed.clearConflict();
    if (d.nodes) ed.nodeProblems = d.nodes;
    if (d.problems) ed.allProblems = d.problems;
    ed.render();
    ed.updateHistoryButtons();
    ed.scheduleSave();
    var title = document.getElementById("editor-title");
    if (title && ed.model.name) title.textContent = ed.model.name;
    if (d.message) ed.notice(d.message, "ok");
  });

  document.body.addEventListener("editor:published", function (e) {
    var label = document.getElementById("editor-version");
    if (label) label.textContent = "live: v" + e.detail.version;
    ed.notice("Published v" + e.detail.version + ".", "ok");
  });

  // A try opens its run's page at once: that page follows the run live. What the canvas
  // still holds is saved first (the try stored the draft it ran, but edits may follow).
  document.body.addEventListener("editor:show-run", function (e) {
    if (!e.detail.url) return ed.showRun(e.detail.run, e.detail.origin);
    ed.flushSave().then(function () { window.location.assign(e.detail.url); });
  });

  ed.sidePanel.addEventListener("focusin", function (e) {
    if (e.target.matches("input[type=text], textarea")) ed.lastField = e.target;
  });

  ed.sidePanel.addEventListener("click", function (e) {
    var variable = e.target.closest(".var");
    if (variable) return insertVariable(variable.dataset.insert);
    var pick = e.target.closest(".run-pick");
    if (pick) return ed.showRun(Number(pick.dataset.run));
    if (e.target.closest('[data-action="edit-node"]')) return openConfig();
    var problem = e.target.closest("[data-problem-node]");
    if (problem) return selectFromProblem(problem.dataset.problemNode);
  });

  ed.sidePanel.addEventListener("change", function (e) {
    if (e.target.id === "follow-runs") ed.follow = e.target.checked;
  });

  function insertVariable(path) {
    var field = ed.lastField && document.contains(ed.lastField) ? lastField : ed.sidePanel.querySelector("#node-form textarea, #node-form input[type=text]");
    if (!field || field.disabled) return ed.notice("Click into a field first, then on a variable.");
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
    var n = ed.allProblems.length;
    problemsToggle.dataset.count = n;
    problemsToggle.textContent = n ? n + (n === 1 ? " problem" : " problems") : "No problems";
    problemsList.innerHTML = n ? "<h3>The draft cannot be published yet</h3><ul>" + ed.allProblems.map(function (p) {
      var m = /^\/(steps|triggers)\/(\d+)/.exec(p.path);
      var label = p.path;
      if (m && m[1] === "steps" && ed.stepAt(Number(m[2]))) label = "step " + ed.stepAt(Number(m[2])).id + p.path.slice(m[0].length);
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
    ed.select({type: parts[0] === "steps" ? "step" : "trigger", index: Number(parts[1])});
  }


  return {isDraftWrite, isPanelForm, settleForms, panelRequest, openNode, openConfig, refreshPanel, showHelp, openPanel, insertVariable, updateProblemsSummary, selectFromProblem};
}
