// Per-puzzle deltas between two rows of the sweep, chosen on the page: the puzzles row A wins and loses.
(function () {
  "use strict";
  const perRow = JSON.parse(document.getElementById("per-row").textContent);
  const info = JSON.parse(document.getElementById("puzzle-info").textContent);
  const $ = (id) => document.getElementById(id);

  function cell(tag, text, cls) {
    const node = document.createElement(tag);
    node.textContent = text;
    if (cls) node.className = cls;
    return node;
  }

  function render() {
    const a = $("row-a").value, b = $("row-b").value, metric = $("delta-metric").value;
    const puzzles = Object.keys(perRow[a] || {}).filter((p) => p in (perRow[b] || {}));
    const rows = puzzles.map((p) => {
      const va = 100 * perRow[a][p][metric], vb = 100 * perRow[b][p][metric];
      return { p, va, vb, d: va - vb };
    }).sort((x, y) => y.d - x.d || Number(x.p) - Number(y.p));
    const table = $("delta-table");
    const head = document.createElement("tr");
    for (const [text, cls] of [["puzzle", ""], ["name", "l"], ["skill", "l"], [`${a} %`, ""], [`${b} %`, ""],
                               ["A − B", ""]]) head.append(cell("th", text, cls));
    const body = rows.map((r) => {
      const tr = document.createElement("tr");
      tr.className = r.d > 1e-9 ? "win" : r.d < -1e-9 ? "loss" : "tie";
      tr.dataset.puzzle = r.p;
      const about = info[r.p] || { name: "", skill: "" };
      tr.append(cell("td", r.p), cell("td", about.name, "l"), cell("td", about.skill, "l"),
                cell("td", r.va.toFixed(1)), cell("td", r.vb.toFixed(1)),
                cell("td", (r.d > 0 ? "+" : "") + r.d.toFixed(1), "d"));
      return tr;
    });
    table.replaceChildren(head, ...body);
    const wins = rows.filter((r) => r.d > 1e-9).length, losses = rows.filter((r) => r.d < -1e-9).length;
    $("delta-summary").textContent =
      `${a} wins ${wins}, loses ${losses}, ties ${rows.length - wins - losses} of ${rows.length} puzzles`;
  }

  for (const id of ["row-a", "row-b", "delta-metric"]) $(id).addEventListener("change", render);
  render();
})();
