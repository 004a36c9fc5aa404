// Connect sends the browser back here: check `state`, exchange the code on this server.
import { NextResponse, type NextRequest } from "next/server";
import { byorouterConfig, callGateway, gatewayError } from "@/lib/ai/byorouter";
import { currentSession, sameSecret, takeConnect } from "@/lib/session";

export const dynamic = "force-dynamic";

export async function GET(request: NextRequest) {
  const config = byorouterConfig();
  const session = await currentSession();
  const pending = await takeConnect();
  const params = request.nextUrl.searchParams;
  if (pending === undefined || !sameSecret(params.get("state") ?? "", pending.state)) {
    session.notice = "That sign-in link is stale or not yours; connect again.";
  } else if (params.has("error")) {
    // The user clicked Cancel (access_denied), or Connect refused the request.
    session.notice = params.get("error_description") ?? params.get("error") ?? "Not connected.";
  } else {
    const answer = await callGateway("/v1/oauth/token", {
      method: "POST",
      json: {
        grant_type: "authorization_code",
        code: params.get("code") ?? "",
        redirect_uri: config.redirectUri,
        code_verifier: pending.verifier,
      },
    });
    if (answer.ok) {
      const body = (await answer.json()) as { connection_id: string };
      session.connectionId = body.connection_id;
      session.notice = "Your API keys are connected.";
    } else {
      session.notice = await gatewayError(answer);
    }
  }
  return NextResponse.redirect(new URL("/", config.appOrigin), 303);
}
