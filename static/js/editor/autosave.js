// Part of the editor page (main.js builds it with the page's shared state `ed`).
import {clone, esc, isObj, num} from "./util.js";
import * as graph from "./graph.js";
import * as nodes from "./nodes.js";

export function createAutosave(ed) {
  // --- autosave ---------------------------------------------------------------------------
  var saveTimer = null;
  var lastSaveFailed = false;

  function setStatus(state, text) {
    if (!ed.status) return;
    ed.status.dataset.state = state;
    ed.status.textContent = text;
  }

  function saveIdle() {
    return !ed.canEdit || (!saveTimer && !ed.saving && ed.savedRevision === ed.revision);
  }

  function scheduleSave() {
    if (!ed.canEdit) return;
    if (ed.conflict) return setStatus("conflict", "Not saved: " + whoOf(ed.conflict) + " changed the draft");
    setStatus("dirty", "Unsaved changes…");
    clearTimeout(saveTimer);
    saveTimer = setTimeout(saveNow, 500);
  }

  // `force` (only from the conflict banner's Overwrite) saves over someone else's revision.
  function saveNow(force) {
    force = force === true;
    clearTimeout(saveTimer);
    saveTimer = null;
    if (ed.saving) return ed.saving;
    // While the draft is someone else's newer revision, nothing is saved over it unasked.
    if (ed.conflict && !force) return Promise.resolve();
    var rev = ed.revision;
    setStatus("saving", force ? "Overwriting…" : "Saving…");
    ed.writes++;
    ed.saving = fetch(ed.cfg.urls.save, {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": ed.cfg.csrf},
      body: JSON.stringify({definition: ed.model, revision: rev, baseRevision: ed.draftRevision,
        force: force, client: ed.clientId}),
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
      ed.savedRevision = rev;
      ed.draftRevision = body.draftRevision;
      if (force) {
        var over = ed.conflict;
        clearConflict();
        if (over) ed.notice("Saved: your version replaced " + whoOf(over) + "'s.", "ok");
      }
      if (rev === ed.revision) {
        ed.nodeProblems = body.nodes;
        ed.allProblems = body.problems;
        ed.decorate();
        var time = new Date(body.savedAt).toLocaleTimeString();
        setStatus("saved", "Draft saved " + time + (ed.allProblems.length ? " · not publishable yet" : ""));
      }
    }).catch(function (err) {
      lastSaveFailed = true;
      // A conflict is for the person to settle: retrying would only be refused again.
      if (err.conflict) return onConflict(err.conflict);
      setStatus("error", "Not saved: " + err.message + " (trying again)");
      saveTimer = setTimeout(saveNow, 3000);
    }).then(function () {
      ed.saving = null;
      ed.writes--;
      judgeRemote();
      if (!lastSaveFailed && !ed.conflict && ed.savedRevision !== ed.revision && !saveTimer) saveNow();
    });
    return ed.saving;
  }

  function flushSave() {
    if (ed.conflict || saveIdle()) return Promise.resolve();
    var pending = ed.saving || saveNow();
    return pending.then(function () {
      return lastSaveFailed || ed.conflict || saveIdle() ? null : flushSave();
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
    if (!ed.canEdit) return;
    if (ed.conflict && info.revision < ed.conflict.revision) return;
    ed.conflict = info;
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
    ed.conflict = null;
    if (conflictBanner) conflictBanner.hidden = true;
  }

  // A revision someone else saved (heard over the socket): the next save would be refused,
  // so say so now. Never judged while a write of this page is out: it may be our own.
  function onDraftFrame(frame) {
    if (frame.client && frame.client === ed.clientId) return;
    if (!(frame.revision > ed.draftRevision)) return;
    if (ed.writes > 0) {
      ed.remoteLater = frame;
      return;
    }
    if (!ed.canEdit) return reloadDraft();
    onConflict({revision: frame.revision, by: frame.by, at: frame.at});
  }

  function judgeRemote() {
    if (ed.writes > 0 || !ed.remoteLater) return;
    var frame = ed.remoteLater;
    ed.remoteLater = null;
    onDraftFrame(frame);
  }

  // Reload: the stored draft replaces the canvas (an undo entry keeps the local version).
  function reloadDraft() {
    return (ed.saving || Promise.resolve()).then(function () {
      return fetch(ed.cfg.urls.save, {credentials: "same-origin", headers: {Accept: "application/json"}});
    }).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.json();
    }).then(function (body) {
      ed.commit();
      clearTimeout(saveTimer);
      saveTimer = null;
      if (ed.canEdit) {
        ed.past.push(JSON.stringify(ed.model));
        if (ed.past.length > ed.MAX_HISTORY) ed.past.shift();
        ed.future = [];
      }
      ed.model = ed.normalize(body.definition);
      ed.revision++;
      ed.savedRevision = ed.revision;
      ed.draftRevision = body.revision;
      lastSaveFailed = false;
      clearConflict();
      ed.nodeProblems = body.nodes;
      ed.allProblems = body.problems;
      if (ed.selection) {
        var list = ed.selection.type === "step" ? ed.model.steps : ed.model.triggers;
        if (ed.selection.index >= list.length) ed.selection = null;
      }
      ed.render();
      ed.updateHistoryButtons();
      ed.refreshPanel();
      var title = document.getElementById("editor-title");
      if (title && ed.model.name) title.textContent = ed.model.name;
      if (ed.canEdit) {
        setStatus("saved", "Draft saved" + (body.savedBy ? " by " + body.savedBy : "") + " " + clock(body.savedAt));
      }
    }).catch(function (err) {
      ed.notice("Could not load the draft: " + err.message);
    });
  }

  if (conflictBanner) {
    document.getElementById("conflict-reload").addEventListener("click", function () { reloadDraft(); });
    document.getElementById("conflict-overwrite").addEventListener("click", function () {
      ed.commit();
      (ed.saving || Promise.resolve()).then(function () { saveNow(true); });
    });
  }

  window.addEventListener("beforeunload", function (e) {
    if (!saveIdle()) {
      saveNow();
      e.preventDefault();
      e.returnValue = "";
    }
  });


  return {setStatus, saveIdle, scheduleSave, saveNow, flushSave, whoOf, clock, onConflict, clearConflict, onDraftFrame, judgeRemote, reloadDraft};
}
