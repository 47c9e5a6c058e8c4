// The minimap (bottom right of the canvas) for graphs larger than the view: every node as a
// block in its kind's colour and the part of the canvas in view as a frame. A click or a
// drag on it brings that part of the graph into view.
const WIDTH = 200;
const HEIGHT = 130;
const PAD = 8;
const SVG = "http://www.w3.org/2000/svg";
const LARGE = 8; // nodes from which it is always shown

export function createMinimap(opts) {
  // opts: {wrap, canvas, df, nodeBoxes(), viewBox(), centreOn(point)}
  const box = document.createElement("div");
  box.id = "editor-minimap";
  box.className = "minimap";
  box.hidden = true;
  box.setAttribute("role", "navigation");
  box.setAttribute("aria-label", "Minimap: click to show that part of the workflow");
  box.title = "Minimap: click or drag to move the view";
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("width", WIDTH);
  svg.setAttribute("height", HEIGHT);
  box.appendChild(svg);
  opts.wrap.appendChild(box);
  let frame = null;
  let scale = 1;
  let origin = {x: 0, y: 0};

  function bounds(boxes, view) {
    const all = boxes.concat([view]);
    const minX = Math.min.apply(null, all.map(function (b) { return b.x; }));
    const minY = Math.min.apply(null, all.map(function (b) { return b.y; }));
    const maxX = Math.max.apply(null, all.map(function (b) { return b.x + b.w; }));
    const maxY = Math.max.apply(null, all.map(function (b) { return b.y + b.h; }));
    return {x: minX, y: minY, w: maxX - minX, h: maxY - minY};
  }

  function draw() {
    frame = null;
    const boxes = opts.nodeBoxes();
    const view = opts.viewBox();
    const fits = boxes.every(function (b) {
      return b.x >= view.x && b.y >= view.y && b.x + b.w <= view.x + view.w && b.y + b.h <= view.y + view.h;
    });
    box.hidden = !boxes.length || (fits && boxes.length < LARGE);
    if (box.hidden) return;
    const all = bounds(boxes, view);
    scale = Math.min((WIDTH - 2 * PAD) / all.w, (HEIGHT - 2 * PAD) / all.h);
    origin = {x: all.x - PAD / scale, y: all.y - PAD / scale};
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    boxes.forEach(function (b) {
      const r = rect(b, "mm-node " + (b.kind || ""));
      if (b.id) r.dataset.node = b.id;
      svg.appendChild(r);
    });
    svg.appendChild(rect(view, "mm-view"));
  }

  function rect(b, cls) {
    const r = document.createElementNS(SVG, "rect");
    r.setAttribute("x", ((b.x - origin.x) * scale).toFixed(1));
    r.setAttribute("y", ((b.y - origin.y) * scale).toFixed(1));
    r.setAttribute("width", Math.max(2, b.w * scale).toFixed(1));
    r.setAttribute("height", Math.max(2, b.h * scale).toFixed(1));
    r.setAttribute("class", cls);
    return r;
  }

  function update() {
    if (frame === null) frame = requestAnimationFrame(draw);
  }

  function goTo(e) {
    const at = svg.getBoundingClientRect();
    opts.centreOn({x: origin.x + (e.clientX - at.left) / scale, y: origin.y + (e.clientY - at.top) / scale});
    draw();
  }

  let dragging = false;
  svg.addEventListener("mousedown", function (e) {
    if (e.button !== 0) return;
    e.preventDefault();
    e.stopPropagation();
    dragging = true;
    goTo(e);
  });
  document.addEventListener("mousemove", function (e) { if (dragging) goTo(e); });
  document.addEventListener("mouseup", function () { dragging = false; });
  window.addEventListener("resize", update);
  return {update: update, element: box};
}
