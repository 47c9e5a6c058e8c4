/* Signalbox live sockets.
 *
 * Any element with data-live-socket="/ws/..." gets a WebSocket. Each frame from the server is
 * an HTML fragment: every top-level element with an id replaces (or, with
 * hx-swap-oob="afterbegin", is prepended into) the element of the page with that id. Every
 * frame is acknowledged ({"ack": frames received}); the server sends nothing more while two
 * frames are unacknowledged, so a slow page gets fewer, fresher frames instead of a queue.
 *
 * After a drop the socket reconnects (backoff with jitter) and the server sends a snapshot;
 * an element may name a resume attribute (data-live-resume="#el" with data-last-id) so the
 * server sends what was missed instead. The page's [data-live-indicator] follows the first
 * socket: connecting, live, reconnecting. A socket element marked data-live-indicator="off"
 * (the lineage panel, the flow map) is never the one followed, nor an indicator itself.
 *
 * For tests and the console: SignalboxLive.drop() closes every socket as a network drop
 * would; hold() keeps them closed until release().
 */
(function () {
  "use strict";
  var sockets = [];
  var held = false;
  var labels = {connecting: "connecting…", open: "live", closed: "reconnecting…", paused: "paused"};

  function indicate(state) {
    document.querySelectorAll('[data-live-indicator]:not([data-live-indicator="off"])').forEach(function (el) {
      el.dataset.state = state;
      el.textContent = labels[state] || state;
    });
  }

  function trim(target) {
    var max = parseInt(target.dataset.maxRows || "0", 10);
    if (!max) return;
    while (target.children.length > max) target.removeChild(target.lastElementChild);
  }

  // The elements of a frame to swap: its top-level elements with an id. A table cell or
  // row that follows a <tbody> in a frame (the flow's run cells after its new rows) is
  // wrapped by the HTML parser in a <tbody>/<tr> of its own, without an id: look inside.
  function parts(container) {
    var found = [];
    Array.prototype.slice.call(container.children).forEach(function (el) {
      if (el.id) found.push(el);
      else if (/^(TABLE|TBODY|THEAD|TFOOT|TR)$/.test(el.tagName)) found = found.concat(parts(el));
    });
    return found;
  }

  function apply(html) {
    var template = document.createElement("template");
    template.innerHTML = html;
    var swapped = [];
    parts(template.content).forEach(function (incoming) {
      var id = incoming.id;
      var target = id && document.getElementById(id);
      if (!target) return;
      var style = incoming.getAttribute("hx-swap-oob") || "outerHTML";
      if (style === "afterbegin") {
        var nodes = Array.prototype.slice.call(incoming.childNodes);
        var first = target.firstChild;
        nodes.forEach(function (node) { target.insertBefore(node, first); });
        nodes.forEach(function (node) { if (node.nodeType === 1 && window.htmx) htmx.process(node); });
        trim(target);
        swapped.push(target);
      } else if (style === "innerHTML") {
        target.replaceChildren.apply(target, Array.prototype.slice.call(incoming.childNodes));
        if (window.htmx) htmx.process(target);
        swapped.push(target);
      } else {
        incoming.removeAttribute("hx-swap-oob");
        target.replaceWith(incoming);
        if (window.htmx) htmx.process(incoming);
        swapped.push(incoming);
      }
    });
    swapped.forEach(function (el) {
      el.dispatchEvent(new CustomEvent("sb:live-swap", {bubbles: true, detail: {id: el.id}}));
    });
  }

  function LiveSocket(el, primary) {
    this.el = el;
    this.primary = primary;
    this.frames = 0;
    this.attempt = 0;
    this.stopped = false;
    this.ws = null;
    this.connect();
  }

  LiveSocket.prototype.url = function () {
    var path = this.el.dataset.liveSocket;
    var params = ["ack=1"];
    var resume = this.el.dataset.liveResume && document.querySelector(this.el.dataset.liveResume);
    if (resume && resume.dataset.lastId && resume.dataset.lastId !== "0") {
      params.push("after=" + encodeURIComponent(resume.dataset.lastId));
    }
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + location.host + path + (path.indexOf("?") >= 0 ? "&" : "?") + params.join("&");
  };

  LiveSocket.prototype.connect = function () {
    var self = this;
    if (self.stopped || held) return;
    if (self.primary) indicate("connecting");
    self.frames = 0;
    var ws = new WebSocket(self.url());
    self.ws = ws;
    ws.onopen = function () {
      self.attempt = 0;
      if (self.primary) indicate("open");
      self.el.dispatchEvent(new CustomEvent("sb:live-open", {bubbles: true}));
    };
    ws.onmessage = function (event) {
      self.frames += 1;
      try {
        apply(event.data);
      } finally {
        if (ws.readyState === 1) ws.send(JSON.stringify({ack: self.frames}));
      }
    };
    ws.onclose = function (event) {
      if (self.ws !== ws) return;
      self.ws = null;
      if (self.primary) indicate("closed");
      if (event.code === 4401 || event.code === 4403) {
        self.stopped = true;  // signed out or not allowed: reconnecting will not help
        return;
      }
      self.attempt += 1;
      var delay = Math.min(10000, 400 * Math.pow(2, self.attempt - 1));
      setTimeout(function () { self.connect(); }, delay / 2 + Math.random() * delay / 2);
    };
  };

  LiveSocket.prototype.send = function (message) {
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(message));
  };

  LiveSocket.prototype.close = function () {
    this.stopped = true;
    if (this.ws) this.ws.close();
  };

  function start(root) {
    (root || document).querySelectorAll("[data-live-socket]").forEach(function (el) {
      if (el.__live) return;
      var primary = !sockets.some(function (s) { return s.primary && !s.stopped; }) && el.dataset.liveIndicator !== "off";
      el.__live = new LiveSocket(el, primary);
      sockets.push(el.__live);
    });
  }

  function stopInside(root) {
    sockets.slice().forEach(function (socket) {
      if (root === socket.el || root.contains(socket.el)) {
        socket.close();
        sockets.splice(sockets.indexOf(socket), 1);
        socket.el.__live = null;
      }
    });
  }

  window.SignalboxLive = {
    sockets: sockets,
    socketFor: function (el) { return el && el.__live; },
    send: function (el, message) { if (el && el.__live) el.__live.send(message); },
    drop: function () {
      sockets.forEach(function (s) { if (s.ws) s.ws.close(); });
    },
    hold: function () { held = true; this.drop(); },
    release: function () {
      held = false;
      sockets.forEach(function (s) { if (!s.ws && !s.stopped) s.connect(); });
    },
    apply: apply
  };

  document.addEventListener("DOMContentLoaded", function () { start(document); });
  document.addEventListener("htmx:load", function (event) { start(event.target); });
  document.addEventListener("htmx:beforeCleanupElement", function (event) { stopInside(event.target); });
})();
