// Shown instead of the chat until the user has connected their own keys.
export function ConnectPrompt() {
  return (
    <section className="connect-prompt" aria-labelledby="connect-heading">
      <h2 id="connect-heading">Connect your API keys to start chatting</h2>
      <p>
        Your OpenAI, Anthropic or OpenRouter keys, or your own model server, stay with BYORouter:
        this app never sees them.
      </p>
      {/* A plain link: the connect route answers with a redirect to the Connect page. */}
      <a className="button" href="/api/byorouter/connect">
        Connect API Keys
      </a>
    </section>
  );
}
