// BYORouter Connect: small enhancements only; every page works without this script.
// A Test button asks for the result as JSON and shows it in place, so the keys the person
// typed stay in the form instead of the page reloading. On the tunnel pages: the model server
// picker rewrites the command, a Copy button copies it, and the status refreshes every 2 s
// (without the script, "Check status" reloads it).
"use strict";

(function () {
  function showResult(region, result) {
    region.textContent = "";
    var span = document.createElement("span");
    span.className = result.ok ? "result-ok" : "result-fail";
    span.textContent = (result.ok ? "\u2713 " : "\u2717 ") + result.message;
    region.appendChild(span);
  }

  function fillModels(list, models) {
    if (!list || !models || !models.length) { return; }
    list.textContent = "";
    models.forEach(function (model) {
      var option = document.createElement("option");
      option.value = model;
      list.appendChild(option);
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-test-provider]");
    if (!button || !window.fetch || !window.URLSearchParams) { return; }
    event.preventDefault();
    var form = button.form;
    var region = document.getElementById(button.getAttribute("data-result"));
    var body = new URLSearchParams(new FormData(form));
    if (button.name) { body.set(button.name, button.value); }
    var label = button.textContent;
    button.disabled = true;
    button.textContent = "Testing\u2026";
    if (region) { region.textContent = "Testing\u2026"; }
    fetch(button.formAction, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "Accept": "application/json" }
    }).then(function (response) {
      // A 429 carries a result saying to wait; any other failure has nothing to show.
      if (!response.ok && response.status !== 429) { throw new Error("status " + response.status); }
      return response.json();
    }).then(function (result) {
      if (region) { showResult(region, result); }
      fillModels(document.getElementById(button.getAttribute("data-models")), result.models);
    }).catch(function () {
      if (region) { showResult(region, { ok: false, message: "The test could not run; try again." }); }
    }).finally(function () {
      button.disabled = false;
      button.textContent = label;
    });
  });

  // --- the tunnel pages ----------------------------------------------------------------------

  var POLL_MS = 2000;
  var POLL_FOR_MS = 15 * 60 * 1000;

  function setUpCommand() {
    var picker = document.getElementById("tunnel_upstream");
    var upstream = document.getElementById("tunnel-command-upstream");
    var command = document.getElementById("tunnel-command");
    if (!picker || !upstream || !command) { return; }
    picker.addEventListener("change", function () { upstream.textContent = picker.value; });
    if (!navigator.clipboard) { return; }
    var copy = document.createElement("button");
    copy.type = "button";
    copy.className = "secondary";
    copy.textContent = "Copy command";
    copy.addEventListener("click", function () {
      navigator.clipboard.writeText(command.textContent).then(function () {
        copy.textContent = "Copied";
      }, function () {
        copy.textContent = "Select the command and copy it";
      });
    });
    command.parentNode.insertAdjacentElement("afterend", copy);
  }

  function showStatus(status) {
    var state = document.getElementById("tunnel-state");
    state.textContent = "";
    var span = document.createElement("span");
    span.className = "state state-" + status.state;
    span.textContent = status.summary;
    state.appendChild(span);
    document.getElementById("tunnel-clients").textContent = String(status.clients);
    document.getElementById("tunnel-last-seen").textContent = status.last_seen;
    var list = document.getElementById("tunnel-models");
    list.textContent = "";
    var models = status.models.length ? status.models : [null];
    models.forEach(function (model) {
      var item = document.createElement("li");
      if (model === null) { item.className = "none"; }
      item.textContent = model === null ? "none yet" : model;
      list.appendChild(item);
    });
  }

  function showStopped(message) {
    var state = document.getElementById("tunnel-state");
    state.textContent = "";
    var span = document.createElement("span");
    span.className = "result-fail";
    span.textContent = message;
    state.appendChild(span);
  }

  function pollStatus() {
    var box = document.getElementById("tunnel-status");
    if (!box || !window.fetch || !window.URLSearchParams) { return; }
    var url = box.getAttribute("data-status-url");
    var formId = box.getAttribute("data-status-form");
    var form = formId ? document.getElementById(formId) : null;
    var started = Date.now();
    var timer = null;

    function ask() {
      if (Date.now() - started > POLL_FOR_MS) { return; }
      if (document.hidden) { timer = setTimeout(ask, POLL_MS); return; }
      var options = { credentials: "same-origin", headers: { "Accept": "application/json" } };
      if (form) {
        options.method = "POST";
        options.body = new URLSearchParams(new FormData(form));
      }
      fetch(url, options).then(function (response) {
        return response.json().then(function (body) { return { ok: response.ok, body: body }; });
      }).then(function (answer) {
        if (!answer.ok) {
          showStopped(answer.body.error || "The status could not be read.");
          return;
        }
        showStatus(answer.body);
        timer = setTimeout(ask, POLL_MS);
      }).catch(function () {
        timer = setTimeout(ask, POLL_MS * 2);
      });
    }
    timer = setTimeout(ask, POLL_MS);
    window.addEventListener("pagehide", function () { clearTimeout(timer); });
  }

  setUpCommand();
  pollStatus();
})();
