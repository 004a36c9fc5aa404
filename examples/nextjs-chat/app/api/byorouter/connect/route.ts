// "Connect API Keys": make `state` and a PKCE pair, keep them, send the browser to Connect.
import { createHash, randomBytes } from "node:crypto";
import { NextResponse, type NextRequest } from "next/server";
import { byorouterConfig } from "@/lib/ai/byorouter";
import { currentSession, rememberConnect } from "@/lib/session";

export const dynamic = "force-dynamic";

export async function GET(request: NextRequest) {
  const config = byorouterConfig();
  // Cookies belong to one host name, and localhost and 127.0.0.1 are two: start on the host of
  // the registered redirect URI, or the callback would not find the state it must check.
  // (The Host header: behind `next start -H`, request.nextUrl names the bound host instead.)
  if (request.headers.get("host") !== new URL(config.appOrigin).host) {
    return NextResponse.redirect(new URL("/api/byorouter/connect", config.appOrigin), 307);
  }
  await currentSession();
  const state = randomBytes(32).toString("base64url");
  const verifier = randomBytes(48).toString("base64url"); // 64 characters
  const challenge = createHash("sha256").update(verifier).digest("base64url");
  await rememberConnect({ state, verifier });
  const authorize = new URL(`${config.connectUrl}/authorize`);
  authorize.search = new URLSearchParams({
    client_id: config.clientId,
    redirect_uri: config.redirectUri,
    response_type: "code",
    state,
    code_challenge: challenge,
    code_challenge_method: "S256",
  }).toString();
  return NextResponse.redirect(authorize, 303);
}
