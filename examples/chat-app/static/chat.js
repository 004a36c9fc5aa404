// The chat box: sends the conversation to this app's /api/chat and appends the tokens of the
// reply as they arrive (server-sent events read with fetch + ReadableStream). The app key and
// the connection id never reach this page; the app's server adds them.
"use strict";

(function () {
  var chat = document.querySelector("section.chat");
  if (!chat) { return; }
  var csrf = chat.getAttribute("data-csrf");
  var form = document.getElementById("chat-form");
  var prompt = document.getElementById("prompt");
  var select = document.getElementById("model");
  var send = document.getElementById("send-button");
  var list = document.getElementById("messages");
  var errorBox = document.getElementById("chat-error");
  var history = [];

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function addMessage(role, text) {
    var item = document.createElement("li");
    item.className = "message " + role;
    var who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Assistant";
    var body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    item.appendChild(who);
    item.appendChild(body);
    list.appendChild(item);
    return body;
  }

  fetch("/api/byorouter/models", { credentials: "same-origin" })
    .then(function (response) { return response.json().then(function (b) { return [response, b]; }); })
    .then(function (pair) {
      var body = pair[1];
      select.textContent = "";
      if (!pair[0].ok) { showError(body.error); return; }
      if (!body.models.length) {
        select.appendChild(new Option("No models available", ""));
        return;
      }
      body.models.forEach(function (id) { select.appendChild(new Option(id, id)); });
      // A small, cheap model first when there is one.
      var preferred = body.models.filter(function (id) { return /mini/.test(id); })[0];
      if (preferred) { select.value = preferred; }
    })
    .catch(function () { showError("Could not load the models."); });

  // Enter sends, Shift+Enter makes a new line.
  prompt.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = prompt.value.trim();
    if (!text) { return; }
    errorBox.hidden = true;
    prompt.value = "";
    addMessage("user", text);
    history.push({ role: "user", content: text });
    var reply = addMessage("assistant", "");
    var tokens = 0;
    send.disabled = true;

    fetch("/api/chat", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ model: select.value, messages: history })
    }).then(function (response) {
      if (!response.ok) {
        return response.json().then(function (body) { throw new Error(body.error); });
      }
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      function handle(block) {
        var event = "message", data = "";
        block.split("\n").forEach(function (line) {
          if (line.indexOf("event: ") === 0) { event = line.slice(7); }
          if (line.indexOf("data: ") === 0) { data += line.slice(6); }
        });
        if (event === "token") {
          reply.textContent += JSON.parse(data).text;
          tokens += 1;
          // How many pieces arrived: the streaming is visible, and tests can count it.
          reply.setAttribute("data-tokens", String(tokens));
        } else if (event === "error") {
          throw new Error(JSON.parse(data).message);
        } else if (event === "done") {
          reply.parentNode.classList.add("done");
        }
      }
      function pump() {
        return reader.read().then(function (step) {
          if (step.done) { return; }
          buffer += decoder.decode(step.value, { stream: true });
          var blocks = buffer.split("\n\n");
          buffer = blocks.pop();
          blocks.forEach(handle);
          return pump();
        });
      }
      return pump();
    }).then(function () {
      history.push({ role: "assistant", content: reply.textContent });
    }).catch(function (error) {
      reply.parentNode.remove();
      history.pop();
      showError(error.message || "The chat failed.");
    }).finally(function () {
      send.disabled = false;
      prompt.focus();
    });
  });
})();
