// End-to-end: the official openai SDK streams a Responses API call through Bulwark. SDK retries
// are off, so a failure Bulwark did not absorb would reach this script.
//
//   BASE_URL=http://127.0.0.1:8080/v1 EXPECT_TEXT=... node responses.mjs
//
// Prints one JSON summary line on stdout; exits 0 only if the stream had the expected text, came
// from one upstream response, and ended with response.completed.
import OpenAI from 'openai';
import { check, run } from './summary.mjs';

const baseURL = process.env.BASE_URL;
const expectText = process.env.EXPECT_TEXT ?? '';
const model = process.env.MODEL ?? 'gpt-4o-mini';

const summary = { ok: false, base_url: baseURL ?? null };

async function main() {
  check(baseURL, 'BASE_URL is not set (e.g. http://127.0.0.1:8080/v1)');
  const client = new OpenAI({ baseURL, apiKey: 'sk-test', maxRetries: 0, timeout: 20_000 });
  const { data: stream, response } = await client.responses
    .create({ model, input: 'Say hello.', stream: true })
    .withResponse();
  summary.request_id = response.headers.get('x-request-id');
  summary.attempts = response.headers.get('x-bulwark-attempts');
  summary.types = [];
  summary.text = '';
  const responseIds = new Set();
  for await (const event of stream) {
    summary.types.push(event.type);
    if (event.response?.id) responseIds.add(event.response.id);
    if (event.type === 'response.output_text.delta') summary.text += event.delta;
  }
  summary.response_ids = [...responseIds];
  summary.response_id = summary.response_ids.length === 1 ? summary.response_ids[0] : null;
  check(summary.text === expectText,
    `streamed text ${JSON.stringify(summary.text)} != ${JSON.stringify(expectText)}`);
  check(summary.response_id !== null,
    `events from more than one response: ${JSON.stringify(summary.response_ids)}`);
  check(summary.types.at(-1) === 'response.completed', 'the stream did not end with response.completed');
  summary.ok = true;
}

await run(main, summary);
