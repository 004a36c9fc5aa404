// BYORouter from this app's server: its settings, the chat provider and the few other calls.
// Everything here runs on the server only; the app key must never reach a browser.
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";

export const CALLBACK_PATH = "/api/byorouter/callback";

export interface ByorouterConfig {
  apiUrl: string; // the gateway, e.g. http://127.0.0.1:4000
  connectUrl: string; // the Connect page, e.g. http://127.0.0.1:8080
  appApiKey: string; // secret
  clientId: string;
  redirectUri: string; // registered exactly with `byorouter app create --redirect-uri`
  appOrigin: string; // where browsers reach this app: the redirect URI's origin
}

function trimmed(url: string): string {
  return url.replace(/\/+$/, "");
}

/** The settings from the environment, read on each call so `next start` picks up its own env. */
export function byorouterConfig(): ByorouterConfig {
  const env = process.env;
  const missing = ["BYOROUTER_APP_KEY", "BYOROUTER_CLIENT_ID"].filter((name) => !env[name]);
  if (missing.length > 0) {
    throw new Error(
      `Set ${missing.join(" and ")} (\`byorouter app create\` prints both; see README.md).`,
    );
  }
  const port = env.PORT ?? "3000";
  const redirectUri = env.BYOROUTER_REDIRECT_URI ?? `http://127.0.0.1:${port}${CALLBACK_PATH}`;
  return {
    apiUrl: trimmed(env.BYOROUTER_URL ?? "http://127.0.0.1:4000"),
    // BYOROUTER_CONNECT_URL: the old name, still read.
    connectUrl: trimmed(
      env.BYOROUTER_CONNECT_PUBLIC_URL ?? env.BYOROUTER_CONNECT_URL ?? "http://127.0.0.1:8080",
    ),
    appApiKey: env.BYOROUTER_APP_KEY as string,
    clientId: env.BYOROUTER_CLIENT_ID as string,
    redirectUri,
    appOrigin: new URL(redirectUri).origin,
  };
}

/** Seed 000's provider: OpenAI's chat API at the gateway, as one connected user. */
export function createByorouterProvider(connectionId: string) {
  const config = byorouterConfig();
  return createOpenAICompatible({
    name: "byorouter",
    baseURL: `${config.apiUrl}/v1`,
    headers: {
      Authorization: `Bearer ${config.appApiKey}`,
      "X-Byorouter-Connection": connectionId,
    },
    includeUsage: true,
  });
}

/** A gateway call with the app key (and the user's connection, when given). */
export async function callGateway(
  path: string,
  init: { method?: string; json?: unknown; connectionId?: string } = {},
): Promise<Response> {
  const config = byorouterConfig();
  const headers: Record<string, string> = { Authorization: `Bearer ${config.appApiKey}` };
  if (init.connectionId !== undefined) headers["X-Byorouter-Connection"] = init.connectionId;
  if (init.json !== undefined) headers["Content-Type"] = "application/json";
  return fetch(`${config.apiUrl}${path}`, {
    method: init.method ?? "GET",
    headers,
    body: init.json === undefined ? undefined : JSON.stringify(init.json),
    cache: "no-store",
    signal: AbortSignal.timeout(10_000),
  });
}

/** The gateway's error (OpenAI's shape) as one line a person can read. */
export async function gatewayError(response: Response): Promise<string> {
  let message = response.statusText;
  try {
    const body = (await response.json()) as { error?: { message?: string } };
    message = body.error?.message ?? message;
  } catch {
    // not JSON: the status text says enough
  }
  return `BYORouter answered ${response.status}: ${message}`;
}
