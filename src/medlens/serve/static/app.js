// medlens serve: progressive enhancement only; every page works without this file.
"use strict";

// Ask before destructive form submissions (forms carry data-confirm="question").
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form && form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

// Live batch progress: poll the job's status and reload the worklist when it finishes.
(function () {
  var box = document.getElementById("job");
  if (!box) return;
  var status = box.getAttribute("data-status");
  if (status !== "queued" && status !== "running") return;
  var id = box.getAttribute("data-job");
  var bar = document.getElementById("job-progress");
  var text = document.getElementById("job-text");
  function poll() {
    fetch("/batch/" + encodeURIComponent(id) + "/status", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) {
        if (!s) return;
        bar.max = Math.max(1, s.total);
        bar.value = s.done;
        text.textContent = s.status.charAt(0).toUpperCase() + s.status.slice(1) + ": " +
          s.done + " of " + s.total + " processed" + (s.failed ? ", " + s.failed + " refused" : "") + ".";
        if (s.status === "queued" || s.status === "running") {
          window.setTimeout(poll, 1500);
        } else {
          window.location.reload();
        }
      })
      .catch(function () { window.setTimeout(poll, 4000); });
  }
  window.setTimeout(poll, 1000);
})();
