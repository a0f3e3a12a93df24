// hse ui: draws the page's Plotly figures and keeps its live values current.
// Values are only ever written with textContent (never as HTML): whatever a run
// wrote stays text. Polls the page's JSON twin (body[data-live]) every
// data-every ms (never faster than 5 s), and not at all while the tab is hidden.
(function () {
  "use strict";
  var MIN_EVERY = 5000;
  var body = document.body;
  var live = body.getAttribute("data-live");
  var every = Math.max(MIN_EVERY, Number(body.getAttribute("data-every")) || MIN_EVERY);
  var timer = null;

  function draw(id, figure) {
    var el = document.querySelector('[data-figure="' + CSS.escape(id) + '"]');
    if (!el || !window.Plotly) { return; }
    window.Plotly.react(el, figure.data, figure.layout || {},
                        {responsive: true, displaylogo: false});
  }

  function drawEmbedded() {
    document.querySelectorAll("[data-figure]").forEach(function (el) {
      var id = el.getAttribute("data-figure");
      var source = document.getElementById("figure-" + id);
      if (source) { draw(id, JSON.parse(source.textContent)); }
    });
  }

  function apply(update) {
    var fields = update.fields || {};
    document.querySelectorAll("[data-field]").forEach(function (el) {
      var key = el.getAttribute("data-field");
      if (Object.prototype.hasOwnProperty.call(fields, key)) {
        var link = el.querySelector("a");
        (link || el).textContent = String(fields[key]);
      }
    });
    var figures = update.figures || {};
    Object.keys(figures).forEach(function (id) { draw(id, figures[id]); });
    var stamp = document.querySelector('[data-field="updated"]');
    if (stamp) { stamp.textContent = "· updated " + new Date().toLocaleTimeString(); }
  }

  function schedule() {
    if (live && timer === null && !document.hidden) { timer = setTimeout(poll, every); }
  }

  function poll() {
    timer = null;
    if (document.hidden) { return; }
    fetch(live, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (update) { if (update) { apply(update); } })
      .catch(function () { /* the server is away: try again next period */ })
      .then(schedule);
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      if (timer !== null) { clearTimeout(timer); timer = null; }
    } else if (live && timer === null) {
      poll();
    }
  });

  window.addEventListener("DOMContentLoaded", function () { drawEmbedded(); schedule(); });
  if (document.readyState !== "loading") { drawEmbedded(); schedule(); }
}());
