// Whether this user is connected, asked of the gateway: a disconnect on the Connect page shows
// here instead of in the next chat.
import { NextResponse } from "next/server";
import { callGateway, gatewayError } from "@/lib/ai/byorouter";
import { existingSession } from "@/lib/session";

export const dynamic = "force-dynamic";

export interface ProviderStatus {
  provider: string;
  label: string;
  status: string;
}

export interface ConnectionStatus {
  connected: boolean;
  connectionId?: string;
  providers?: ProviderStatus[];
  notice?: string;
}

export async function GET() {
  const session = await existingSession();
  const answer: ConnectionStatus = { connected: false };
  if (session?.notice !== undefined) {
    answer.notice = session.notice;
    delete session.notice;
  }
  if (session?.connectionId !== undefined) {
    const reply = await callGateway(`/v1/connections/${encodeURIComponent(session.connectionId)}`);
    if (reply.ok) {
      const body = (await reply.json()) as { providers?: ProviderStatus[] };
      answer.connected = true;
      answer.connectionId = session.connectionId;
      answer.providers = (body.providers ?? []).map(({ provider, label, status }) => ({
        provider,
        label,
        status,
      }));
    } else if (reply.status === 404) {
      // Disconnected on the Connect page (or in another tab): the gateway refuses it now.
      delete session.connectionId;
      answer.notice = `${await gatewayError(reply)}. Your keys are disconnected; connect again.`;
    } else {
      answer.connected = true;
      answer.connectionId = session.connectionId;
      answer.notice = await gatewayError(reply);
    }
  }
  return NextResponse.json(answer, { headers: { "Cache-Control": "no-store" } });
}
