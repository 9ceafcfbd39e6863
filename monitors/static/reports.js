// The saved Evidently reports (GET /api/dashboard/reports): newest first, each linked to its HTML
// (opens offline) and JSON, with the periods compared and the columns that drifted.
"use strict";

const REPORTS_REFRESH_MS = 60e3;

function reportItem(r) {
  const li = document.createElement("li");
  li.className = "report-item";
  li.dataset.name = r.name;
  const time = document.createElement("time");
  time.textContent = new Date(r.generated_at).toLocaleString([], { hour12: false });
  const html = document.createElement("a");
  html.href = r.html;
  html.textContent = r.name;
  html.className = "report-html";
  const json = document.createElement("a");
  json.href = r.json;
  json.textContent = "JSON";
  const span = (p) => `${new Date(p.start).toLocaleString([], { hour12: false })} (${p.requests} requests)`;
  const drifted = r.drifted.length ? `drifted: ${r.drifted.join(", ")}` : "no column drifted";
  li.append(time, " ", html, " · ", json);
  li.append(` · ${span(r.current)} vs ${span(r.reference)}${r.version ? ` · ${r.version}` : ""} · ${drifted}`);
  return li;
}

async function refreshReports() {
  const list = document.getElementById("evidently-reports");
  try {
    const response = await fetch("/api/dashboard/reports", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const body = await response.json();
    const items = body.evidently.map(reportItem);
    if (!items.length) {
      const empty = document.createElement("li");
      empty.className = "empty";
      empty.textContent = "none yet (atalaia report evidently, or the scheduler's job)";
      items.push(empty);
    }
    list.replaceChildren(...items);
    list.dataset.loaded = "true";
  } catch (err) {
    list.replaceChildren(Object.assign(document.createElement("li"), { className: "empty", textContent: `${err}` }));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  refreshReports();
  setInterval(refreshReports, REPORTS_REFRESH_MS);
});
