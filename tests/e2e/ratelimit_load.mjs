// Load driver for the quota-aware admission bench (tests/bench/admission.py): CLIENTS concurrent
// workers of the official openai SDK send REQUESTS non-streamed chat completions through
// Bulwark. SDK retries are off, so every retry seen is Bulwark's.
//
//   BASE_URL=http://127.0.0.1:8080/v1 [CLIENTS=20] [REQUESTS=300] [SEED=1] [DEADLINE_MS=120000]
//   [MODEL=gpt-4o-mini] node ratelimit_load.mjs
//
// Request i is the same in every run with the same SEED, whichever worker sends it: a prompt of
// 50..2000 characters of text and max_tokens uniform in 100..1000. DEADLINE_MS is the SDK's
// per-request timeout. Prints one JSON summary line on stdout and exits 0 even when requests
// failed (the caller judges); only a broken driver (bad settings, a crash) exits 1.
import OpenAI from 'openai';
import { check } from './summary.mjs';

function intEnv(name, fallback) {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  check(Number.isInteger(value) && value >= 0, `${name}=${JSON.stringify(text)} is not a count`);
  return value;
}

const baseURL = process.env.BASE_URL;
const clients = intEnv('CLIENTS', 20);
const requests = intEnv('REQUESTS', 300);
const seed = intEnv('SEED', 1);
const deadlineMs = intEnv('DEADLINE_MS', 120_000);
const model = process.env.MODEL ?? 'gpt-4o-mini';

// mulberry32: a small seeded PRNG, so runs and modes send identical requests.
function rng(state) {
  let a = state >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const WORDS = ('the a quota limit token request minute proxy upstream model answer retry wait ' +
  'bucket refill admission client server latency budget window burst summary text of and to ' +
  'in for with on that this is are be was').split(' ');

function uniform(random, lo, hi) { // integer in [lo, hi]
  return lo + Math.floor(random() * (hi - lo + 1));
}

function requestSpec(i) {
  const random = rng(Math.imul(seed, 0x9e3779b1) ^ Math.imul(i + 1, 0x85ebca6b));
  const chars = uniform(random, 50, 2000);
  let text = `Request ${i}: summarise this.`;
  while (text.length < chars) text += ` ${WORDS[Math.floor(random() * WORDS.length)]}`;
  return { prompt: text.slice(0, chars), maxTokens: uniform(random, 100, 1000) };
}

function percentile(sorted, p) { // nearest rank
  if (sorted.length === 0) return null;
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return Math.round(sorted[rank - 1]);
}

const summary = {
  ok: null, // requests that succeeded; `error` is set instead when the driver itself broke
  base_url: baseURL ?? null,
  model,
  clients,
  deadline_ms: deadlineMs,
  seed,
};

async function main() {
  check(baseURL, 'BASE_URL is not set (e.g. http://127.0.0.1:8080/v1)');
  check(clients >= 1, 'CLIENTS must be at least 1');
  const client = new OpenAI({ baseURL, apiKey: 'sk-test', maxRetries: 0, timeout: deadlineMs });
  const records = [];
  let next = 0;
  const start = performance.now();

  async function worker() {
    while (next < requests) {
      const i = next++;
      const { prompt, maxTokens } = requestSpec(i);
      const sent = performance.now();
      const record = { i, ok: false, status: null, code: null, latency_ms: 0, attempts: null,
        prompt_chars: prompt.length, max_tokens: maxTokens };
      try {
        const { response } = await client.chat.completions
          .create({ model, messages: [{ role: 'user', content: prompt }], max_tokens: maxTokens })
          .withResponse();
        record.ok = true;
        record.status = response.status;
        record.attempts = response.headers.get('x-bulwark-attempts');
      } catch (error) {
        if (error instanceof OpenAI.APIError && error.status !== undefined) {
          record.status = error.status;
          record.code = error.code ?? error.error?.code ?? null;
          record.attempts = error.headers?.['x-bulwark-attempts'] ?? null;
        } else {
          record.code = error?.constructor?.name ?? 'Error'; // timeout, connection error
        }
      }
      record.latency_ms = performance.now() - sent;
      records.push(record);
    }
  }

  await Promise.all(Array.from({ length: clients }, worker));
  const durationS = (performance.now() - start) / 1000;

  const failures = {};
  let attemptsSum = 0;
  let attemptsUnknown = 0;
  for (const r of records) {
    if (!r.ok) {
      const key = `${r.status ?? 'none'}/${r.code ?? 'none'}`;
      failures[key] = (failures[key] ?? 0) + 1;
    }
    const attempts = Number.parseInt(r.attempts ?? '', 10);
    if (Number.isFinite(attempts)) attemptsSum += attempts;
    else attemptsUnknown += 1;
  }
  const all = records.map((r) => r.latency_ms).sort((a, b) => a - b);
  const okLatency = records.filter((r) => r.ok).map((r) => r.latency_ms).sort((a, b) => a - b);
  Object.assign(summary, {
    requests: records.length,
    ok: okLatency.length,
    failed: records.length - okLatency.length,
    failures,
    p50_ms: percentile(all, 50),
    p99_ms: percentile(all, 99),
    max_ms: all.length ? Math.round(all[all.length - 1]) : null,
    ok_p50_ms: percentile(okLatency, 50),
    ok_p99_ms: percentile(okLatency, 99),
    duration_s: Math.round(durationS * 1000) / 1000,
    attempts_sum: attemptsSum,
    attempts_unknown: attemptsUnknown, // no x-bulwark-attempts header (e.g. a client timeout)
    prompt_chars_sum: records.reduce((s, r) => s + r.prompt_chars, 0),
    max_tokens_sum: records.reduce((s, r) => s + r.max_tokens, 0),
    // What the succeeded requests cost at the fake limiter's estimate (prompt bytes / 4,
    // rounded up, + max_tokens; the prompts are ASCII): the tokens that bought an answer.
    ok_est_tokens: records.filter((r) => r.ok)
      .reduce((s, r) => s + Math.ceil(r.prompt_chars / 4) + r.max_tokens, 0),
  });
}

try {
  await main();
} catch (error) { // the driver broke (bad settings, a bug): the only failing exit
  summary.error = `${error?.constructor?.name ?? 'Error'}: ${error?.message ?? error}`;
  process.exitCode = 1;
}
console.log(JSON.stringify(summary));
