/* Live flow: pause/resume (the server stops sending and counts what arrives meanwhile), and
 * keyboard access to the rows (Enter opens an event's detail like a click). */
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
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
