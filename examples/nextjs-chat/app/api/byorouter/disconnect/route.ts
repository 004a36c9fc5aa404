// "Disconnect": revoke the connection at the gateway (its keys are erased), then forget it.
import { NextResponse } from "next/server";
import { callGateway, gatewayError } from "@/lib/ai/byorouter";
import { existingSession, fromThisApp } from "@/lib/session";

export const dynamic = "force-dynamic";

export async function POST(request: Request) {
  if (!fromThisApp(request)) {
    return NextResponse.json({ error: "Use this app's own Disconnect button." }, { status: 403 });
  }
  const session = await existingSession();
  if (session?.connectionId === undefined) {
    return NextResponse.json({ connected: false });
  }
  const answer = await callGateway(
    `/v1/connections/${encodeURIComponent(session.connectionId)}`,
    { method: "DELETE" },
  );
  // 404: already disconnected on the Connect page; either way it is gone now.
  if (!answer.ok && answer.status !== 404) {
    return NextResponse.json({ error: await gatewayError(answer) }, { status: 502 });
  }
  delete session.connectionId;
  session.notice = "Disconnected. Your keys were erased from BYORouter.";
  return NextResponse.json({ connected: false });
}
