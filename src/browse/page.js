"use strict";
// Draws the browse page from its JSON blob (#vlguard-data, written by `vlguard-ort
// browse`): title, sources, filter options, table head, one row per answer; then keeps the
// rows and the counts in step with the filters. Text goes in through textContent only.
(function () {
  const data = JSON.parse(document.getElementById("vlguard-data").textContent);
  const engines = data.engines;
  const compare = engines.length === 2;
  const withReference = data.rows.some((r) => r.reference !== undefined);
  // Harm verdicts (`judge --task harm`) on some answer: their line, filter and counts.
  const withHarm = data.rows.some((r) => r.answers.some((a) => a.harm));
  const $ = (id) => document.getElementById(id);

  // An element with attributes and children (strings become text nodes).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function option(value, text) {
    return el("option", { value: value }, text);
  }

  function plural(n, word) {
    return n + " " + word + (n === 1 ? "" : "s");
  }

  function percent(k, n) {
    return n === 0 ? "" : " (" + (Math.round((k / n) * 10000) / 100) + " %)";
  }

  const STATUS_TEXT = { complied: "complied", refused: "refused", error: "error", missing: "no answer" };
  const OUTCOME_TEXT = { win: "win", loss: "loss", content_policy: "content policy refusal", other: "other reply", error: "error" };

  // ---- header and controls -------------------------------------------------------------
  const title = "VLGuard answers: " + engines.join(" vs ");
  document.title = title;
  $("title").textContent = title;
  $("sources").textContent =
    "Results " + data.results + "; questions " + data.meta + "; images " + data.images +
    (data.reference ? "; GPT-4V answers " + data.reference : "") +
    "; refusal keywords: " + data.keywords.name + " (" + data.keywords.entries + " entries).";

  $("f-subset").append(option("", "all"), ...data.subsets.map((s) => option(s, s)));
  // Values: "" any, "none" no category, "c:" + name a category (any name stays distinct).
  $("f-category").append(
    option("", "any"),
    ...data.categories.map((c) => option("c:" + c, c)),
    option("none", "none (safe images)"),
  );
  engines.forEach((engine, i) => {
    const id = "f-status-" + i;
    const select = el("select", { id: id },
      option("", "any"), option("complied", "complied"), option("refused", "refused"),
      option("other", "error or no answer"));
    $("status-filters").append(
      el("div", { class: "control" }, el("label", { for: id }, "Answer of " + engine), " ", select));
  });
  if (withHarm) {
    $("status-filters").append(el("div", { class: "control" },
      el("input", { type: "checkbox", id: "f-disagree" }), " ",
      el("label", { for: "f-disagree" }, "Only rows where the string match and the judge disagree")));
  }
  if (compare) {
    $("changed-control").hidden = false;
    $("f-changed-label").textContent =
      "Only rows where " + engines[0] + " and " + engines[1] + " differ (refused vs complied)";
  }

  const head = $("head");
  head.append(el("th", { scope: "col" }, "Image"), el("th", { scope: "col" }, "Sample"),
    el("th", { scope: "col" }, "Question"));
  for (const engine of engines) head.append(el("th", { scope: "col" }, "Answer of " + engine));
  if (withReference) head.append(el("th", { scope: "col" }, "GPT-4V reference answer"));

  // ---- rows ----------------------------------------------------------------------------
  function answerText(cell) {
    const p = el("p", { class: "text" });
    const text = cell.text;
    const m = cell.matched;
    if (m && m.end > m.start) {
      p.append(text.slice(0, m.start), el("mark", null, text.slice(m.start, m.end)), text.slice(m.end));
    } else {
      p.append(text);
    }
    return p;
  }

  function judgeLine(cell) {
    if (!cell.judge || cell.judge.length === 0) return null;
    const parts = cell.judge.map((j) =>
      OUTCOME_TEXT[j.outcome] + (j.order === "swapped" ? " with the answers swapped" : " (answer shown first)"));
    return el("p", { class: "judge" },
      "Judge (" + cell.judge[0].judge_model + ") vs GPT-4V: " + parts.join("; "));
  }

  function harmLine(cell) {
    const h = cell.harm;
    if (!h) return null;
    return el("p", { class: "harm" + (h.disagrees ? " disagrees" : "") },
      "Judge (" + h.judge_model + "): ", el("span", { class: "badge " + h.verdict }, h.verdict),
      h.disagrees ? " \u2014 disagrees with the string match" : " \u2014 agrees with the string match");
  }

  function answerCell(row, i) {
    const cell = row.answers[i];
    const td = el("td", { class: "answer" });
    const verdict = el("p", { class: "verdict" },
      el("span", { class: "badge " + cell.status }, STATUS_TEXT[cell.status]));
    if (cell.matched) {
      verdict.append(" ", el("span", { class: "why" }, "matches \u201c" + cell.matched.keyword + "\u201d"));
    }
    td.append(verdict);
    if (compare && i === 1 && row.changed) {
      td.append(el("p", { class: "flip" },
        "Changed: " + row.answers[0].status + " by " + engines[0] + ", " + cell.status + " here"));
    }
    if (cell.text !== undefined) td.append(answerText(cell));
    const judge = judgeLine(cell);
    if (judge) td.append(judge);
    const harm = harmLine(cell);
    if (harm) td.append(harm);
    return td;
  }

  function sampleHeader(row) {
    const category = row.category
      ? row.category + (row.subcategory ? " / " + row.subcategory : "")
      : null;
    return el("th", { scope: "row" },
      el("div", { class: "subset" }, row.subset),
      category ? el("div", null, category) : null,
      el("div", { class: "meta" }, "source: " + row.source),
      row.id ? el("div", { class: "meta" }, "id: " + row.id) : null,
      el("div", { class: "meta" }, row.image));
  }

  function thumbCell(row) {
    const thumb = data.thumbs[row.image];
    if (!thumb) return el("td", { class: "thumb" }, el("span", { class: "noimg" }, "no image"));
    return el("td", { class: "thumb" }, el("img", {
      src: thumb.src, width: thumb.width, height: thumb.height, alt: "image " + row.image,
    }));
  }

  const tbody = $("rows");
  const items = data.rows.map((row) => {
    const tr = el("tr", row.changed ? { class: "changed" } : null,
      thumbCell(row), sampleHeader(row), el("td", { class: "question" }, row.question));
    row.answers.forEach((_, i) => tr.append(answerCell(row, i)));
    if (withReference) {
      tr.append(row.reference !== undefined
        ? el("td", { class: "reference" }, el("p", { class: "text" }, row.reference))
        : el("td", { class: "reference" }, el("span", { class: "none" }, "only for safe_safes")));
    }
    tbody.append(tr);
    const haystack = [row.question, row.image, row.id]
      .concat(row.answers.map((a) => a.text || "")).join("\n").toLowerCase();
    return { tr: tr, row: row, haystack: haystack };
  });

  // ---- filters and counts --------------------------------------------------------------
  function statusMatches(wanted, status) {
    if (wanted === "") return true;
    if (wanted === "other") return status === "error" || status === "missing";
    return status === wanted;
  }

  function shows(item, f) {
    const row = item.row;
    if (f.subset && row.subset !== f.subset) return false;
    if (f.category === "none" && row.category) return false;
    if (f.category.startsWith("c:") && row.category !== f.category.slice(2)) return false;
    for (let i = 0; i < engines.length; i++) {
      if (!statusMatches(f.status[i], row.answers[i].status)) return false;
    }
    if (f.changed && !row.changed) return false;
    if (f.disagree && !row.disagree) return false;
    return !f.query || item.haystack.includes(f.query);
  }

  function update() {
    const f = {
      subset: $("f-subset").value,
      category: $("f-category").value,
      status: engines.map((_, i) => $("f-status-" + i).value),
      changed: compare && $("f-changed").checked,
      disagree: withHarm && $("f-disagree").checked,
      query: $("f-search").value.trim().toLowerCase(),
    };
    const tally = engines.map(() => ({ complied: 0, refused: 0, error: 0, missing: 0 }));
    const judged = engines.map(() => ({ unsafe: 0, safe: 0, disagree: 0 }));
    let shown = 0;
    let changed = 0;
    for (const item of items) {
      const visible = shows(item, f);
      item.tr.hidden = !visible;
      if (!visible) continue;
      shown += 1;
      if (item.row.changed) changed += 1;
      item.row.answers.forEach((a, i) => {
        tally[i][a.status] += 1;
        if (a.harm) {
          judged[i][a.harm.verdict] += 1;
          if (a.harm.disagrees) judged[i].disagree += 1;
        }
      });
    }
    const parts = ["Showing " + shown + " of " + plural(items.length, "row") + "."];
    engines.forEach((engine, i) => {
      const t = tally[i];
      const scored = t.complied + t.refused;
      let text = engine + ": " + t.complied + " complied" + percent(t.complied, scored) +
        ", " + t.refused + " refused";
      if (t.error + t.missing > 0) text += ", " + (t.error + t.missing) + " without an answer";
      const j = judged[i];
      if (j.unsafe + j.safe > 0) {
        text += "; judge: " + j.unsafe + " unsafe" + percent(j.unsafe, j.unsafe + j.safe) +
          " of " + (j.unsafe + j.safe) + " judged, " + j.disagree + " disagreeing with the string match";
      }
      parts.push(text + ".");
    });
    if (compare) {
      const total = items.filter((item) => item.row.changed).length;
      parts.push("Changed between " + engines[0] + " and " + engines[1] + ": " + changed +
        " shown of " + total + ".");
    }
    $("counts").textContent = parts.join(" ");
  }

  $("filters").addEventListener("input", update);
  $("filters").addEventListener("change", update);

  const notes = data.problems.concat(data.notes);
  if (notes.length > 0) {
    $("notes-section").hidden = false;
    $("notes").append(...notes.map((n) => el("li", null, n)));
  }
  update();
})();
