// Fluxgate admin: the only script of the pages (the CSP allows no inline script).
"use strict";

// htmx requests carry the session's CSRF token in a header; plain forms carry a hidden field.
document.addEventListener("htmx:configRequest", (event) => {
  const meta = document.querySelector('meta[name="csrf-token"]');
  if (meta) event.detail.headers["X-CSRF-Token"] = meta.content;
});

// Forms that do something drastic ask first.
document.addEventListener("submit", (event) => {
  const message = event.target.getAttribute("data-confirm");
  if (message && !window.confirm(message)) event.preventDefault();
});

// Charts: data from <script type="application/json" id="...">, drawn by uPlot into the
// element whose data-chart names it.
const PALETTE = ["#3b5bdb", "#e67700", "#2b8a3e", "#c2255c", "#7048e8", "#0b7285", "#5c940d", "#862e9c"];

function drawChart(element) {
  const source = document.getElementById(element.getAttribute("data-chart"));
  if (!source || typeof uPlot === "undefined") return;
  const data = JSON.parse(source.textContent);
  if (!data.x.length) return;
  // Stacked bars: each series is drawn as the running sum of the ones before it.
  const stacked = [];
  let running = data.x.map(() => 0);
  for (const values of data.series.map((s) => s.values)) {
    running = running.map((sum, i) => sum + values[i]);
    stacked.push(running);
  }
  const series = [{}].concat(
    data.series.map((s, i) => ({
      label: s.label,
      stroke: PALETTE[i % PALETTE.length],
      fill: PALETTE[i % PALETTE.length] + "55",
      paths: uPlot.paths.bars({ size: [0.7, 60] }),
      value: (u, v, si, idx) => (idx == null ? "" : "$" + data.series[si - 1].values[idx].toFixed(6)),
    }))
  );
  const ordered = stacked.slice().reverse();
  const seriesOrdered = [series[0]].concat(series.slice(1).reverse());
  const width = Math.max(320, element.clientWidth);
  // eslint-disable-next-line no-new
  new uPlot(
    {
      width,
      height: 280,
      series: seriesOrdered,
      axes: [{}, { values: (u, ticks) => ticks.map((t) => "$" + t) }],
      scales: { x: { time: true } },
    },
    [data.x].concat(ordered),
    element
  );
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-chart]").forEach(drawChart);
});
