// Ticking failed runs in the run list for a bulk replay. Rows are replaced by live frames
// (a run changes, a reconnect sends the whole list), so the ticked ids live here and are
// put back on every swap; the form sends them to /replays/ as ?run=…&run=….
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("tick-replay");
  if (!form) return;
  const ticked = new Set();
  const count = document.getElementById("ticked-count");
  const replay = document.getElementById("replay-ticked");
  const untick = document.getElementById("untick-all");
  const boxes = () => document.querySelectorAll('input[name="run"][form="tick-replay"]');

  const show = () => {
    boxes().forEach((box) => { box.checked = ticked.has(box.value); });
    count.textContent = ticked.size ? `${ticked.size} run(s) ticked` : "No run ticked";
    replay.disabled = untick.disabled = ticked.size === 0;
  };
  document.addEventListener("change", (e) => {
    const box = e.target;
    if (!(box instanceof HTMLInputElement) || box.getAttribute("form") !== "tick-replay") return;
    if (box.checked) ticked.add(box.value); else ticked.delete(box.value);
    show();
  });
  // Boxes of rows that are not on the page any more still count: send them as hidden fields.
  form.addEventListener("submit", () => {
    form.querySelectorAll("input[type=hidden][name=run]").forEach((el) => el.remove());
    const onPage = new Set(Array.from(boxes()).map((box) => box.value));
    ticked.forEach((id) => {
      if (onPage.has(id)) return;
      const field = document.createElement("input");
      Object.assign(field, {type: "hidden", name: "run", value: id});
      form.appendChild(field);
    });
  });
  untick.addEventListener("click", () => { ticked.clear(); show(); });
  document.addEventListener("sb:live-swap", show);
  show();
});
