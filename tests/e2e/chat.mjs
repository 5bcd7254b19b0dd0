// End-to-end: the official openai SDK, pointed at Bulwark, does a normal and a streamed chat
// completion. SDK retries are off so every attempt seen is Bulwark's.
//
//   BASE_URL=http://127.0.0.1:8080/v1 [EXPECT_CHAT=...] [EXPECT_STREAM=...] node chat.mjs
//
// Prints one JSON summary line on stdout; exits 0 only if both completions had the expected text.
import OpenAI from 'openai';
import { check, run } from './summary.mjs';

const DEFAULT_TEXT = 'Hello from the fake upstream.'; // the fake upstream's default answer

const baseURL = process.env.BASE_URL;
const expectChat = process.env.EXPECT_CHAT ?? DEFAULT_TEXT;
const expectStream = process.env.EXPECT_STREAM ?? DEFAULT_TEXT;
const model = process.env.MODEL ?? 'gpt-4o-mini';

const summary = { ok: false, base_url: baseURL ?? null };

async function main() {
  check(baseURL, 'BASE_URL is not set (e.g. http://127.0.0.1:8080/v1)');
  const client = new OpenAI({ baseURL, apiKey: 'sk-test', maxRetries: 0, timeout: 20_000 });
  const messages = [{ role: 'user', content: 'Say hello.' }];

  const { data: chat, response } = await client.chat.completions
    .create({ model, messages })
    .withResponse();
  const chatText = chat.choices?.[0]?.message?.content;
  summary.chat = {
    content: chatText,
    request_id: response.headers.get('x-request-id'),
    upstream: response.headers.get('x-bulwark-upstream'),
    attempts: response.headers.get('x-bulwark-attempts'),
    usage: chat.usage ?? null,
  };
  check(chatText === expectChat, `chat content ${JSON.stringify(chatText)} != ${JSON.stringify(expectChat)}`);

  const { data: stream, response: streamResponse } = await client.chat.completions
    .create({ model, messages, stream: true })
    .withResponse();
  let streamText = '';
  let chunks = 0;
  let finishReason = null;
  for await (const chunk of stream) {
    chunks += 1;
    const choice = chunk.choices?.[0];
    streamText += choice?.delta?.content ?? '';
    finishReason = choice?.finish_reason ?? finishReason;
  }
  summary.stream = {
    content: streamText,
    chunks,
    finish_reason: finishReason,
    request_id: streamResponse.headers.get('x-request-id'),
    upstream: streamResponse.headers.get('x-bulwark-upstream'),
    attempts: streamResponse.headers.get('x-bulwark-attempts'),
  };
  check(streamText === expectStream,
    `streamed content ${JSON.stringify(streamText)} != ${JSON.stringify(expectStream)}`);
  check(finishReason === 'stop', `stream finish_reason ${JSON.stringify(finishReason)} != "stop"`);
  summary.ok = true;
}

await run(main, summary);
