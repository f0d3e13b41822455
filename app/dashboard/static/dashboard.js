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
// element whose data-chart names it, as stacked bars (the tallest drawn first, each series on
// top of the ones before it); the legend shows each series' own value.
const PALETTE = ["#3b5bdb", "#e67700", "#2b8a3e", "#c2255c", "#7048e8", "#0b7285", "#5c940d", "#862e9c"];

function drawChart(element) {
  const source = document.getElementById(element.getAttribute("data-chart"));
  if (!source || typeof uPlot === "undefined") return;
  const data = JSON.parse(source.textContent);
  if (!data.series.length) return;
  const cumulative = [];
  let running = data.x.map(() => 0);
  for (const series of data.series) {
    running = running.map((sum, i) => sum + series.values[i]);
    cumulative.push(running);
  }
  const order = data.series.map((_, i) => i).reverse();
  const series = [{ label: "day" }].concat(
    order.map((k) => ({
      label: data.series[k].label,
      stroke: PALETTE[k % PALETTE.length],
      fill: PALETTE[k % PALETTE.length] + "cc",
      paths: uPlot.paths.bars({ size: [0.7, 40] }),
      points: { show: false },
      value: (u, v, si, idx) => (idx == null ? "—" : "$" + data.series[k].values[idx].toFixed(6)),
    }))
  );
  new uPlot(
    {
      width: Math.max(320, element.clientWidth),
      height: 280,
      series,
      // Days are UTC days: label them in UTC, whatever the browser's own zone.
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      scales: { x: { time: true, range: (u, min, max) => [min - 43200, max + 43200] } },
      axes: [
        {
          // One label a day (or a week, or a month), as the UTC date.
          incrs: [86400, 7 * 86400, 30 * 86400],
          values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toISOString().slice(5, 10)),
        },
        { size: 70, values: (u, ticks) => ticks.map((t) => "$" + t) },
      ],
    },
    [data.x].concat(order.map((k) => cumulative[k])),
    element
  );
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-chart]").forEach(drawChart);
});
