// The splade-es relevance workbench. Document text only ever reaches the page through
// textContent / setAttribute: never as HTML.
"use strict";

const state = { index: "", q: "", configs: [], columns: [], judgments: {}, qrels: null };
const KEY = "splade-es-ui-key";

function el(tag, attributes, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    node.setAttribute(name, String(value));
  }
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function fixed(value, digits) {
  return Number(value).toFixed(digits);
}

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = "Bearer " + key;
  const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401 || response.status === 403) {
    document.getElementById("key-box").hidden = false;
  }
  if (!response.ok) {
    const reason = (answer.error && (answer.error.reason || answer.error.type)) || response.status;
    throw new Error(String(reason));
  }
  return answer;
}

function say(text) {
  document.getElementById("status").textContent = text;
}

// ---------------------------------------------------------------- searching
async function runSearch() {
  state.index = document.getElementById("index-input").value.trim();
  state.q = document.getElementById("query-input").value;
  state.configs = document.getElementById("configs-input").value.split(/\s+/).filter(Boolean);
  if (!state.q.trim()) {
    say("type a query");
    return;
  }
  rememberInUrl();
  say("searching…");
  try {
    const answer = await api("/_splade/ui/search", {
      index: state.index || null, q: state.q, configs: state.configs,
    });
    state.columns = answer.columns;
    state.judgments = answer.judgments || {};
    state.qrels = answer.qrels;
    render(answer.ndcg);
    say(`${answer.columns.length} configurations on ${answer.index}`);
  } catch (error) {
    say("search failed: " + error.message);
  }
}

function rememberInUrl() {
  const params = new URLSearchParams();
  if (state.index) params.set("index", state.index);
  params.set("q", state.q);
  for (const spec of state.configs) params.append("config", spec);
  history.replaceState(null, "", "?" + params.toString());
}

// ---------------------------------------------------------------- rendering
function render(ndcg) {
  renderQueryVector();
  const note = document.getElementById("judging-note");
  note.textContent = state.qrels
    ? `Judgments are saved to ${state.qrels}`
    : "Judging is off (no qrels file configured).";
  const holder = document.getElementById("columns");
  holder.replaceChildren(...state.columns.map(renderColumn));
  showNdcg(ndcg);
}

function renderQueryVector() {
  // One row per distinct set of kept tokens: a column pruned differently gets its own row,
  // its pruned tokens struck through.
  const section = document.getElementById("query-vector");
  const rows = new Map();
  for (const column of state.columns) {
    if (!column.query_tokens || !column.query_tokens.length) continue;
    const key = column.query_tokens.map((t) => (t.kept ? "+" : "-") + t.token).join(" ");
    if (!rows.has(key)) rows.set(key, { labels: [], tokens: column.query_tokens });
    rows.get(key).labels.push(column.label);
  }
  section.hidden = rows.size === 0;
  const first = rows.values().next().value;
  document.getElementById("query-vector-note").textContent = first
    ? `(${first.tokens.length} tokens)` : "";
  const holder = document.getElementById("query-tokens");
  holder.replaceChildren(...[...rows.values()].map(queryRow));
}

function queryRow(row) {
  const kept = row.tokens.filter((t) => t.kept).length;
  const pruned = row.tokens.length - kept;
  const line = el("div", { class: "query-row" });
  line.append(el("span", { class: "query-row-label" },
    row.labels.join(", ") + `: ${kept} kept` + (pruned ? `, ${pruned} pruned` : "")));
  for (const t of row.tokens) {
    const chip = el("span", {
      class: t.kept ? "token" : "token pruned",
      "data-testid": "query-token",
      "data-token": t.token,
      "data-weight": t.weight,
      "data-kept": t.kept,
      title: t.kept ? "kept" : "pruned away: not searched for",
    });
    chip.append(el("b", {}, t.token), el("span", {}, " " + fixed(t.weight, 3)));
    if (!t.kept) chip.append(el("em", {}, " pruned"));
    line.append(chip);
  }
  return line;
}

function renderColumn(column) {
  const node = el("section", { class: "column", "data-testid": "column", "data-label": column.label });
  const head = el("div", { class: "column-head" });
  head.append(el("h2", {}, column.label), el("div", { class: "index" }, column.index));
  if (column.fusion_note) head.append(el("div", { class: "fusion" }, column.fusion_note));
  head.append(el("div", { class: "ndcg", "data-testid": "ndcg", "data-label": column.label }, ""));
  node.append(head);
  if (column.error) {
    node.append(el("p", { class: "error", "data-testid": "column-error" }, column.error));
    return node;
  }
  if (!column.hits.length) node.append(el("p", { class: "empty" }, "no hits"));
  const list = el("ol", { class: "hits" });
  for (const hit of column.hits) list.append(renderHit(column, hit));
  node.append(list);
  return node;
}

function renderHit(column, hit) {
  const item = el("li", {
    class: "hit", "data-testid": "hit", "data-id": hit.id, "data-score": hit.score,
    tabindex: 0, title: "click: relevant / not relevant / clear",
  });
  const top = el("div", { class: "hit-top" });
  top.append(el("span", { class: "rank" }, "#" + hit.rank));
  top.append(changeBadge(hit));
  top.append(el("span", { class: "doc-id", "data-testid": "hit-id" }, hit.id));
  top.append(el("span", { class: "score", "data-testid": "score" }, fixed(hit.score, 4)));
  top.append(el("span", { class: "judgment", "data-testid": "judgment" }, ""));
  item.append(top, el("div", { class: "title", "data-testid": "title" }, hit.title));
  if (hit.contributions.length || hit.pruned.length) item.append(contributionBar(column, hit));
  item.addEventListener("click", () => judge(hit.id));
  item.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      judge(hit.id);
    }
  });
  markJudgment(item);
  return item;
}

