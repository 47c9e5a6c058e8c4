/* Live flow: pause/resume (the server stops sending and counts what arrives meanwhile),
 * keyboard access to the rows (Enter opens an event's detail like a click), and the flow
 * map's edge that the table is filtered to, outlined (again after every live redraw). */
(function () {
  "use strict";
  var EDGE_FILTERS = ["channel", "type", "workflow"];

  function markCurrentEdge() {
    var params = new URLSearchParams(location.search);
    document.querySelectorAll("#flow-map a.flow-edge").forEach(function (edge) {
      var current = EDGE_FILTERS.every(function (name) {
        return (edge.dataset[name] || "") === (params.get(name) || "").trim();
      });
      edge.classList.toggle("current", current);
      if (current) edge.setAttribute("aria-current", "true");
      else edge.removeAttribute("aria-current");
    });
  }

  document.addEventListener("sb:live-swap", function (event) {
    if (event.detail && event.detail.id === "flow-map") markCurrentEdge();
  });

  document.addEventListener("DOMContentLoaded", function () {
    markCurrentEdge();
    var button = document.getElementById("flow-pause");
    var live = document.getElementById("flow-live");
    if (!button || !live) return;
    button.addEventListener("click", function () {
      var pause = button.getAttribute("aria-pressed") !== "true";
      button.setAttribute("aria-pressed", pause ? "true" : "false");
      button.textContent = pause ? "Resume" : "Pause";
      window.SignalboxLive.send(live, {pause: pause});
    });
    // A reconnect starts unpaused on the server: keep the page's choice.
    live.addEventListener("sb:live-open", function () {
      if (button.getAttribute("aria-pressed") === "true") window.SignalboxLive.send(live, {pause: true});
    });
    document.getElementById("flow-rows").addEventListener("keydown", function (event) {
      var row = event.target.closest && event.target.closest("tr.flow-row");
      if (row && event.key === "Enter") row.click();
    });
  });
})();
