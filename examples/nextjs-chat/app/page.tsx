"use client";
// The one page: the connect prompt until the user is connected, then the chat with the model
// picker, "Manage API Keys" and "Disconnect". It talks only to this app's own routes.
import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport } from "ai";
import { useEffect, useState, type FormEvent } from "react";
import useSWR from "swr";
import { ConnectPrompt } from "@/components/connect-prompt";
import { useAvailableModels } from "@/hooks/use-available-models";
import type { ConnectionStatus } from "@/app/api/byorouter/status/route";

async function fetchStatus(url: string): Promise<ConnectionStatus> {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`Could not ask for the connection (${response.status}).`);
  return (await response.json()) as ConnectionStatus;
}

export default function Home() {
  const { data: status, mutate } = useSWR("/api/byorouter/status", fetchStatus, {
    revalidateOnFocus: false,
  });
  // The status answer carries a notice once (e.g. "connected", "disconnected"): keep it shown.
  const [notice, setNotice] = useState<string>();
  useEffect(() => {
    if (status?.notice !== undefined) setNotice(status.notice);
    // Connect's "Return to the app" after a disconnect says so (?byorouter=disconnected); the
    // status answer has confirmed it with the gateway by now.
    const url = new URL(window.location.href);
    if (status !== undefined && url.searchParams.get("byorouter") === "disconnected") {
      if (!status.connected) setNotice("You disconnected on the Connect page: your keys were erased.");
      url.searchParams.delete("byorouter");
      window.history.replaceState(null, "", url.pathname + url.search);
    }
  }, [status]);

  const connected = status?.connected === true;
  return (
    <main>
      <header>
        <h1>Chat</h1>
        <span id="connection-status" className="status">
          {status === undefined ? "…" : connected ? "API keys connected" : "Not connected"}
        </span>
      </header>
      {notice !== undefined && (
        <p id="notice" className="notice" role="status">
          {notice}
        </p>
      )}
      {status === undefined ? null : connected ? (
        <Chat status={status} onChange={() => void mutate()} />
      ) : (
        <ConnectPrompt />
      )}
    </main>
  );
}

function Chat({ status, onChange }: { status: ConnectionStatus; onChange: () => void }) {
  const { models, byProvider, error: modelsError } = useAvailableModels(true);
  const [model, setModel] = useState("");
  const [text, setText] = useState("");
  const { messages, sendMessage, status: chatStatus, error } = useChat({
    transport: new DefaultChatTransport({ api: "/api/chat" }),
    // A refused connection (disconnected elsewhere) shows on the page at once.
    onError: onChange,
  });
  useEffect(() => {
    if (model === "" && models.length > 0) {
      // A small, cheap model first when there is one.
      setModel((models.find((m) => m.id.includes("mini")) ?? models[0]).id);
    }
  }, [model, models]);

  const busy = chatStatus === "submitted" || chatStatus === "streaming";
  function send(event: FormEvent) {
    event.preventDefault();
    if (text.trim() === "" || model === "" || busy) return;
    void sendMessage({ text: text.trim() }, { body: { model } });
    setText("");
  }
  async function disconnect() {
    await fetch("/api/byorouter/disconnect", { method: "POST" });
    onChange();
  }

  return (
    <section aria-label="Chat">
      <ul className="providers">
        {(status.providers ?? []).map((p) => (
          <li key={p.provider}>
            {p.provider}: <code>{p.label}</code> ({p.status})
          </li>
        ))}
      </ul>
      <div className="actions">
        {/* A form post: the route answers with a redirect to a one-time Connect link. */}
        <form method="post" action="/api/byorouter/manage">
          <button type="submit">Manage API Keys</button>
        </form>
        <button type="button" className="secondary" onClick={() => void disconnect()}>
          Disconnect
        </button>
      </div>
      <ul id="messages" className="messages">
        {messages.map((message, index) => {
          const last = index === messages.length - 1;
          const done = message.role !== "assistant" || !last || !busy;
          return (
            <li key={message.id} className={`message ${message.role}${done ? " done" : ""}`}>
              <span className="who">{message.role === "user" ? "You" : "Assistant"}</span>
              <div className="text">
                {message.parts.map((part) => (part.type === "text" ? part.text : "")).join("")}
              </div>
            </li>
          );
        })}
      </ul>
      {(error ?? modelsError) && (
        <p id="chat-error" className="error" role="alert">
          {(error ?? modelsError)?.message}
        </p>
      )}
      <form className="chat" onSubmit={send}>
        <label htmlFor="model">Model</label>
        <select id="model" value={model} onChange={(e) => setModel(e.target.value)}>
          {models.length === 0 && <option value="">No models available</option>}
          {[...byProvider].map(([provider, list]) => (
            <optgroup key={provider} label={provider}>
              {list.map((m) => (
                <option key={m.id} value={m.id}>
                  {m.id}
                </option>
              ))}
            </optgroup>
          ))}
        </select>
        <label htmlFor="prompt">Message</label>
        <textarea
          id="prompt"
          value={text}
          onChange={(e) => setText(e.target.value)}
          onKeyDown={(e) => {
            // Enter sends, Shift+Enter makes a new line.
            if (e.key === "Enter" && !e.shiftKey) send(e);
          }}
        />
        <button type="submit" disabled={busy || model === ""}>
          Send
        </button>
      </form>
    </section>
  );
}
