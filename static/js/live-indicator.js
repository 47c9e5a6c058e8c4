// Show the state of the page's WebSocket in its "live" indicator. The listeners sit on the
// document, so they catch the ws extension's events from any element. (A static file, not an
// inline script: the Content-Security-Policy allows no inline script.)
(function () {
  var labels = {connecting: "connecting…", open: "live", closed: "reconnecting…"};
  function show(state) {
    document.querySelectorAll('[data-live-indicator]:not([data-live-indicator="off"])').forEach(function (el) {
      el.dataset.state = state;
      el.textContent = labels[state];
    });
  }
  document.addEventListener("htmx:wsConnecting", function () { show("connecting"); });
  document.addEventListener("htmx:wsOpen", function () { show("open"); });
  document.addEventListener("htmx:wsClose", function () { show("closed"); });
})();
