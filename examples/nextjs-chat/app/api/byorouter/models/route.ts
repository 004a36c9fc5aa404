// The models this user can pick: the gateway's /v1/models for their connection, which lists
// only models of the providers they connected.
import { NextResponse } from "next/server";
import { callGateway, gatewayError } from "@/lib/ai/byorouter";
import { existingSession } from "@/lib/session";

export const dynamic = "force-dynamic";

export interface AvailableModel {
  id: string; // provider-prefixed, e.g. openai/gpt-4o-mini
  provider: string;
}

export async function GET() {
  const session = await existingSession();
  if (session?.connectionId === undefined) {
    return NextResponse.json({ error: "Connect your API keys first." }, { status: 403 });
  }
  const answer = await callGateway("/v1/models", { connectionId: session.connectionId });
  if (!answer.ok) {
    return NextResponse.json({ error: await gatewayError(answer) }, { status: answer.status });
  }
  const body = (await answer.json()) as { data?: { id: string; kind?: string }[] };
  const models: AvailableModel[] = (body.data ?? [])
    // A chat box cannot use an embedding model; the gateway may say which ones are.
    .filter((model) => model.kind === undefined || model.kind === "chat")
    .map((model) => ({ id: model.id, provider: model.id.split("/", 1)[0] }));
  return NextResponse.json({ models }, { headers: { "Cache-Control": "no-store" } });
}
