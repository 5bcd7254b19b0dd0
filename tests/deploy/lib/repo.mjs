// Paths and small helpers shared by the deploy checks.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';

export const TESTS_DIR = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
export const REPO_DIR = path.resolve(TESTS_DIR, '..', '..');
export const DEPLOY_DIR = path.join(REPO_DIR, 'deploy');

/** The bulwark binary: $BULWARK_BIN (ctest sets it), else build/bulwark. */
export function bulwarkBinary() {
  const bin = process.env.BULWARK_BIN || path.join(REPO_DIR, 'build', 'bulwark');
  if (!fs.existsSync(bin)) throw new Error(`bulwark binary not found at ${bin}: build it or set BULWARK_BIN`);
  return bin;
}

/** Runs `bulwark --check-config` on the given proxy.yaml text; throws with its output unless ok. */
export function checkProxyConfig(text, env = {}) {
  const dir = fs.mkdtempSync(path.join(process.env.TMPDIR || '/tmp', 'bulwark-deploy-'));
  const file = path.join(dir, 'proxy.yaml');
  fs.writeFileSync(file, text);
  try {
    const out = execFileSync(bulwarkBinary(), ['--check-config', file], {
      encoding: 'utf8', env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    if (out.trim() !== 'ok') throw new Error(`bulwark --check-config printed: ${out}`);
  } catch (error) {
    throw new Error(`bulwark --check-config rejected the file:\n${error.stdout ?? ''}${error.stderr ?? ''}${error.message}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Seconds in a Bulwark duration ("250ms", "30s", "1m", "1h"). */
export function durationSeconds(text) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(String(text).trim());
  if (!m) throw new Error(`not a duration: ${text}`);
  return Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2]];
}

/** host and port of a listen address ("127.0.0.1:8080", "[::]:9090"). */
export function splitHostPort(address) {
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(address);
  if (!m) throw new Error(`not host:port: ${address}`);
  return { host: m[1], port: Number(m[2]) };
}

/** Every file under dir (recursively) whose name matches re. */
export function filesUnder(dir, re) {
  const out = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...filesUnder(full, re));
    else if (re.test(entry.name)) out.push(full);
  }
  return out.sort();
}
