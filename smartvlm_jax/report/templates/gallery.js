// The gallery: filter by puzzle, skill and right/wrong, sort by confidence, one page of cards at a time
// (only the shown page's cards are in the document, so a page of thousands of cards stays quick).
(function () {
  "use strict";
  const cards = JSON.parse(document.getElementById("cards-data").textContent);
  const names = JSON.parse(document.getElementById("puzzle-names").textContent);
  const PAGE_SIZE = 48;
  const LETTERS = ["A", "B", "C", "D", "E"];
  const $ = (id) => document.getElementById(id);
  const controls = { puzzle: $("f-puzzle"), skill: $("f-skill"), status: $("f-status"), sort: $("f-sort") };
  let page = 0;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);  // strings become text: no markup from the data
    return node;
  }

  function selected() {
    const puzzle = controls.puzzle.value, skill = controls.skill.value, status = controls.status.value;
    const out = cards.filter((c) =>
      (!puzzle || String(c.p) === puzzle) && (!skill || c.s === skill) &&
      (!status || (status === "right") === c.ok));
    const sort = controls.sort.value;
    if (sort === "conf-desc") out.sort((a, b) => b.c - a.c);
    else if (sort === "conf-asc") out.sort((a, b) => a.c - b.c);
    return out;
  }

  function pct(x) { return (100 * x).toFixed(1) + "%"; }

  function topk(c) {
    const box = el("div", { class: "topk" });
    if (c.k.length && typeof c.k[0][0] === "number") {  // a sequence: each position's value and probability
      box.append("per position (predicted/true, probability): ");
      const row = el("div", { class: "seqpos" });
      for (const [v, t, p] of c.k) row.append(el("span", v === t ? {} : { class: "bad" }, `${v}/${t} ${pct(p)}`));
      box.append(row);
    } else {
      box.append(el("div", {}, "top " + c.k.length + ":"));
      for (const [v, p] of c.k) {
        const bar = el("i", { style: `width:${(100 * p).toFixed(1)}%` });
        box.append(el("div", { class: "bar" }, el("span", {}, v), el("span", {}, bar), el("span", {}, pct(p))));
      }
    }
    return box;
  }

  function card(c) {
    const node = el("div", { class: "card" + (c.ok ? "" : " wrong"), "data-puzzle": c.p, "data-instance": c.i,
      "data-correct": String(c.ok), "data-confidence": c.c });
    node.append(c.img ? el("img", { src: c.img, alt: `puzzle ${c.p} instance ${c.i}`, loading: "lazy" })
                      : el("div", { class: "noimg" }, "no image"));
    const name = names[String(c.p)];
    node.append(el("div", { class: "meta" }, `puzzle ${c.p}${name ? " " + name : ""} · ${c.s} · instance ${c.i}`));
    node.append(el("p", { class: "q" }, c.q));
    node.append(el("div", { class: "meta" }, `confidence ${pct(c.c)}`));
    const options = el("ol");
    c.o.forEach((text, j) => {
      const cls = [LETTERS[j] === c.a ? "true" : "", LETTERS[j] === c.l ? "chosen" : ""].join(" ").trim();
      options.append(el("li", cls ? { class: cls } : {}, `${LETTERS[j]}: ${text}`));
    });
    node.append(options);
    node.append(el("div", { class: "ans" },
      "true ", el("b", {}, `${c.a} (${c.t})`), " · predicted ",
      el("b", { class: c.ok ? "ok" : "bad" }, c.y + (c.l ? ` → ${c.l}` : " (no option)")),
      " · S ", c.ok ? "✓" : "✗", " · O ", c.ook ? "✓" : "✗"));
    node.append(topk(c));
    return node;
  }

  function render() {
    const chosen = selected();
    const pages = Math.max(1, Math.ceil(chosen.length / PAGE_SIZE));
    page = Math.min(page, pages - 1);
    const gallery = $("gallery");
    gallery.replaceChildren(...chosen.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE).map(card));
    $("match-count").textContent = String(chosen.length);
    $("page-info").textContent = `page ${page + 1} of ${pages}`;
    $("prev").disabled = page === 0;
    $("next").disabled = page >= pages - 1;
  }

  for (const control of Object.values(controls)) control.addEventListener("change", () => { page = 0; render(); });
  $("prev").addEventListener("click", () => { page -= 1; render(); });
  $("next").addEventListener("click", () => { page += 1; render(); });
  $("confidently-wrong").addEventListener("click", () => {
    controls.status.value = "wrong"; controls.sort.value = "conf-desc"; page = 0; render();
  });
  $("reset").addEventListener("click", () => {
    for (const control of Object.values(controls)) control.selectedIndex = 0;
    page = 0; render();
  });
  for (const link of document.querySelectorAll("a.pz")) {
    link.addEventListener("click", () => {
      controls.puzzle.value = link.dataset.puzzle; page = 0; render();
      $("gallery-head").scrollIntoView();
    });
  }
  render();
})();
