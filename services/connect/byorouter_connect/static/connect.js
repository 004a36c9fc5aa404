// BYORouter Connect: small enhancements only; every page works without this script.
// A Test button asks for the result as JSON and shows it in place, so the keys the person
// typed stay in the form instead of the page reloading.
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
      if (!response.ok) { throw new Error("status " + response.status); }
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
})();
