// End-to-end: a request body over server.max_request_body, sent by the official openai SDK
// (which sends no `Expect: 100-continue`). The SDK must read Bulwark's 413 as an API error,
// not see its connection reset ("Connection error.").
//
//   BASE_URL=http://127.0.0.1:8080/v1 BODY_MIB=40 node large_body.mjs
//
// Prints one JSON summary line; exits 0 only if the SDK got the 413 request_too_large.
import OpenAI from 'openai';

const baseURL = process.env.BASE_URL;
const mib = Number(process.env.BODY_MIB ?? '40');
const summary = { ok: false, body_bytes: 0 };

try {
  const client = new OpenAI({ apiKey: 'sk-test', baseURL, maxRetries: 0, timeout: 60_000 });
  // One input string of `mib` MiB: an embeddings call far over the limit.
  const input = 'a'.repeat(mib * 1024 * 1024);
  summary.body_bytes = input.length;
  try {
    await client.embeddings.create({ model: 'text-embedding-3-small', input });
    summary.outcome = 'succeeded';
  } catch (error) {
    summary.error_class = error?.constructor?.name ?? 'Error';
    summary.status = error?.status ?? null;
    summary.code = error?.code ?? null;
    summary.message = error?.message ?? String(error);
    summary.ok = summary.status === 413 && summary.code === 'request_too_large';
  }
} catch (error) {
  summary.fatal = String(error);
}
console.log(JSON.stringify(summary));
process.exit(summary.ok ? 0 : 1);
