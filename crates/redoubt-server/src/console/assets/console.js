// Redoubt console: the little the pages need beyond HTML. Served by the server itself
// under a Content-Security-Policy that allows no inline script; every page works
// without it (times then show in UTC, the dashboard without live updates).
"use strict";
(function () {
  var lang = document.documentElement.lang || "en";

  // Times in the reader's time zone.
  var fmt = new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "medium" });
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var d = new Date(el.getAttribute("datetime"));
    if (!isNaN(d)) { el.textContent = fmt.format(d); el.title = el.getAttribute("datetime"); }
  });

  // The language menu applies itself; "back" returns to this page.
  document.querySelectorAll("input.back-here").forEach(function (el) {
    el.value = location.pathname + location.search;
  });
  document.querySelectorAll("select.autosubmit").forEach(function (el) {
    el.addEventListener("change", function () { el.form.submit(); });
  });

  // Select every device of the page.
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input.pick").forEach(function (b) { b.checked = all.checked; });
    });
  }

  // Print buttons.
  document.querySelectorAll("button.print").forEach(function (b) {
    b.addEventListener("click", function () { window.print(); });
  });

  // Live dashboard: figures from server-sent events.
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (live && window.EventSource) {
    var es = new EventSource(live.getAttribute("data-events"));
    es.addEventListener("counts", function (ev) {
      var c = JSON.parse(ev.data);
      document.getElementById("count-total").textContent = c.total;
      document.getElementById("count-connected").textContent = c.connected;
      live.querySelectorAll("[data-compliance]").forEach(function (el) {
        el.textContent = c.compliance[el.getAttribute("data-compliance")] || 0;
      });
      var table = document.getElementById("failing");
      if (table && c.failing) {
        var body = table.querySelector("tbody");
        body.textContent = "";
        c.failing.forEach(function (d) {
          var tr = document.createElement("tr");
          var link = document.createElement("a");
          link.href = "/console/devices/" + encodeURIComponent(d.id);
          link.textContent = d.id;
          var first = document.createElement("td");
          first.appendChild(link);
          tr.appendChild(first);
          [d.user, d.mode, d.reasons].forEach(function (text) {
            var td = document.createElement("td");
            td.textContent = text;
            tr.appendChild(td);
          });
          body.appendChild(tr);
        });
        table.hidden = c.failing.length === 0;
        document.getElementById("no-failing").hidden = c.failing.length !== 0;
      }
      if (status) { status.textContent = status.getAttribute("data-live"); }
    });
    es.addEventListener("signed-out", function () { es.close(); location.reload(); });
    es.onerror = function () { if (status) { status.textContent = status.getAttribute("data-lost"); } };
  }
})();
