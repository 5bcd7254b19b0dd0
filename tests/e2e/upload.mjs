// End-to-end: a file upload through the official openai SDK (files.create, multipart), the
// way an app uploads fine-tuning or batch input through Bulwark.
//
//   BASE_URL=http://127.0.0.1:8080/v1 FILE=/tmp/train.jsonl node upload.mjs
//   BASE_URL=... FILE=/tmp/huge.bin EXPECT_STATUS=413 EXPECT_CODE=request_too_large node upload.mjs
//
// Prints one JSON summary line; exits 0 only if the upload succeeded (or, with
// EXPECT_STATUS, failed with exactly that API error, read by the SDK as such).
import fs from 'node:fs';
import OpenAI from 'openai';
import { check, run } from './summary.mjs';

const summary = { ok: false };

await run(async () => {
  const client = new OpenAI({
    apiKey: 'sk-test', baseURL: process.env.BASE_URL, maxRetries: 0, timeout: 120_000,
  });
  const expectStatus = process.env.EXPECT_STATUS ? Number(process.env.EXPECT_STATUS) : null;
  summary.file_bytes = fs.statSync(process.env.FILE).size;
  const started = Date.now();
  try {
    const file = await client.files.create({
      file: fs.createReadStream(process.env.FILE), purpose: 'fine-tune',
    });
    summary.id = file.id;
    check(expectStatus === null, `expected a ${expectStatus}, the upload succeeded`);
  } catch (error) {
    if (expectStatus === null) throw error;
    summary.error_class = error?.constructor?.name ?? 'Error';
    summary.status = error?.status ?? null;
    summary.code = error?.code ?? null;
    check(summary.status === expectStatus && summary.code === process.env.EXPECT_CODE,
          `expected ${expectStatus} ${process.env.EXPECT_CODE}, got ${summary.error_class} ` +
          `${summary.status} ${summary.code}: ${error?.message}`);
  }
  summary.seconds = (Date.now() - started) / 1000;
  summary.ok = true;
}, summary);
