// Where a new node goes: as near as possible to where it was wanted, inside the part of the
// canvas that is seen (never under a panel, the minimap or a banner), overlapping no node.
// Pure: boxes are {x, y, w, h} in canvas pixels.

const MARGIN = 24; // room kept around every node, for its wires
const STEP = 20;

export function overlaps(a, b, margin) {
  const m = margin || 0;
  return a.x < b.x + b.w + m && b.x < a.x + a.w + m && a.y < b.y + b.h + m && b.y < a.y + a.h + m;
}

function inside(box, area) {
  return box.x >= area.x && box.y >= area.y &&
    box.x + box.w <= area.x + area.w && box.y + box.h <= area.y + area.h;
}

// want: {x, y} top-left wished for; size: {w, h}; nodes: boxes of the nodes there;
// blocked: boxes covered by panels; area: the box of the canvas that is seen.
export function freeSpot(want, size, nodes, blocked, area) {
  function fits(x, y) {
    const box = {x: x, y: y, w: size.w, h: size.h};
    if (!inside(box, area)) return false;
    if (blocked.some(function (b) { return overlaps(box, b, 4); })) return false;
    return !nodes.some(function (n) { return overlaps(box, n, MARGIN); });
  }
  // Clamped into the seen area first: a drop at the right edge must not reach under the panel.
  const x0 = Math.min(Math.max(want.x, area.x), area.x + area.w - size.w);
  const y0 = Math.min(Math.max(want.y, area.y), area.y + area.h - size.h);
  const reach = Math.max(area.w, area.h);
  for (let r = 0; r <= reach; r += STEP) {
    // The ring at distance r (Chebyshev), nearest points first.
    const ring = [];
    for (let dx = -r; dx <= r; dx += STEP) {
      for (let dy = -r; dy <= r; dy += STEP) {
        if (Math.max(Math.abs(dx), Math.abs(dy)) !== r) continue;
        ring.push([dx, dy]);
      }
    }
    ring.sort(function (a, b) { return a[0] * a[0] + a[1] * a[1] - b[0] * b[0] - b[1] * b[1]; });
    for (const [dx, dy] of ring) {
      if (fits(x0 + dx, y0 + dy)) return {x: Math.round(x0 + dx), y: Math.round(y0 + dy)};
    }
  }
  // The seen area is full: right of every node, where nothing is.
  const right = nodes.reduce(function (m, n) { return Math.max(m, n.x + n.w); }, area.x);
  return {x: Math.round(right + 2 * MARGIN), y: Math.round(y0)};
}
