// "Manage API Keys": a one-time link to this user's keys on the Connect page, followed at once.
import { NextResponse } from "next/server";
import { byorouterConfig, callGateway, gatewayError } from "@/lib/ai/byorouter";
import { existingSession, fromThisApp } from "@/lib/session";

export const dynamic = "force-dynamic";

export async function POST(request: Request) {
  const config = byorouterConfig();
  const home = new URL("/", config.appOrigin);
  const session = await existingSession();
  if (!fromThisApp(request) || session?.connectionId === undefined) {
    return NextResponse.redirect(home, 303);
  }
  const answer = await callGateway("/v1/connect/sessions", {
    method: "POST",
    json: { connection_id: session.connectionId, return_url: home.toString() },
  });
  if (!answer.ok) {
    session.notice = await gatewayError(answer);
    return NextResponse.redirect(home, 303);
  }
  const { url } = (await answer.json()) as { url: string };
  return NextResponse.redirect(url, 303);
}
