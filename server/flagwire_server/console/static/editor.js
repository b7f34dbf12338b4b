/* flagwire console: the flag and segment editor.
 * The document (JSON embedded by the page) is the model; the form is rendered from it,
 * inputs write back into it, and Save sends it with PUT (If-Match: its version).
 * Every input carries data-path (the JSON path the server names in its errors). */
(function () {
  "use strict";

  var fw = window.flagwire;
  var form = document.getElementById("editor");
  if (!form || !fw) return;
  var KIND = form.getAttribute("data-kind"); // "flag" | "segment"
  var ENV = form.getAttribute("data-env");
  var KEY = form.getAttribute("data-key");
  var catalog = JSON.parse(document.getElementById("catalog-data").textContent);
  var base = JSON.parse(document.getElementById("doc-data").textContent); // as last seen on the server
  var doc = clone(base);
  var latest = null; // a newer server version seen while the form was dirty
  var dirty = false;
  var saving = false;
  var inflight = null; // a change of this document seen while our save was in flight
  var seq = 0;

  var SERVER = ["version", "created_at", "updated_at", "updated_by"];
  var NUMBER_OPS = ["lt", "lte", "gt", "gte"];
  var DATE_OPS = ["before", "after"];
  var OP_LABELS = {
    "in": "is one of", "starts_with": "starts with", "ends_with": "ends with", "contains": "contains",
    "matches": "matches regex", "lt": "<", "lte": "≤", "gt": ">", "gte": "≥", "before": "before (date)",
    "after": "after (date)", "semver_eq": "semver =", "semver_lt": "semver <", "semver_gt": "semver >",
    "segment_match": "in segment"
  };

  function clone(v) { return JSON.parse(JSON.stringify(v)); }

  /* ---- tiny DOM builder ---- */
  function h(tag, attrs) {
    var el = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") el.textContent = v;
      else if (k.slice(0, 2) === "on") el.addEventListener(k.slice(2), v);
      else if (k === "value") el.value = v;
      else if (k === "checked") el.checked = !!v;
      else el.setAttribute(k, v === true ? "" : v);
    });
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined || c === false) continue;
      (Array.isArray(c) ? c : [c]).forEach(function (x) {
        if (x !== null && x !== undefined && x !== false) el.appendChild(typeof x === "string" ? document.createTextNode(x) : x);
      });
    }
    return el;
  }
  function uid(prefix) { return prefix + "-" + (++seq); }
  function changed() {
    if (!dirty) { dirty = true; document.getElementById("save-bar").classList.add("dirty"); }
  }
  function field(labelText, input, help) {
    if (!input.id) input.id = uid("f");
    return h("div", { "class": "field" }, h("label", { "for": input.id, text: labelText }), input,
      help ? h("small", { "class": "muted", text: help }) : null);
  }
  function button(text, onclick, cls, label) {
    return h("button", { type: "button", "class": cls || "", text: text, onclick: onclick, "aria-label": label || null });
  }

  /* ---- variation values ---- */
  function vkind() {
    var v = (doc.variations || [])[0];
    if (v === true || v === false) return "bool";
    if (typeof v === "number") return "number";
    if (typeof v === "string") return "string";
    return "json";
  }
  function vlabel(i) {
    var v = (doc.variations || [])[i];
    if (v === undefined) return "#" + i + " (missing)";
    return "#" + i + " " + (typeof v === "string" ? v : JSON.stringify(v));
  }
  function variationSelect(value, onchange, path, allowNone) {
    var sel = h("select", { "data-path": path, onchange: function () {
      onchange(sel.value === "" ? null : Number(sel.value)); changed();
    } });
    if (allowNone) sel.appendChild(h("option", { value: "", text: "none: serve the caller's default" }));
    (doc.variations || []).forEach(function (_, i) {
      sel.appendChild(h("option", { value: String(i), text: vlabel(i) }));
    });
    sel.value = value === null || value === undefined ? "" : String(value);
    return sel;
  }

  /* ---- sections ---- */
  function section(title, hint, half) {
    var s = h("fieldset", { "class": "section card" + (half ? " half" : "") }, h("legend", { text: title }));
    if (hint) s.appendChild(h("p", { "class": "muted small", text: hint }));
    return s;
  }

  function basics() {
    var s = section("About", null, true);
    s.appendChild(field("Name", h("input", { value: doc.name || "", "data-path": "name",
      oninput: function (e) { doc.name = e.target.value; changed(); } })));
    s.appendChild(field("Description", h("textarea", { rows: "2", "data-path": "description", value: doc.description || "",
      oninput: function (e) { doc.description = e.target.value; changed(); } })));
    s.appendChild(field("Tags (comma separated)", h("input", { value: (doc.tags || []).join(", "), "data-path": "tags",
      oninput: function (e) { doc.tags = e.target.value.split(",").map(function (t) { return t.trim(); }).filter(Boolean); changed(); } })));
    if (KIND === "flag") {
      // Client-side keys ship inside web pages: they evaluate (OFREP) only the flags marked here.
      s.appendChild(h("div", { "class": "field check" }, h("label", {}, h("input", { type: "checkbox",
        checked: doc.client_side === true, "data-path": "client_side", id: "client-side",
        onchange: function (e) { doc.client_side = e.target.checked; changed(); } }),
        " Visible to client-side keys (web pages, OFREP)")));
    }
    return s;
  }

  function variations() {
    var s = section("Variations", "The values this flag can serve. Rules, targets and rollouts refer to them by number.", true);
    var kind = vkind();
    var list = h("ol", { "class": "items", start: "0" });
    if (kind === "bool") {
      s.appendChild(h("p", { "class": "boolvars", "data-path": "variations" },
        doc.variations.map(function (v, i) { return h("span", { "class": "tag", text: "#" + i + " " + JSON.stringify(v) }); }),
        " boolean"));
      list = null;
    }
    if (list) (doc.variations || []).forEach(function (v, i) {
      var path = "variations[" + i + "]";
      var input;
      if (kind === "bool") {
        input = h("select", { "data-path": path, onchange: function () { doc.variations[i] = input.value === "true"; changed(); } },
          h("option", { value: "true", text: "true" }), h("option", { value: "false", text: "false" }));
        input.value = String(v);
      } else if (kind === "number") {
        input = h("input", { type: "number", step: "any", value: String(v), "data-path": path,
          oninput: function () { doc.variations[i] = input.value === "" ? input.value : Number(input.value); changed(); } });
      } else if (kind === "string") {
        input = h("input", { value: v, "data-path": path, oninput: function () { doc.variations[i] = input.value; changed(); } });
      } else {
        input = h("textarea", { rows: "2", "class": "mono", value: JSON.stringify(v), "data-path": path, "data-json": "1",
          oninput: function () { doc.variations[i] = { __raw: input.value }; changed(); } });
      }
      list.appendChild(h("li", { "class": "item" }, field("Variation #" + i, input),
        (doc.variations.length > 1 && kind !== "bool") ? button("Remove", function () {
          doc.variations.splice(i, 1); changed(); render();
        }, "link danger", "Remove variation #" + i) : null));
    });
    if (list) s.appendChild(list);
    if (kind !== "bool") {
      s.appendChild(button("Add variation", function () {
        var d = { number: 0, string: "", json: {} }[kind];
        doc.variations.push(d); changed(); render(); focusLast("[data-path^='variations[']");
      }));
    }
    s.appendChild(field("Off variation (served while the flag is off)",
      variationSelect(doc.off_variation, function (v) { doc.off_variation = v; }, "off_variation", true)));
    return s;
  }

  function prerequisites() {
    var s = section("Prerequisites", "This flag serves its off variation unless each of these flags serves the given variation.", true);
    var list = h("ul", { "class": "items" });
    var flagKeys = Object.keys(catalog.flags || {}).sort();
    (doc.prerequisites = doc.prerequisites || []).forEach(function (pre, i) {
      var path = "prerequisites[" + i + "]";
      var keySel = h("select", { "data-path": path + ".key", onchange: function () { pre.key = keySel.value; pre.variation = 0; changed(); render(); } });
      var keys = flagKeys.indexOf(pre.key) >= 0 || !pre.key ? flagKeys : flagKeys.concat([pre.key]);
      keys.forEach(function (k) { keySel.appendChild(h("option", { value: k, text: k })); });
      keySel.value = pre.key || "";
      var varSel = h("select", { "data-path": path + ".variation", onchange: function () { pre.variation = Number(varSel.value); changed(); } });
      ((catalog.flags || {})[pre.key] || []).forEach(function (label, j) {
        varSel.appendChild(h("option", { value: String(j), text: "#" + j + " " + label }));
      });
      varSel.value = String(pre.variation);
      list.appendChild(h("li", { "class": "item row", "data-path": path },
        field("Flag", keySel), field("must serve", varSel),
        button("Remove", function () { doc.prerequisites.splice(i, 1); changed(); render(); }, "link danger", "Remove prerequisite " + (i + 1))));
    });
    s.appendChild(list);
    if (flagKeys.length) {
      s.appendChild(button("Add prerequisite", function () {
        doc.prerequisites.push({ key: flagKeys[0], variation: 0 }); changed(); render();
      }));
    } else {
      s.appendChild(h("p", { "class": "muted small", text: "No other flags in this environment." }));
    }
    return s;
  }

  function lines(text) {
    return text.split(/[\n,]/).map(function (t) { return t.trim(); }).filter(Boolean);
  }

  function targets() {
    var s = section("Individual targets", "Context keys that always get a given variation (one per line).", true);
    var list = h("ul", { "class": "items" });
    (doc.targets = doc.targets || []).forEach(function (t, i) {
      var path = "targets[" + i + "]";
      list.appendChild(h("li", { "class": "item row", "data-path": path },
        field("Serve", variationSelect(t.variation, function (v) { t.variation = v; }, path + ".variation")),
        field("to context keys", h("textarea", { rows: "2", value: (t.values || []).join("\n"), "data-path": path + ".values",
          oninput: function (e) { t.values = lines(e.target.value); changed(); } })),
        button("Remove", function () { doc.targets.splice(i, 1); changed(); render(); }, "link danger", "Remove target " + (i + 1))));
    });
    s.appendChild(list);
    s.appendChild(button("Add target", function () { doc.targets.push({ variation: 0, values: [] }); changed(); render(); focusLast("textarea[data-path$='.values']"); }));
    return s;
  }

  function clauseValues(op, text) {
    return lines(text).map(function (v) {
      if (NUMBER_OPS.indexOf(op) >= 0 && v !== "" && !isNaN(Number(v))) return Number(v);
      if (DATE_OPS.indexOf(op) >= 0 && /^\d+$/.test(v)) return Number(v);
      return v;
    });
  }

  function clauses(rule, path) {
    var wrap = h("div", { "class": "clauses" });
    rule.clauses = rule.clauses || [];
    rule.clauses.forEach(function (c, j) {
      var cp = path + ".clauses[" + j + "]";
      var op = h("select", { "data-path": cp + ".op", onchange: function () {
        c.op = op.value;
        if (c.op === "segment_match") delete c.attribute; else if (c.attribute === undefined) c.attribute = "key";
        c.values = clauseValues(c.op, valuesInput.value); changed(); render();
      } });
      (catalog.operators || []).forEach(function (o) { op.appendChild(h("option", { value: o, text: OP_LABELS[o] || o })); });
      op.value = c.op;
      var valuesInput = h("textarea", { rows: "2", value: (c.values || []).join("\n"), "data-path": cp + ".values", "class": "mono",
        oninput: function () { c.values = clauseValues(c.op, valuesInput.value); changed(); } });
      var help = c.op === "segment_match" ? "segment keys: " + ((catalog.segments || []).join(", ") || "none yet") :
        c.op === "matches" ? "regular expressions, one per line" : "one value per line";
      var attr = c.op === "segment_match" ? null : field("Attribute", h("input", { value: c.attribute || "", "data-path": cp + ".attribute", spellcheck: "false",
        oninput: function (e) { c.attribute = e.target.value; changed(); } }));
      wrap.appendChild(h("div", { "class": "clause", "data-path": cp },
        h("span", { "class": "joiner", text: j === 0 ? "If" : "and" }),
        attr,
        h("div", { "class": "field check" }, h("label", {}, h("input", { type: "checkbox", checked: !!c.negate, "data-path": cp + ".negate",
          onchange: function (e) { c.negate = e.target.checked; changed(); } }), " not")),
        field("Operator", op),
        field("Values", valuesInput, help),
        button("Remove clause", function () { rule.clauses.splice(j, 1); changed(); render(); }, "link danger", "Remove clause " + (j + 1) + " of " + path)));
    });
    wrap.appendChild(button("Add clause", function () {
      rule.clauses.push({ attribute: "key", op: "in", values: [], negate: false }); changed(); render();
    }, "small"));
    return wrap;
  }

  function rolloutTotal(serve) {
    return ((serve.rollout || {}).variations || []).reduce(function (a, s) { return a + (Number(s.weight) || 0); }, 0);
  }

  function serveEditor(serve, path, title) {
    var box = h("div", { "class": "serve" });
    var mode = h("select", { "data-path": path + (serve.rollout ? ".rollout" : ".variation"), onchange: function () {
      if (mode.value === "rollout") {
        var n = (doc.variations || []).length, each = Math.floor(100000 / n);
        delete serve.variation;
        serve.rollout = { bucket_by: "key", variations: (doc.variations || []).map(function (_, i) {
          return { variation: i, weight: i === 0 ? 100000 - each * (n - 1) : each };
        }) };
      } else {
        delete serve.rollout;
        serve.variation = Number(mode.value);
      }
      changed(); render();
    } });
    (doc.variations || []).forEach(function (_, i) { mode.appendChild(h("option", { value: String(i), text: "variation " + vlabel(i) })); });
    mode.appendChild(h("option", { value: "rollout", text: "a percentage rollout" }));
    mode.value = serve.rollout ? "rollout" : String(serve.variation);
    box.appendChild(field(title, mode));
    if (serve.rollout) {
      var slots = serve.rollout.variations = serve.rollout.variations || [];
      var grid = h("div", { "class": "rollout", "data-path": path + ".rollout.variations", role: "group", "aria-label": "Rollout percentages" });
      var totalEl = h("p", { "class": "total", "aria-live": "polite" });
      var showTotal = function () {
        var t = rolloutTotal(serve);
        totalEl.textContent = "Total: " + (t / 1000) + "%" + (t === 100000 ? "" : " — must be 100%");
        totalEl.className = "total " + (t === 100000 ? "good" : "bad");
      };
      (doc.variations || []).forEach(function (_, i) {
        var slot = slots.filter(function (s) { return s.variation === i; })[0];
        var k = slots.indexOf(slot);
        var input = h("input", { type: "number", min: "0", max: "100", step: "0.001", inputmode: "decimal",
          value: slot ? String(slot.weight / 1000) : "0", "data-path": path + ".rollout.variations[" + (k < 0 ? slots.length : k) + "].weight",
          "class": "pct", oninput: function () {
            var w = Math.round(Number(input.value) * 1000);
            if (!slot) { slot = { variation: i, weight: 0 }; slots.push(slot); }
            slot.weight = isNaN(w) ? input.value : w;
            changed(); showTotal();
          } });
        grid.appendChild(field(vlabel(i) + " %", input));
      });
      grid.appendChild(totalEl);
      showTotal();
      box.appendChild(grid);
      box.appendChild(field("Bucket by attribute", h("input", { value: serve.rollout.bucket_by || "key", "data-path": path + ".rollout.bucket_by",
        oninput: function (e) { serve.rollout.bucket_by = e.target.value; changed(); } })));
    }
    return box;
  }

  function rules() {
    var s = section("Rules", "Evaluated top to bottom; the first rule whose clauses all match decides.");
    var list = h("ol", { "class": "items rules" });
    (doc.rules = doc.rules || []).forEach(function (rule, i) {
      var path = "rules[" + i + "]";
      var li = h("li", { "class": "item rule", "data-path": path },
        h("div", { "class": "rulehead" },
          h("h3", { text: "Rule " + (i + 1) }),
          field("Description", h("input", { value: rule.description || "", "data-path": path + ".description",
            oninput: function (e) { rule.description = e.target.value; changed(); } })),
          h("div", { "class": "ruleactions" },
            i > 0 ? button("↑", function () { move(doc.rules, i, -1); }, "small", "Move rule " + (i + 1) + " up") : null,
            i < doc.rules.length - 1 ? button("↓", function () { move(doc.rules, i, 1); }, "small", "Move rule " + (i + 1) + " down") : null,
            button("Remove rule", function () { doc.rules.splice(i, 1); changed(); render(); }, "link danger", "Remove rule " + (i + 1)))),
        clauses(rule, path),
        KIND === "flag" ? serveEditor(rule, path, "then serve") : null);
      list.appendChild(li);
    });
    s.appendChild(list);
    s.appendChild(button("Add rule", function () {
      var r = { clauses: [{ attribute: "key", op: "in", values: [], negate: false }] };
      if (KIND === "flag") r.variation = 0;
      doc.rules.push(r); changed(); render(); focusLast("input[data-path$='.clauses[0].attribute']");
    }));
    return s;
  }

  function move(arr, i, d) {
    var x = arr[i]; arr[i] = arr[i + d]; arr[i + d] = x; changed(); render();
  }

  function fallthrough() {
    var s = section("Default rule", "What everyone else gets while the flag is on.");
    doc.fallthrough = doc.fallthrough || { variation: 0 };
    s.appendChild(serveEditor(doc.fallthrough, "fallthrough", "Serve"));
    return s;
  }

  function segmentKeys() {
    var s = section("Members", "Context keys, one per line. Excluded wins over included and rules.", true);
    ["included", "excluded"].forEach(function (name) {
      s.appendChild(field(name === "included" ? "Included keys" : "Excluded keys",
        h("textarea", { rows: "4", value: (doc[name] || []).join("\n"), "data-path": name, "class": "mono",
          oninput: function (e) { doc[name] = lines(e.target.value); changed(); } })));
    });
    return s;
  }

  function saveBar() {
    return h("div", { "class": "savebar", id: "save-bar" },
      h("button", { type: "submit", "class": "primary", id: "save", text: "Save changes" }),
      button("Discard changes", function () { doc = clone(latest || base); if (latest) { base = latest; latest = null; } dirty = false; render(); }, "", null),
      button("Delete " + KIND, remove, "danger right", null));
  }

  function focusLast(sel) {
    var all = form.querySelectorAll(sel);
    if (all.length) all[all.length - 1].focus();
  }

  function render() {
    var focused = document.activeElement && form.contains(document.activeElement) ? document.activeElement : null;
    var active = focused ? focused.getAttribute("data-path") : null;
    var activeId = focused ? focused.id : null;
    form.textContent = "";
    form.appendChild(h("div", { "class": "form-errors", "data-path": "" }));
    form.appendChild(basics());
    if (KIND === "flag") {
      form.appendChild(variations());
      form.appendChild(prerequisites());
      form.appendChild(targets());
      form.appendChild(rules());
      form.appendChild(fallthrough());
    } else {
      form.appendChild(segmentKeys());
      form.appendChild(rules());
    }
    form.appendChild(saveBar());
    if (dirty) document.getElementById("save-bar").classList.add("dirty");
    var again = active ? form.querySelector('[data-path="' + CSS.escape(active) + '"]')
      : activeId ? document.getElementById(activeId) : null;
    if (again) again.focus();
  }

  /* ---- save ---- */
  function body() {
    var out = clone(doc);
    SERVER.forEach(function (k) { delete out[k]; });
    return out;
  }

  function localErrors(out) {
    var errs = [];
    if (KIND === "flag") {
      (out.variations || []).forEach(function (v, i) {
        if (v && typeof v === "object" && "__raw" in v) {
          try { out.variations[i] = JSON.parse(v.__raw); } catch (e) { errs.push({ path: "variations[" + i + "]", message: "not valid JSON: " + e.message }); }
        }
      });
      var check = function (serve, path) {
        if (serve && serve.rollout) {
          var t = rolloutTotal(serve);
          // LaunchDarkly's weights may sum to anything (its last slot takes the rest).
          if (t !== 100000 && out.semantics !== "launchdarkly") errs.push({ path: path + ".rollout.variations", message: "percentages add up to " + (t / 1000) + "%; they must add up to 100%" });
        }
      };
      (out.rules || []).forEach(function (r, i) { check(r, "rules[" + i + "]"); });
      check(out.fallthrough, "fallthrough");
    }
    return errs;
  }

  function save(ev) {
    ev.preventDefault();
    var out = body();
    var errs = localErrors(out);
    if (errs.length) {
      fw.showErrors(form, errs, form.querySelector(".form-errors"));
      fw.say("Not saved: fix the " + errs.length + " problem" + (errs.length > 1 ? "s" : "") + " marked below.", "error");
      return;
    }
    var send = function () {
      if (saving) return;
      saving = true;
      fw.say("Saving…", "busy");
      var path = fw.envPath("/" + KIND + "s/" + encodeURIComponent(KEY) + "?wait=2");
      fw.api("PUT", path, out, { "If-Match": '"' + base.version + '"' }).then(function (res) {
        saving = false;
        var seen = inflight;
        inflight = null;
        if (seen) setTimeout(function () { external(seen); }, 0);
        if (res.ok) {
          base = res.data[KIND] || res.data.flag || res.data.segment || out;
          doc = clone(base); latest = null; dirty = false;
          render();
          updateHead(base);
          fw.say(fw.propagationText(res, "Saved version " + (res.data.version || base.version)), "ok");
        } else if (res.status === 409) {
          fw.say("Not saved: someone else changed this " + KIND + " (now version " + (res.data.current_version || "?") + "). Load it and redo your edit.", "error");
          document.getElementById("stale").hidden = false;
        } else {
          fw.showErrors(form, res.data.errors || [], form.querySelector(".form-errors"));
          var n = (res.data.errors || []).length;
          fw.say("Not saved: " + (n ? n + " problem" + (n > 1 ? "s" : "") + " marked below." : fw.problemText(res)), "error");
        }
      });
    };
    send();
  }

  function remove() {
    fw.confirmAction("Delete the " + KIND + " " + KEY + " from " + ENV + "? Clients fall back to their defaults.", "Delete").then(function (ok) {
      if (!ok) return;
      fw.api("DELETE", fw.envPath("/" + KIND + "s/" + encodeURIComponent(KEY) + "?wait=2")).then(function (res) {
        if (res.ok) location.href = "/envs/" + encodeURIComponent(ENV) + "/" + KIND + "s";
        else fw.say("Not deleted: " + fw.problemText(res), "error");
      });
    });
  }

  function updateHead(d) {
    var v = document.getElementById("flag-version");
    if (v && d.version !== undefined) v.textContent = String(d.version);
  }

  /* ---- live ---- */
  function onlyToggle(a, b) {
    var x = clone(a), y = clone(b);
    SERVER.concat(["on"]).forEach(function (k) { delete x[k]; delete y[k]; });
    return JSON.stringify(x) === JSON.stringify(y);
  }

  document.addEventListener("flagwire:change", function (ev) {
    var msg = ev.detail;
    if (msg.kind !== KIND || msg.key !== KEY) return;
    if (msg.type === "delete") return; // console.js reports it
    // Our own save's change arrives before its response (the response waits for
    // acknowledgements, ours included): hold it until the response says which it was.
    if (saving) { inflight = msg.data; return; }
    external(msg.data);
  });

  function external(fresh) {
    if (fresh.version <= base.version) return; // ours, or older than what we have
    if (!dirty) {
      // The header already shows on/off changes; flash the form only when its content changed.
      var contentChanged = !onlyToggle(base, fresh);
      base = fresh; doc = clone(base); render();
      if (contentChanged) fw.flash(form);
    } else if (onlyToggle(base, fresh)) {
      SERVER.concat(["on"]).forEach(function (k) { base[k] = fresh[k]; doc[k] = fresh[k]; });
    } else {
      latest = fresh;
      document.getElementById("stale").hidden = false;
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    render();
    form.addEventListener("submit", save);
    var reload = document.getElementById("stale-reload");
    if (reload) reload.addEventListener("click", function () {
      if (!latest) { location.reload(); return; }
      base = latest; latest = null; doc = clone(base); dirty = false;
      document.getElementById("stale").hidden = true;
      render();
    });
  });
})();
