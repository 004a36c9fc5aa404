// Calls the BYORouter gateway the way seed 000's Next.js chatbot does: @ai-sdk/openai-compatible
// with the app key and the user's connection id as headers. Prints one JSON object with what the
// SDK saw, for tests/e2e/test_vercel_ai_sdk.py to assert on.
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateText, streamText } from "ai";

const { BYO_API_URL, BYO_APP_KEY, BYO_CONNECTION, BYO_MODEL, BYO_PROMPT } = process.env;

const byorouter = createOpenAICompatible({
  name: "byorouter",
  baseURL: `${BYO_API_URL}/v1`,
  headers: {
    Authorization: `Bearer ${BYO_APP_KEY}`,
    "X-Byorouter-Connection": BYO_CONNECTION,
  },
  includeUsage: true,
});

const model = byorouter(BYO_MODEL);
const prompt = BYO_PROMPT ?? "hello from the vercel ai sdk";

const generated = await generateText({ model, prompt, maxRetries: 0 });

const streamed = streamText({ model, prompt, maxRetries: 0 });
const parts = [];
for await (const delta of streamed.textStream) parts.push(delta);
const usage = await streamed.usage;
const finishReason = await streamed.finishReason;

console.log(
  JSON.stringify({
    generate: {
      text: generated.text,
      finishReason: generated.finishReason,
      usage: generated.usage,
    },
    stream: { parts, text: parts.join(""), finishReason, usage },
  }),
);
