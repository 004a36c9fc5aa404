// The chat: the user's messages through BYORouter with their connection, streamed back as the
// AI SDK's UI message stream (what `useChat` reads).
import { APICallError, convertToModelMessages, streamText, type UIMessage } from "ai";
import { NextResponse } from "next/server";
import { createByorouterProvider } from "@/lib/ai/byorouter";
import { existingSession, fromThisApp } from "@/lib/session";

export const dynamic = "force-dynamic";
export const maxDuration = 120;

function readable(error: unknown): string {
  // The gateway's own words (OpenAI's error shape); they never carry a key.
  if (APICallError.isInstance(error)) return `BYORouter answered ${error.statusCode}: ${error.message}`;
  return "The answer failed; try again.";
}

export async function POST(request: Request) {
  if (!fromThisApp(request)) {
    return NextResponse.json({ error: "Reload the page and try again." }, { status: 403 });
  }
  const session = await existingSession();
  if (session?.connectionId === undefined) {
    return NextResponse.json({ error: "Connect your API keys first." }, { status: 403 });
  }
  let body: { messages?: UIMessage[]; model?: unknown };
  try {
    body = (await request.json()) as typeof body;
  } catch {
    return NextResponse.json({ error: "Send {model, messages} as JSON." }, { status: 400 });
  }
  if (typeof body.model !== "string" || !Array.isArray(body.messages)) {
    return NextResponse.json({ error: "Send {model, messages} as JSON." }, { status: 400 });
  }
  const byorouter = createByorouterProvider(session.connectionId);
  const result = streamText({
    model: byorouter(body.model),
    messages: await convertToModelMessages(body.messages),
    // The gateway already retries and falls back across the user's providers.
    maxRetries: 0,
    abortSignal: request.signal,
  });
  return result.toUIMessageStreamResponse({ onError: readable });
}
