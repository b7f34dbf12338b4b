/* Release plans and scheduled changes in the console: the plan timeline, its guards drawn as
 * inline SVG from the REST readings, the operation buttons, and cancel for scheduled changes.
 * Plain JavaScript, no library; API calls go through console.js (session + CSRF token). */
(function () {
  "use strict";
  var FW = window.flagwire;
  if (!FW) return;
  var SVG = "http://www.w3.org/2000/svg";
  var $ = function (sel, root) { return (root || document).querySelector(sel); };

  function text(tag, content, cls) {
    var e = document.createElement(tag);
    if (content !== undefined && content !== null) e.textContent = String(content);
    if (cls) e.className = cls;
    return e;
  }
  function svgEl(name, attrs) {
    var e = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }
  function pct(x) { return x === null || x === undefined ? "–" : (x * 100).toFixed(x < 0.001 ? 3 : 1) + "%"; }
  function clock(ms) { return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC"); }
  function envPath(env, suffix) { return "/environments/" + encodeURIComponent(env) + suffix; }

  /* ---- cancel a scheduled change (releases page and flag page) ------------ */

  document.addEventListener("click", function (ev) {
    var button = ev.target.closest ? ev.target.closest("button[data-cancel-change]") : null;
    if (!button) return;
    var id = button.dataset.cancelChange;
    FW.confirmAction("Cancel scheduled change " + id + "? Nothing will be written.", "Cancel the change")
      .then(function (ok) {
        if (!ok) return;
        button.disabled = true;
        FW.api("DELETE", envPath(button.dataset.env, "/schedule/" + encodeURIComponent(id))).then(function (res) {
          var out = $("#schedule-status");
          if (res.ok) {
            var row = button.closest("tr");
            if (row) { row.dataset.status = "cancelled"; row.cells[3].textContent = "cancelled"; }
            button.remove();
            if (out) out.textContent = "Cancelled " + id + ".";
            FW.say("Cancelled scheduled change " + id + ".");
          } else {
            button.disabled = false;
            if (out) out.textContent = FW.problemText(res);
            FW.say(FW.problemText(res), "error");
          }
        });
      });
  });

  /* ---- the flag page: its scheduled changes and plans --------------------- */

  function flagSection() {
    var head = $("#flag-head");
    var editor = $("#editor");
    if (!head || !editor || !editor.dataset.env) return;
    var env = editor.dataset.env, key = editor.dataset.key;
    var section = text("section", null, "card");
    section.id = "flag-releases";
    section.appendChild(text("h2", "Scheduled changes and release plans"));
    var plans = text("ul", null, "small");
    plans.id = "flag-plans";
    section.appendChild(plans);
    var table = text("table", null, "schedule");
    table.id = "flag-schedule";
    section.appendChild(table);
    var status = text("p", "", "small");
    status.id = "schedule-status";
    status.setAttribute("role", "status");
    section.appendChild(status);
    var insight = $("#insight");
    (insight || editor).insertAdjacentElement(insight ? "beforebegin" : "afterend", section);
    var q = "?flag=" + encodeURIComponent(key);
    FW.api("GET", envPath(env, "/releases" + q)).then(function (res) {
      var list = (res.ok && res.data.plans) || [];
      if (!list.length) plans.appendChild(text("li", "No release plan.", "muted"));
      list.slice(0, 5).forEach(function (p) {
        var li = text("li");
        var a = text("a", p.id, "mono");
        a.href = "/envs/" + encodeURIComponent(env) + "/releases/" + encodeURIComponent(p.id);
        li.appendChild(a);
        li.appendChild(document.createTextNode(" " + p.status.replace("_", " ") + ", stage " +
          (p.stage + 1) + " of " + p.stages.length + (p.reason ? " — " + p.reason : "")));
        plans.appendChild(li);
      });
    });
    FW.api("GET", envPath(env, "/schedule" + q)).then(function (res) {
      var changes = (res.ok && res.data.changes) || [];
      var head = text("tr");
      ["Due", "Change", "Status", "Created by", ""].forEach(function (h) { head.appendChild(text("th", h)); });
      var thead = text("thead"); thead.appendChild(head); table.appendChild(thead);
      var body = text("tbody"); table.appendChild(body);
      if (!changes.length) {
        var tr = text("tr"), td = text("td", "Nothing is scheduled for this flag.", "muted");
        td.colSpan = 5; tr.appendChild(td); body.appendChild(tr);
      }
      changes.forEach(function (c) {
        var tr = text("tr");
        tr.dataset.change = c.id; tr.dataset.status = c.status;
        tr.appendChild(text("td", c.due_at));
        tr.appendChild(text("td", c.action + (c.action === "restore" ? " to v" + c.version : " " + JSON.stringify(c.change)), "mono small"));
        tr.appendChild(text("td", c.status + (c.summary ? " · " + c.summary : "") + (c.reason ? " · " + c.reason : "")));
        tr.appendChild(text("td", c.created_by || ""));
        var cell = text("td");
        if (c.status === "pending") {
          var b = text("button", "Cancel");
          b.type = "button"; b.dataset.cancelChange = c.id; b.dataset.env = env;
          cell.appendChild(b);
        }
        tr.appendChild(cell);
        body.appendChild(tr);
      });
    });
  }

  /* ---- the plan page ------------------------------------------------------- */

  var root = $("#plan");
  var labels = [];
  var plan = null;
  var readings = [];

  function serving(p) {
    var st = p.stages[p.stage];
    var parts = [];
    var segs = [];
    p.stages.slice(0, p.stage + 1).forEach(function (s) { segs = segs.concat(s.segments || []); });
    if (segs.length) parts.push("segments " + segs.join(", "));
    parts.push(st.percent + "% of the rest");
    var name = labels[p.variation] !== undefined ? labels[p.variation] : "variation " + p.variation;
    return "new variation \u201c" + name + "\u201d to " + parts.join(" and ");
  }

  function drawStages(p) {
    var ol = $("#plan-stages");
    ol.textContent = "";
    var now = Date.now();
    p.stages.forEach(function (s, i) {
      var li = text("li");
      li.dataset.stage = String(i);
      var state = i < p.stage || p.status === "completed" ? "done" : i === p.stage ? "current" : "next";
      li.className = "stage " + state;
      if (state === "current") li.setAttribute("aria-current", "step");
      li.appendChild(text("b", s.name));
      var what = (s.segments && s.segments.length ? "segments " + s.segments.join(", ") + " + " : "") +
        s.percent + "%" + (s.hold ? ", hold " + Math.round(s.hold) + " s" : "") +
        (s.approval ? ", needs approval" : "") +
        (s.guards && s.guards.length ? ", " + s.guards.length + " guard" + (s.guards.length > 1 ? "s" : "") : "");
      li.appendChild(text("span", " " + what, "muted small"));
      if (state === "current" && (p.status === "running" || p.status === "paused") && s.hold) {
        var until = p.status === "paused" && p.paused_ms ? p.paused_ms : now;
        var held = Math.max(0, Math.min(s.hold, (until - p.stage_started_ms) / 1000));
        var bar = document.createElement("progress");
        bar.max = s.hold; bar.value = held;
        bar.setAttribute("aria-label", "hold of stage " + s.name);
        li.appendChild(bar);
        li.appendChild(text("span", " " + Math.round(held) + " of " + Math.round(s.hold) + " s" +
          (s.approval ? (p.approved ? ", approved" : ", waiting for approval") : ""), "small hold"));
      }
      ol.appendChild(li);
    });
  }

  function drawButtons(p) {
    var allowed = {
      pause: p.status === "running",
      resume: p.status === "paused",
      advance: p.status === "running",
      approve: (p.status === "running" || p.status === "paused") && p.stages[p.stage].approval && !p.approved,
      rollback: p.status === "running" || p.status === "paused",
      abandon: p.status === "running" || p.status === "paused"
    };
    Array.prototype.forEach.call(document.querySelectorAll("#plan-actions button"), function (b) {
      b.disabled = !allowed[b.dataset.op];
    });
  }

  function drawEvents(p) {
    var body = $("#plan-events tbody");
    body.textContent = "";
    p.events.slice().reverse().forEach(function (e) {
      var tr = text("tr");
      tr.dataset.what = e.what;
      tr.appendChild(text("td", e.at));
      tr.appendChild(text("td", e.what));
      tr.appendChild(text("td", e.by));
      tr.appendChild(text("td", p.stages[e.stage] ? p.stages[e.stage].name : e.stage));
      tr.appendChild(text("td", (e.summary || "") + (e.detection_to_applied_ms !== undefined ?
        " (" + Math.round(e.detection_to_applied_ms) + " ms from detection)" : "")));
      tr.appendChild(text("td", e.reason || ""));
      body.appendChild(tr);
    });
  }

  function guardsOf(p) {
    var out = (p.guards || []).map(function (g) { return g; });
    p.stages.forEach(function (s) { (s.guards || []).forEach(function (g) { out.push(g); }); });
    return out;
  }

  function chart(guard, points) {
    var W = 600, H = 140, PAD = 6;
    var svg = svgEl("svg", { viewBox: "0 0 " + W + " " + (H + 20), width: "100%", height: String(H + 20),
      role: "img", "aria-label": guard.name + " over time", "class": "guard-chart" });
    svg.appendChild(svgEl("line", { x1: 0, y1: H, x2: W, y2: H, stroke: "#999", "stroke-width": 1 }));
    if (!points.length) return svg;
    var series = guard.kind === "event"
      ? [{ key: "new", color: "#dc2626" }, { key: "old", color: "#2563eb" }]
      : [{ key: "value", color: "#dc2626" }];
    var bound = guard.kind === "event" ? null : (guard.max !== undefined ? guard.max : guard.min);
    var t0 = points[0].at_ms, t1 = points[points.length - 1].at_ms;
    var max = bound !== null && bound !== undefined ? Math.abs(bound) : 0;
    points.forEach(function (r) { series.forEach(function (s) { if (typeof r[s.key] === "number" && r[s.key] > max) max = r[s.key]; }); });
    max = max || 1;
    function x(t) { return t1 > t0 ? ((t - t0) * (W - 2 * PAD)) / (t1 - t0) + PAD : W / 2; }
    function y(v) { return H - (v * (H - 10)) / max; }
    if (bound !== null && bound !== undefined) {
      svg.appendChild(svgEl("line", { x1: 0, y1: y(bound), x2: W, y2: y(bound), stroke: "#e9a23b",
        "stroke-dasharray": "4 3", "stroke-width": 1, "data-bound": String(bound) }));
    }
    series.forEach(function (s) {
      var pts = points.filter(function (r) { return typeof r[s.key] === "number"; })
        .map(function (r) { return x(r.at_ms).toFixed(1) + "," + y(r[s.key]).toFixed(1); });
      if (!pts.length) return;
      svg.appendChild(svgEl("polyline", { points: pts.join(" "), fill: "none", stroke: s.color,
        "stroke-width": 2, "data-series": s.key, "data-points": String(pts.length) }));
    });
    points.forEach(function (r) {
      if (r.breach) {
        svg.appendChild(svgEl("circle", { cx: x(r.at_ms), cy: 8, r: 5, fill: "#dc2626", "data-breach": "1" }));
      }
    });
    var label = svgEl("text", { x: 2, y: H + 15, "font-size": 11, fill: "#555" });
    label.textContent = clock(t0) + "  →  " + clock(t1) + "   max " +
      (guard.kind === "event" && guard.stat !== "mean" ? pct(max) : max.toPrecision(3));
    svg.appendChild(label);
    return svg;
  }

  function drawGuards(p) {
    var box = $("#plan-guards");
    var guards = guardsOf(p);
    if (!guards.length) return;
    box.textContent = "";
    guards.forEach(function (g) {
      var points = readings.filter(function (r) { return r.guard === g.name; });
      var card = text("div", null, "card guard");
      card.dataset.guard = g.name;
      var last = points.length ? points[points.length - 1] : null;
      var head = text("h3", g.name);
      card.appendChild(head);
      var mean = g.stat === "mean";
      var desc = g.kind === "event"
        ? (mean ? "mean value of \u201c" + g.event + "\u201d" : "rate of \u201c" + g.event + "\u201d per evaluation") +
          ", new (red) vs old (blue); " + (mean ? "Welch's t-test" : "z-test") + " at " +
          (g.confidence * 100) + "%, at least " + g.min_samples + (mean ? " events" : " evaluations") + " each" +
          (g.margin ? ", margin " + (mean ? g.margin : pct(g.margin)) : "") + "; on a breach: " + g.action
        : g.query + (g.max !== undefined ? " ≤ " + g.max : " ≥ " + g.min) + "; on a breach: " + g.action;
      card.appendChild(text("p", desc, "muted small"));
      var now = text("p", null, "small guard-value");
      if (!last) now.textContent = "No reading yet.";
      else if (g.kind === "event") {
        var fmt = mean ? function (x) { return x === null || x === undefined ? "–" : Number(x).toPrecision(4); } : pct;
        var stat = mean ? last.t : last.z;
        now.textContent = "new " + fmt(last.new) + " vs old " + fmt(last.old) + ", n = " +
          Number(last.n).toLocaleString("en") +
          (stat === null || stat === undefined ? " (not enough data yet)" : ", " + (mean ? "t" : "z") + " = " + stat.toFixed(2)) +
          (last.breach ? " — breached" : "");
      } else {
        now.textContent = "value " + last.value + (last.breach ? " — breached" : "");
      }
      card.appendChild(now);
      card.appendChild(chart(g, points));
      box.appendChild(card);
    });
  }

  function draw() {
    if (!plan) return;
    var st = $("#plan-status");
    st.textContent = plan.status.replace("_", " ");
    st.className = "plan-status " + plan.status;
    root.dataset.status = plan.status;
    root.dataset.stage = String(plan.stage);
    $("#plan-serving").textContent = plan.status === "running" || plan.status === "paused" ? serving(plan) : "";
    $("#plan-reason").textContent = plan.reason || "";
    drawStages(plan);
    drawButtons(plan);
    drawGuards(plan);
    drawEvents(plan);
  }

  function refresh() {
    var env = root.dataset.env, id = encodeURIComponent(root.dataset.plan);
    return Promise.all([
      FW.api("GET", envPath(env, "/releases/" + id)),
      FW.api("GET", envPath(env, "/releases/" + id + "/readings"))
    ]).then(function (res) {
      if (res[0].ok) plan = res[0].data;
      if (res[1].ok) readings = res[1].data.readings || [];
      draw();
    });
  }

  var CONFIRM = {
    rollback: "Roll back: write the flag exactly as it was before the plan, in one write, and end the plan?",
    abandon: "Abandon: end the plan and leave the flag as it is now?",
    advance: "Advance now: write the next stage, hold or approval notwithstanding?"
  };

  function operate(button) {
    var op = button.dataset.op;
    var ask = CONFIRM[op] ? FW.confirmAction(CONFIRM[op], button.textContent) : Promise.resolve(true);
    ask.then(function (ok) {
      if (!ok) return;
      button.disabled = true;
      var path = envPath(root.dataset.env, "/releases/" + encodeURIComponent(root.dataset.plan) + "/" + op);
      FW.api("POST", path).then(function (res) {
        if (res.ok) {
          plan = res.data;
          var e = plan.events[plan.events.length - 1];
          FW.say(button.textContent + ": done" + (e && e.summary ? " — " + e.summary : "") + ".");
          draw();
        } else {
          FW.say(FW.problemText(res), "error");
          refresh();
        }
      });
    });
  }

  if (root) {
    plan = JSON.parse($("#plan-data").textContent);
    labels = JSON.parse($("#labels-data").textContent);
    document.getElementById("plan-actions").addEventListener("click", function (ev) {
      var b = ev.target.closest ? ev.target.closest("button[data-op]") : null;
      if (b && !b.disabled) operate(b);
    });
    draw();
    refresh();
    setInterval(refresh, 2000);
  } else {
    flagSection();
  }
})();
