// The "user" of this example: one browser session, a random id in an httpOnly cookie, with its
// connection id kept in this server's memory. A real app stores the connection id with its user
// (seed 000: a `byorouterConnectionId` column) and keeps its own sign-in.
import { randomBytes, timingSafeEqual } from "node:crypto";
import { cookies } from "next/headers";
import { byorouterConfig } from "@/lib/ai/byorouter";

const SESSION_COOKIE = "byo_chat_session";
const OAUTH_COOKIE = "byo_chat_oauth";
const SESSION_MAX_AGE_S = 7 * 24 * 3600;
// Connect's code lives at most 10 minutes; the state and verifier need not outlive it.
const OAUTH_MAX_AGE_S = 600;

export interface SessionData {
  connectionId?: string;
  notice?: string; // shown once on the next page load
}

// On globalThis: every route is bundled on its own, and they must share one store.
const store: Map<string, SessionData> = ((globalThis as { __byoChatSessions?: Map<string, SessionData> })
  .__byoChatSessions ??= new Map());

function secure(): boolean {
  return byorouterConfig().appOrigin.startsWith("https://");
}

/** This browser's session, made (and its cookie set) on first use. */
export async function currentSession(): Promise<SessionData> {
  const jar = await cookies();
  let id = jar.get(SESSION_COOKIE)?.value;
  if (id === undefined || !store.has(id)) {
    id = randomBytes(32).toString("base64url");
    store.set(id, {});
    jar.set(SESSION_COOKIE, id, {
      httpOnly: true,
      // Lax: the browser still sends it when Connect redirects back to the callback.
      sameSite: "lax",
      secure: secure(),
      path: "/",
      maxAge: SESSION_MAX_AGE_S,
    });
  }
  return store.get(id) as SessionData;
}

/** The session only if this browser already has one (never sets a cookie). */
export async function existingSession(): Promise<SessionData | undefined> {
  const id = (await cookies()).get(SESSION_COOKIE)?.value;
  return id === undefined ? undefined : store.get(id);
}

export interface PendingConnect {
  state: string;
  verifier: string;
}

/** Keeps the connect flow's `state` and PKCE verifier until the callback, in an httpOnly cookie. */
export async function rememberConnect(pending: PendingConnect): Promise<void> {
  (await cookies()).set(OAUTH_COOKIE, JSON.stringify(pending), {
    httpOnly: true,
    sameSite: "lax",
    secure: secure(),
    path: "/api/byorouter/callback",
    maxAge: OAUTH_MAX_AGE_S,
  });
}

/** The pending connect, spent: a callback URL opened twice finds nothing the second time. */
export async function takeConnect(): Promise<PendingConnect | undefined> {
  const jar = await cookies();
  const raw = jar.get(OAUTH_COOKIE)?.value;
  jar.delete({ name: OAUTH_COOKIE, path: "/api/byorouter/callback" });
  if (raw === undefined) return undefined;
  try {
    const parsed = JSON.parse(raw) as Partial<PendingConnect>;
    if (typeof parsed.state === "string" && typeof parsed.verifier === "string") {
      return { state: parsed.state, verifier: parsed.verifier };
    }
  } catch {
    // a cookie we did not write
  }
  return undefined;
}

export function sameSecret(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}

/** A state-changing request from this app's own pages (not a form on another site). */
export function fromThisApp(request: Request): boolean {
  return request.headers.get("origin") === byorouterConfig().appOrigin;
}
