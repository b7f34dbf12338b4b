/* flagwire console: API calls with the CSRF token, the live subscription, list pages.
 * Plain JavaScript, no build step.  The editor for flags and segments is editor.js. */
(function () {
  "use strict";

  document.documentElement.classList.add("js");

  var $ = function (sel, root) { return (root || document).querySelector(sel); };
  var $$ = function (sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); };
  var metaContent = function (name) {
    var m = document.querySelector('meta[name="' + name + '"]');
    return m ? m.getAttribute("content") : "";
  };
  var ENV = metaContent("flagwire-env");
  var CSRF = metaContent("csrf-token");

  /* ---- API ------------------------------------------------------------ */

  function api(method, path, body, headers) {
    var h = { "Accept": "application/json", "X-CSRF-Token": CSRF };
    if (body !== undefined) h["Content-Type"] = "application/json";
    Object.keys(headers || {}).forEach(function (k) { h[k] = headers[k]; });
    return fetch("/api/v1" + path, {
      method: method, headers: h, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body)
    }).then(function (res) {
      return res.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text }; }
        return { ok: res.ok, status: res.status, data: data || {} };
      });
    }, function (err) {
      return { ok: false, status: 0, data: { detail: "network error: " + err.message } };
    });
  }

  function envPath(suffix) { return "/environments/" + encodeURIComponent(ENV) + suffix; }

  /* ---- status line ------------------------------------------------------ */

  var statusTimer = null;
  function say(text, kind) {
    var el = $("#status");
    if (!el) return;
    el.textContent = text;
    el.className = "status show " + (kind || "ok");
    clearTimeout(statusTimer);
    statusTimer = setTimeout(function () { el.className = "status " + (kind || "ok"); }, 12000);
  }

  function propagationText(res, what) {
    var p = res.data && res.data.propagation;
    var v = res.data && res.data.env_version;
    var head = (what || "Saved") + (v ? " (environment version " + v + ")" : "") + ". ";
    if (!p) return head;
    var ms = Math.round(Number(p.max_ms || 0));
    if (!p.connected) return head + "No clients connected.";
    return head + "Applied by " + p.acknowledged + " of " + p.connected +
      " connected client" + (p.connected === 1 ? "" : "s") + " in " + ms + " ms" +
      (p.complete ? "." : " (others have not acknowledged yet).");
  }

  function problemText(res) {
    var d = res.data || {};
    var text = d.detail || d.title || ("request failed with status " + res.status);
    if (res.status === 401) text += " — sign in again.";
    return text;
  }

  /* ---- field errors by JSON path --------------------------------------- */

  function clearErrors(root) {
    $$(".field-error", root).forEach(function (e) { e.remove(); });
    $$("[aria-invalid]", root).forEach(function (e) {
      e.removeAttribute("aria-invalid");
      var ids = (e.getAttribute("aria-describedby") || "").split(" ").filter(function (id) { return id.indexOf("err-") !== 0; });
      if (ids.length) e.setAttribute("aria-describedby", ids.join(" ")); else e.removeAttribute("aria-describedby");
    });
  }

  function fieldFor(root, path) {
    var best = null, bestLen = -1;
    $$("[data-path]", root).forEach(function (el) {
      var p = el.getAttribute("data-path");
      var hit = p === path || (path.indexOf(p) === 0 && (path[p.length] === "." || path[p.length] === "["));
      if (p === "" ) hit = true;
      if (hit && p.length > bestLen) { best = el; bestLen = p.length; }
    });
    return best;
  }

  /* How an error's path differs from its field's: "line 2: " inside a one-per-line list. */
  function where(path, field) {
    if (!path) return "";
    var fp = field ? field.getAttribute("data-path") : "";
    if (fp && path === fp) return "";
    var rest = fp && path.indexOf(fp) === 0 ? path.slice(fp.length) : path;
    var line = /^\[(\d+)\]$/.exec(rest);
    if (line && field.tagName === "TEXTAREA") return "line " + (Number(line[1]) + 1) + ": ";
    return rest.replace(/^\./, "") + ": ";
  }

  var errSeq = 0;
  function showErrors(root, errors, fallback) {
    clearErrors(root);
    var first = null;
    (errors || []).forEach(function (err) {
      var field = fieldFor(root, err.path || "");
      var msg = document.createElement("p");
      msg.className = "field-error";
      msg.id = "err-" + (++errSeq);
      msg.setAttribute("data-error-path", err.path || "");
      msg.textContent = where(err.path || "", field) + err.message;
      if (field) {
        field.setAttribute("aria-invalid", "true");
        var d = field.getAttribute("aria-describedby");
        field.setAttribute("aria-describedby", (d ? d + " " : "") + msg.id);
        var anchor = field.closest(".field") || field;
        anchor.insertAdjacentElement(anchor === field ? "afterend" : "beforeend", msg);
        if (!first) first = field;
      } else {
        (fallback || root).insertAdjacentElement("afterbegin", msg);
      }
    });
    if (first && first.focus) {
      first.focus({ preventScroll: true });
      first.scrollIntoView({ block: "center" }); // not under the sticky save bar
    }
  }

  /* ---- confirmation dialog ---------------------------------------------- */

  function confirmAction(text, okLabel) {
    var dlg = $("#confirm");
    if (!dlg || !dlg.showModal) return Promise.resolve(window.confirm(text));
    $("#confirm-text").textContent = text;
    $("#confirm-ok").textContent = okLabel || "Confirm";
    return new Promise(function (resolve) {
      dlg.addEventListener("close", function onClose() {
        dlg.removeEventListener("close", onClose);
        resolve(dlg.returnValue === "ok");
      });
      dlg.returnValue = "";
      dlg.showModal();
      $("#confirm-cancel").focus();
    });
  }

  /* ---- highlight -------------------------------------------------------- */

  function flash(el) {
    if (!el) return;
    el.classList.remove("flash");
    void el.offsetWidth; // restart the animation
    el.classList.add("flash");
    setTimeout(function () { el.classList.remove("flash"); }, 2600);
  }

  /* ---- live subscription ------------------------------------------------- */

  var liveVersion = 0;
  var retry = 0;
  var socket = null;
  var leaving = false;
  window.addEventListener("pagehide", function () { leaving = true; if (socket) socket.close(1000); });

  function setVersion(v) {
    liveVersion = v;
    var el = $("#env-version");
    if (el) el.textContent = String(v);
  }

  function connectLive() {
    if (!ENV || !window.WebSocket) return;
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host +
      "/api/v1/stream?env=" + encodeURIComponent(ENV);
    var ws = new WebSocket(url);
    socket = ws;
    var dot = $("#live-dot");
    var first = true;
    ws.onopen = function () { retry = 0; if (dot) { dot.className = "dot on"; dot.title = "live"; } };
    ws.onmessage = function (ev) {
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg.type === "hello") { setVersion(msg.version); return; }
      if (msg.type === "snapshot") {
        setVersion(msg.version);
        ws.send(JSON.stringify({ type: "ack", version: msg.version }));
        if (!first) refreshLive(null); // reconnected: catch up on what we missed
        first = false;
        return;
      }
      if (msg.type === "patch" || msg.type === "delete") {
        setVersion(msg.version);
        ws.send(JSON.stringify({ type: "ack", version: msg.version }));
        first = false;
        var ev2 = new CustomEvent("flagwire:change", { detail: msg });
        document.dispatchEvent(ev2);
        refreshLive(msg);
        refreshEnv();
      }
    };
    ws.onclose = function () {
      if (dot) { dot.className = "dot off"; dot.title = "reconnecting"; }
      if (leaving) return;
      retry = Math.min(retry + 1, 6);
      if (retry >= 2) {
        // Refused twice: if the session ended (signed out elsewhere, key revoked), say so.
        api("GET", envPath("")).then(function (res) {
          if (res.status === 401) location.href = "/signin?next=" + encodeURIComponent(location.pathname);
        });
      }
      setTimeout(connectLive, Math.min(10000, 300 * Math.pow(2, retry)));
    };
  }

  var pending = [];
  var refreshTimer = null;
  /* Re-fetch this page and swap every [data-live] region (by id), then flash
     what changed.  One renderer (the server's templates) for first paint and updates. */
  function refreshLive(msg) {
    if (msg && msg.type === "delete" && $('[data-watch-key="' + CSS.escape(msg.key) + '"]')) {
      // This page's own document is gone: there is nothing to fetch (it would be a 404).
      say("“" + msg.key + "” was deleted.", "error");
      return;
    }
    if (msg) pending.push(msg);
    if (refreshTimer) return;
    refreshTimer = setTimeout(function () {
      refreshTimer = null;
      var changes = pending; pending = [];
      if (!$("[data-live]")) return;
      fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (res) { return res.ok ? res.text() : null; })
        .then(function (html) {
          if (!html) return;
          var fresh = new DOMParser().parseFromString(html, "text/html");
          $$("[data-live][id]").forEach(function (region) {
            var next = fresh.getElementById(region.id);
            if (!next) return;
            // Keep keyboard focus on "the same" control after the swap.
            var active = region.contains(document.activeElement) ? document.activeElement : null;
            var toggleKey = active && active.getAttribute("data-toggle");
            var activeId = active && active.id;
            region.innerHTML = next.innerHTML;
            // Regions about one document (data-watch-key) flash when it changes;
            // lists flash the rows ([data-key]) that changed.
            var watch = region.getAttribute("data-watch-key");
            changes.forEach(function (m) {
              if (watch !== null) {
                if (m.key === watch) flash(region.hasAttribute("data-flash-first") ? region.firstElementChild : region);
              } else {
                $$('[data-key="' + CSS.escape(m.key) + '"]', region).forEach(flash);
              }
            });
            var again = toggleKey ? $('[data-toggle="' + CSS.escape(toggleKey) + '"]', region)
              : activeId ? document.getElementById(activeId) : null;
            if (again) again.focus();
          });
          document.dispatchEvent(new CustomEvent("flagwire:refreshed"));
        })
        .catch(function () { /* the next change or reconnect retries */ });
    }, 60);
  }

  function refreshEnv() {
    if (!ENV || !$("#env-connected")) return;
    api("GET", envPath("")).then(function (res) {
      if (!res.ok) return;
      if (typeof res.data.connected === "number") $("#env-connected").textContent = String(res.data.connected);
      if (typeof res.data.version === "number" && res.data.version > liveVersion) setVersion(res.data.version);
    });
  }

  /* ---- flag on/off switches ---------------------------------------------- */

  function toggle(btn) {
    var key = btn.getAttribute("data-toggle");
    var next = btn.getAttribute("aria-checked") !== "true";
    var ask = ENV === "production"
      ? confirmAction("Turn " + key + " " + (next ? "ON" : "OFF") + " in production? Every connected client applies it immediately.",
                      next ? "Turn on" : "Turn off")
      : Promise.resolve(true);
    if (btn.getAttribute("aria-busy") === "true") return;
    ask.then(function (ok) {
      if (!ok) return;
      // aria-busy, not disabled: disabling the focused button would drop keyboard focus.
      btn.setAttribute("aria-busy", "true");
      say("Turning " + key + " " + (next ? "on" : "off") + "…", "busy");
      api("PATCH", envPath("/flags/" + encodeURIComponent(key) + "?wait=2"), { on: next }).then(function (res) {
        btn.removeAttribute("aria-busy");
        if (res.ok) {
          btn.setAttribute("aria-checked", next ? "true" : "false");
          say(propagationText(res, key + " turned " + (next ? "on" : "off")), "ok");
        } else {
          say("Not changed: " + problemText(res), "error");
        }
      });
    });
  }

  document.addEventListener("click", function (ev) {
    var t = ev.target.closest ? ev.target.closest("[data-toggle]") : null;
    if (t) { ev.preventDefault(); toggle(t); return; }
    var r = ev.target.closest ? ev.target.closest("[data-restore]") : null;
    if (r) { ev.preventDefault(); restore(r); return; }
    var k = ev.target.closest ? ev.target.closest("[data-revoke]") : null;
    if (k) { ev.preventDefault(); revoke(k); }
  });

  /* ---- flags list: search and tag filter --------------------------------- */

  function applyFilter() {
    var q = $("#flag-search"), tag = $("#tag-filter");
    if (!q || !tag) return;
    var words = q.value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0;
    $$("#flag-rows tr[data-key]").forEach(function (tr) {
      var hay = tr.getAttribute("data-search") || "";
      var tags = (tr.getAttribute("data-tags") || "").split("\n");
      var ok = words.every(function (w) { return hay.indexOf(w) >= 0; }) &&
        (!tag.value || tags.indexOf(tag.value) >= 0);
      tr.hidden = !ok;
      if (ok) shown++;
    });
    var none = $("#no-match");
    if (none) none.hidden = shown > 0 || !$("#flag-rows tr[data-key]");
  }
  document.addEventListener("flagwire:refreshed", applyFilter);

  /* ---- create forms -------------------------------------------------------- */

  var DEFAULTS = {
    bool: [true, false], string: ["on", "off"], number: [1, 0], json: [{ enabled: true }, { enabled: false }]
  };

  function newFlag(form) {
    var f = form.elements;
    var tags = f.tags.value.split(",").map(function (t) { return t.trim(); }).filter(Boolean);
    var doc = {
      key: f.key.value.trim(), name: f.name.value.trim() || f.key.value.trim(), tags: tags,
      on: false, variations: DEFAULTS[f.kind.value], off_variation: 1, fallthrough: { variation: 0 }
    };
    clearErrors(form);
    api("POST", envPath("/flags?wait=2"), doc).then(function (res) {
      if (res.ok) {
        location.href = "/envs/" + encodeURIComponent(ENV) + "/flags/" + encodeURIComponent(doc.key);
      } else {
        showErrors(form, res.data.errors || [{ path: "key", message: problemText(res) }]);
        say("Not created: " + problemText(res), "error");
      }
    });
  }

  function newSegment(form) {
    var f = form.elements;
    var doc = { key: f.key.value.trim(), name: f.name.value.trim() || f.key.value.trim() };
    clearErrors(form);
    api("POST", envPath("/segments?wait=2"), doc).then(function (res) {
      if (res.ok) {
        location.href = "/envs/" + encodeURIComponent(ENV) + "/segments/" + encodeURIComponent(doc.key);
      } else {
        showErrors(form, res.data.errors || [{ path: "key", message: problemText(res) }]);
        say("Not created: " + problemText(res), "error");
      }
    });
  }

  /* ---- environments -------------------------------------------------------- */

  function newEnv(form) {
    var f = form.elements;
    var body = { key: f.key.value.trim(), name: f.name.value.trim() };
    clearErrors(form);
    api("POST", "/environments", body).then(function (res) {
      if (res.ok) {
        location.href = "/envs/" + encodeURIComponent(body.key) + "/flags";
      } else {
        showErrors(form, res.data.errors || [{ path: "key", message: problemText(res) }]);
        say("Not created: " + problemText(res), "error");
      }
    });
  }

  function refreshEnvRows() {
    $$("#env-rows tr[data-env]").forEach(function (tr) {
      var name = tr.getAttribute("data-env");
      api("GET", "/environments/" + encodeURIComponent(name)).then(function (res) {
        if (!res.ok) return;
        var v = $(".env-v", tr), c = $(".env-c", tr);
        if (v.textContent !== String(res.data.version)) { v.textContent = String(res.data.version); flash(tr); }
        c.textContent = typeof res.data.connected === "number" ? String(res.data.connected) : "?";
      });
    });
  }

  /* ---- history ------------------------------------------------------------ */

  function restore(btn) {
    var key = btn.getAttribute("data-key"), version = Number(btn.getAttribute("data-restore"));
    confirmAction("Restore version " + version + " of " + key + " in " + ENV + "? It becomes a new version.", "Restore")
      .then(function (ok) {
        if (!ok || btn.getAttribute("aria-busy") === "true") return;
        btn.setAttribute("aria-busy", "true");
        api("POST", envPath("/flags/" + encodeURIComponent(key) + "/restore?wait=2"), { version: version })
          .then(function (res) {
            btn.removeAttribute("aria-busy");
            if (res.ok) say(propagationText(res, "Version " + version + " restored as version " + res.data.version), "ok");
            else say("Not restored: " + problemText(res), "error");
          });
      });
  }

  /* ---- keys ----------------------------------------------------------------- */

  function newKey(form) {
    var f = form.elements;
    var body = { name: f.name.value.trim(), kind: f.kind.value };
    if (body.kind === "sdk" || body.kind === "client") body.env = f.env.value;
    clearErrors(form);
    api("POST", "/keys", body).then(function (res) {
      if (!res.ok) {
        showErrors(form, res.data.errors || [{ path: "name", message: problemText(res) }]);
        say("Not created: " + problemText(res), "error");
        return;
      }
      var secret = res.data.secret || (res.data.key && res.data.key.secret) || "";
      var box = $("#new-secret");
      $("#secret-value").value = secret;
      box.hidden = false;
      $("#secret-value").focus();
      $("#secret-value").select();
      say("Key “" + body.name + "” created. Copy its secret now: it is not shown again.", "ok");
      form.reset();
      syncKeyKind();
      refreshKeys();
    });
  }

  function refreshKeys() {
    fetch(location.href, { credentials: "same-origin" }).then(function (r) { return r.text(); }).then(function (html) {
      var fresh = new DOMParser().parseFromString(html, "text/html");
      var rows = fresh.getElementById("key-rows");
      if (rows) $("#key-rows").innerHTML = rows.innerHTML;
    });
  }

  function revoke(btn) {
    var id = btn.getAttribute("data-revoke"), name = btn.getAttribute("data-name");
    confirmAction("Revoke the key “" + name + "”? Clients using it are disconnected within a second.", "Revoke")
      .then(function (ok) {
        if (!ok) return;
        api("DELETE", "/keys/" + encodeURIComponent(id)).then(function (res) {
          if (res.ok) { say("Key “" + name + "” revoked.", "ok"); refreshKeys(); }
          else say("Not revoked: " + problemText(res), "error");
        });
      });
  }

  function syncKeyKind() {
    var kind = $("#nk-kind"), envField = $("#nk-env-field");
    if (kind && envField) envField.hidden = kind.value === "admin";
  }

  function copySecret() {
    var input = $("#secret-value");
    var fallback = function () {
      input.focus();
      input.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      if (ok) say("Secret copied to the clipboard.", "ok");
      else say("The browser refused to copy: the secret is selected, press Ctrl+C (⌘C).", "error");
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(function () {
        say("Secret copied to the clipboard.", "ok");
      }, fallback);
    } else {
      fallback();
    }
  }

  /* ---- wiring ---------------------------------------------------------------- */

  document.addEventListener("DOMContentLoaded", function () {
    var sw = $("#env-select");
    if (sw) sw.addEventListener("change", function () { sw.form.submit(); });
    var q = $("#flag-search"), tag = $("#tag-filter");
    if (q) q.addEventListener("input", applyFilter);
    if (tag) tag.addEventListener("change", applyFilter);
    var nf = $("#new-flag-form");
    if (nf) nf.addEventListener("submit", function (ev) { ev.preventDefault(); newFlag(nf); });
    var ns = $("#new-segment-form");
    if (ns) ns.addEventListener("submit", function (ev) { ev.preventDefault(); newSegment(ns); });
    var ne = $("#new-env-form");
    if (ne) ne.addEventListener("submit", function (ev) { ev.preventDefault(); newEnv(ne); });
    if ($("#env-rows")) { refreshEnvRows(); setInterval(refreshEnvRows, 3000); }
    var nk = $("#new-key-form");
    if (nk) nk.addEventListener("submit", function (ev) { ev.preventDefault(); newKey(nk); });
    var kind = $("#nk-kind");
    if (kind) { kind.addEventListener("change", syncKeyKind); syncKeyKind(); }
    var copy = $("#copy-secret");
    if (copy) copy.addEventListener("click", copySecret);
    connectLive();
    refreshEnv();
    if (ENV) setInterval(refreshEnv, 5000);
  });

  window.flagwire = {
    api: api, envPath: envPath, say: say, propagationText: propagationText, problemText: problemText,
    showErrors: showErrors, clearErrors: clearErrors, confirmAction: confirmAction, flash: flash,
    env: ENV
  };
})();
