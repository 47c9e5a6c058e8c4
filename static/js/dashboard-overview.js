/* Overview charts (uPlot): read the JSON the server put in #overview-data, on load and each
 * time the live socket swaps the figures in; update the charts in place. */
(function () {
  "use strict";
  var charts = {};
  var palette = ["#3056d3", "#1f8a4c", "#b7791f", "#8e44ad", "#16a085", "#d35400", "#7f8c8d"];

  function read() {
    var el = document.getElementById("overview-data");
    if (!el) return null;
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }

  function width(el) { return Math.max(280, el.clientWidth - 8); }

  function draw(id, series, data) {
    var el = document.getElementById(id);
    if (!el || !window.uPlot) return;
    var key = series.map(function (s) { return s.label; }).join("|");
    var chart = charts[id];
    if (chart && chart.key === key) {
      chart.plot.setData(data);
      return;
    }
    if (chart) chart.plot.destroy();
    var opts = {
      width: width(el),
      height: 200,
      legend: {live: false},
      cursor: {drag: {x: false, y: false}},
      scales: {x: {time: true}},
      axes: [{}, {size: 50}],
      series: [{}].concat(series.map(function (s, i) {
        return {label: s.label, stroke: s.colour || palette[i % palette.length], width: 2,
                spanGaps: !!s.spanGaps, points: {show: false}};
      }))
    };
    charts[id] = {key: key, plot: new uPlot(opts, data, el)};
  }

  function render() {
    var d = read();
    if (!d) return;
    var x = d.times;
    var types = d.event_types;
    draw("chart-events",
      types.map(function (t) { return {label: t}; }),
      [x].concat(types.map(function (t) { return d.events_per_second[t]; })));
    draw("chart-runs",
      [{label: "started", colour: "#3056d3"}, {label: "succeeded", colour: "#1f8a4c"}, {label: "failed", colour: "#c4322b"}],
      [x, d.runs_per_minute.started, d.runs_per_minute.succeeded, d.runs_per_minute.failed]);
    draw("chart-latency",
      [{label: "p50", colour: "#1f8a4c", spanGaps: true}, {label: "p95", colour: "#b7791f", spanGaps: true}],
      [x, d.latency_ms.p50, d.latency_ms.p95]);
    document.body.dataset.overviewRendered = String((parseInt(document.body.dataset.overviewRendered || "0", 10) + 1));
  }

  document.addEventListener("DOMContentLoaded", render);
  document.addEventListener("sb:live-swap", function (event) {
    if (event.detail && event.detail.id === "overview-figures") render();
  });
  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (id) {
      var el = document.getElementById(id);
      if (el) charts[id].plot.setSize({width: width(el), height: 200});
    });
  });
})();
