// Part of the editor page (main.js builds it with the page's shared state `ed`): the
// toolbar's buttons, the keyboard shortcuts, and links that save the draft before leaving.
export function bindToolbar(ed) {
  var actions = {
    "undo": ed.undo,
    "redo": ed.redo,
    "delete": ed.deleteSelection,
    "layout": ed.autoLayout,
    "zoom-in": function () { ed.df.zoom_in(); },
    "zoom-out": function () { ed.df.zoom_out(); },
    "zoom-reset": function () { ed.df.zoom_reset(); },
    "fit": ed.fitView,
  };
  ed.root.querySelectorAll(".editor-toolbar [data-action]").forEach(function (button) {
    button.addEventListener("click", function () { actions[button.dataset.action](); });
  });

  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (t && (t.matches("input, textarea, select") || t.isContentEditable)) return;
    var key = e.key.toLowerCase();
    if ((e.ctrlKey || e.metaKey) && key === "z") {
      e.preventDefault();
      return e.shiftKey ? ed.redo() : ed.undo();
    }
    if ((e.ctrlKey || e.metaKey) && key === "y") {
      e.preventDefault();
      return ed.redo();
    }
    // Drawflow handles Delete itself while the canvas has the focus.
    if (e.key === "Delete" && !ed.canvas.contains(t)) ed.deleteSelection();
  });

  document.querySelectorAll("[data-flush-first-link]").forEach(function (a) {
    a.addEventListener("click", function (e) {
      if (ed.saveIdle()) return;
      e.preventDefault();
      ed.flushSave().then(function () { window.location.href = a.href; });
    });
  });
  document.body.addEventListener("htmx:afterSwap", function () {
    ed.sidePanel.querySelectorAll("[data-flush-first-link]").forEach(function (a) {
      if (a.dataset.bound) return;
      a.dataset.bound = "1";
      a.addEventListener("click", function (e) {
        if (ed.saveIdle()) return;
        e.preventDefault();
        ed.flushSave().then(function () { window.location.href = a.href; });
      });
    });
    ed.renderRunList();
  });

  return actions;
}
