/* The flag page's evaluation chart: drawn here from the insight REST answer (no library). */
(function () {
  "use strict";
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');

  /* Cleanup page: archive (hidden from SDKs) and restore, then show the page again. */
  document.addEventListener("click", function (ev) {
    var button = ev.target.closest ? ev.target.closest("button[data-archive], button[data-restore]") : null;
    if (!button) return;
    var env = encodeURIComponent(button.dataset.env);
    var key = button.dataset.archive || button.dataset.restore;
    var url = button.dataset.archive
      ? "/api/v1/environments/" + env + "/flags/" + encodeURIComponent(key) + "/archive"
      : "/api/v1/environments/" + env + "/archived/" + encodeURIComponent(key) + "/restore";
    button.disabled = true;
    fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Accept": "application/json", "X-CSRF-Token": csrfMeta ? csrfMeta.content : "" }
    }).then(function (r) {
      if (r.ok) { location.reload(); return; }
      return r.json().then(function (p) {
        button.disabled = false;
        var out = document.getElementById("cleanup-status");
        if (out) out.textContent = (p && p.detail) || ("HTTP " + r.status);
      });
    });
  });

  var section = document.getElementById("insight");
  if (!section) return;
  var SVG = "http://www.w3.org/2000/svg";
  var COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];
  var csrf = document.querySelector('meta[name="csrf-token"]');
  var path = "/api/v1/environments/" + encodeURIComponent(section.dataset.env) +
    "/flags/" + encodeURIComponent(section.dataset.flag) + "/insight?window=3600&step=60";

  function el(name, attrs) {
    var e = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }

  function draw(data) {
    var svg = document.getElementById("insight-chart");
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var rows = data.variations || [];
    var max = 1;
    rows.forEach(function (v) { v.series.forEach(function (n) { if (n > max) max = n; }); });
    var W = 600, H = 150, n = rows.length ? rows[0].series.length : 60;
    svg.appendChild(el("line", { x1: 0, y1: H, x2: W, y2: H, stroke: "#999", "stroke-width": 1 }));
    var legend = document.getElementById("insight-legend");
    legend.textContent = "";
    rows.forEach(function (v, i) {
      var color = COLORS[i % COLORS.length];
      var points = v.series.map(function (count, j) {
        var x = n > 1 ? (j * W) / (n - 1) : 0;
        var y = H - (count * (H - 10)) / max;
        return x.toFixed(1) + "," + y.toFixed(1);
      }).join(" ");
      svg.appendChild(el("polyline", {
        points: points, fill: "none", stroke: color, "stroke-width": 2,
        "data-variation": String(v.variation), "data-total": String(v.evaluations)
      }));
      var item = document.createElement("span");
      item.className = "legend";
      item.setAttribute("data-variation", String(v.variation));
      item.textContent = (v.variation === -1 ? "default" : "variation " + v.variation) +
        " (" + JSON.stringify(v.value) + "): " + v.evaluations + " evaluations, ~" +
        v.contexts + " contexts  ";
      item.style.color = color;
      legend.appendChild(item);
    });
    if (!rows.length) legend.textContent = "No evaluations reported in the last hour.";
    var apps = (data.applications || []).map(function (a) { return a.app || "(unnamed)"; });
    document.getElementById("insight-apps").textContent =
      apps.length ? "Used by: " + apps.join(", ") : "No application has reported this flag.";
  }

  function load() {
    fetch(path, {
      credentials: "same-origin",
      headers: { "Accept": "application/json", "X-CSRF-Token": csrf ? csrf.content : "" }
    }).then(function (r) { return r.ok ? r.json() : null; }).then(function (data) {
      if (data) draw(data);
    }, function () {});
  }
  load();
  setInterval(load, 5000);
})();
