// End-to-end: Bulwark's retries as the official openai SDK sees them. The caller scripts the
// upstream (see tests/integration/test_openai_sdk.py) for these steps, in order:
//
//   chat         a completion (upstream: 503, 429 with retry-after-ms, then 200)
//   stream       a streamed completion (upstream: a stream whose first event is an error,
//                then a good stream)
//   interrupted  a streamed completion cut after a few chunks: the SDK must raise, not
//                return the truncated text as if complete
//   gave_up      with the SDK's own retries ON (maxRetries: 2): the upstream fails every
//                Bulwark attempt; Bulwark's x-should-retry: false must stop the SDK from
//                retrying on top (the upstream sees max_attempts requests, not 3x that)
//
//   BASE_URL=http://127.0.0.1:8080/v1 [EXPECT_CHAT=...] [EXPECT_STREAM=...] node retry.mjs
//
// Prints one JSON summary line on stdout; exits 0 only if every step behaved as expected.
import OpenAI from 'openai';
import { check, run } from './summary.mjs';

const baseURL = process.env.BASE_URL;
const expectChat = process.env.EXPECT_CHAT ?? 'Hello from the fake upstream.';
const expectStream = process.env.EXPECT_STREAM ?? 'Hello from the fake upstream.';
const model = process.env.MODEL ?? 'gpt-4o-mini';
const messages = [{ role: 'user', content: 'Say hello.' }];

const summary = { ok: false, base_url: baseURL ?? null };

function describeError(error) {
  return {
    error_class: error?.constructor?.name ?? 'Error',
    message: error?.message ?? String(error),
    status: error?.status ?? null,
    code: error?.code ?? null,
    type: error?.type ?? null,
    should_retry: error?.headers?.['x-should-retry'] ?? null,
    attempts: error?.headers?.['x-bulwark-attempts'] ?? null,
  };
}

async function readStream(stream, into) {
  for await (const chunk of stream) {
    into.chunks += 1;
    const choice = chunk.choices?.[0];
    into.content += choice?.delta?.content ?? '';
    into.finish_reason = choice?.finish_reason ?? into.finish_reason;
  }
}

async function main() {
  check(baseURL, 'BASE_URL is not set (e.g. http://127.0.0.1:8080/v1)');
  const client = new OpenAI({ baseURL, apiKey: 'sk-test', maxRetries: 0, timeout: 20_000 });

  // 1. A completion that needed three upstream attempts.
  const { data: chat, response } = await client.chat.completions
    .create({ model, messages })
    .withResponse();
  summary.chat = {
    content: chat.choices?.[0]?.message?.content,
    request_id: response.headers.get('x-request-id'),
    attempts: response.headers.get('x-bulwark-attempts'),
  };
  check(summary.chat.content === expectChat,
    `chat content ${JSON.stringify(summary.chat.content)} != ${JSON.stringify(expectChat)}`);

  // 2. A stream whose first attempt failed in its first event.
  const { data: stream, response: streamResponse } = await client.chat.completions
    .create({ model, messages, stream: true })
    .withResponse();
  summary.stream = {
    content: '', chunks: 0, finish_reason: null,
    request_id: streamResponse.headers.get('x-request-id'),
    attempts: streamResponse.headers.get('x-bulwark-attempts'),
  };
  await readStream(stream, summary.stream);
  const streamed = JSON.stringify(summary.stream.content);
  check(summary.stream.content === expectStream,
    `streamed content ${streamed} != ${JSON.stringify(expectStream)}`);
  check(summary.stream.finish_reason === 'stop', 'the stream did not finish with "stop"');

  // 3. A stream interrupted after the commit point: the SDK raises.
  summary.interrupted = { content: '', chunks: 0, finish_reason: null, raised: null };
  try {
    const interrupted = await client.chat.completions.create({ model, messages, stream: true });
    await readStream(interrupted, summary.interrupted);
  } catch (error) {
    summary.interrupted.raised = describeError(error);
  }
  check(summary.interrupted.raised !== null,
    `an interrupted stream ended without an error: ${JSON.stringify(summary.interrupted)}`);

  // 4. SDK retries on: Bulwark's give-up answer must not be retried by the SDK.
  const retryingClient = new OpenAI({ baseURL, apiKey: 'sk-test', maxRetries: 2, timeout: 20_000 });
  summary.gave_up = { raised: null };
  try {
    await retryingClient.chat.completions.create({ model, messages });
  } catch (error) {
    summary.gave_up.raised = describeError(error);
  }
  check(summary.gave_up.raised !== null, 'a request whose every attempt failed succeeded');
  summary.ok = true;
}

await run(main, summary);