function changeBadge(hit) {
  if (hit.change === undefined || hit.change === null) {
    return el("span", { class: hit.new ? "change new" : "change" }, hit.new ? "new" : "");
  }
  if (hit.change === 0) return el("span", { class: "change same" }, "=");
  const text = hit.change > 0 ? "▲" + hit.change : "▼" + -hit.change;
  return el("span", { class: hit.change > 0 ? "change up" : "change down" }, text);
}

function contributionBar(column, hit) {
  const box = el("div", { class: "contributions" });
  const total = hit.contributions.reduce((sum, c) => sum + c.contribution, 0);
  const bar = el("div", { class: "bar" });
  hit.contributions.forEach((c, n) => {
    const share = total > 0 ? (100 * c.contribution) / total : 0;
    const segment = el("span", {
      class: "segment tone" + (n % 6),
      "data-testid": "contribution",
      "data-token": c.token,
      "data-value": c.contribution,
      title: `${c.token}: ${fixed(c.query_weight, 4)} × ${fixed(c.doc_weight, 4)} = ${fixed(c.contribution, 4)}`,
    });
    segment.style.width = share + "%";
    if (share > 9) segment.textContent = c.token;
    bar.append(segment);
  });
  box.append(bar);
  const legend = el("div", { class: "legend" });
  for (const c of hit.contributions.slice(0, 6)) {
    legend.append(el("span", {}, `${c.token} ${fixed(c.contribution, 3)}`));
  }
  const what = column.scores_are_contributions ? "sum" : "SPLADE part";
  legend.append(el("span", { class: "sum", "data-testid": "contribution-sum" }, `${what} ${fixed(total, 4)}`));
  box.append(legend);
  if (hit.pruned.length) {
    const pruned = el("div", { class: "pruned-row" }, "pruned: ");
    for (const c of hit.pruned) {
      pruned.append(el("span", {
        class: "segment pruned", "data-testid": "pruned-contribution", "data-token": c.token,
        title: `pruned from the query: would add ${fixed(c.contribution, 4)}`,
      }, `${c.token} ${fixed(c.contribution, 3)}`));
    }
    box.append(pruned);
  }
  return box;
}

// ---------------------------------------------------------------- judging
function markJudgment(item) {
  const value = state.judgments[item.getAttribute("data-id")];
  item.classList.toggle("relevant", value !== undefined && value > 0);
  item.classList.toggle("not-relevant", value === 0);
  item.setAttribute("data-judgment", value === undefined ? "" : String(value));
  const mark = item.querySelector(".judgment");
  mark.textContent = value === undefined ? "" : (value > 0 ? "relevant" : "not relevant");
}

function nextJudgment(current) {
  if (current === undefined) return 1;
  if (current > 0) return 0;
  return null;
}

async function judge(docId) {
  if (!state.qrels) {
    say("judging is off: no qrels file configured");
    return;
  }
  const relevance = nextJudgment(state.judgments[docId]);
  const runs = {};
  for (const column of state.columns) {
    runs[column.label] = column.error ? [] : column.hits.map((h) => ({ id: h.id, score: h.score }));
  }
  try {
    const answer = await api("/_splade/ui/judge", { q: state.q, id: docId, relevance, runs });
    state.judgments = answer.judgments;
    document.querySelectorAll("[data-testid=hit]").forEach(markJudgment);
    showNdcg(answer.ndcg);
    say(`saved to ${answer.qrels} (query ${answer.query_id})`);
  } catch (error) {
    say("judgment not saved: " + error.message);
  }
}

function showNdcg(ndcg) {
  document.querySelectorAll("[data-testid=ndcg]").forEach((node) => {
    const value = (ndcg || {})[node.getAttribute("data-label")];
    node.setAttribute("data-value", value === null || value === undefined ? "" : value);
    node.textContent = value === null || value === undefined ? "nDCG@10 –" : "nDCG@10 " + fixed(value, 3);
  });
}

// ---------------------------------------------------------------- start
// The listeners are wired once (init); the key button only reloads the settings.
let started = false; // the first settings that load fill the inputs and run the URL's query

function init() {
  document.getElementById("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runSearch();
  });
  document.getElementById("key-button").addEventListener("click", () => {
    sessionStorage.setItem(KEY, document.getElementById("key-input").value);
    document.getElementById("key-box").hidden = true;
    loadSettings();
  });
  loadSettings();
}

async function loadSettings() {
  let settings = { index: null, configs: [] };
  try {
    settings = await api("/_splade/ui/settings", {});
  } catch (error) {
    say("could not read the settings: " + error.message);
    return;
  }
  if (started) {
    say("key accepted");
    return;
  }
  started = true;
  say("");
  const params = new URLSearchParams(location.search);
  document.getElementById("index-input").value = params.get("index") || settings.index || "";
  const configs = params.getAll("config");
  document.getElementById("configs-input").value = (configs.length ? configs : settings.configs).join(" ");
  const q = params.get("q");
  if (q) {
    document.getElementById("query-input").value = q;
    runSearch();
  }
}

document.addEventListener("DOMContentLoaded", init);
