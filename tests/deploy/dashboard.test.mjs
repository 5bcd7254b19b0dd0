// deploy/grafana/bulwark-dashboard.json: parses, imports anywhere (every query goes through the
// $datasource variable, nothing hard-wires a data source UID), filters by $job and $upstream,
// lays its panels out without overlaps, and has the panels an incident needs. The queries'
// metrics and labels are checked in promql.test.mjs.
//
//   node --test dashboard.test.mjs      (from tests/deploy, after `npm ci`)
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

import { analyse, fromGrafana } from './lib/promql.mjs';
import { DEPLOY_DIR } from './lib/repo.mjs';

const FILE = path.join(DEPLOY_DIR, 'grafana', 'bulwark-dashboard.json');
const dashboard = JSON.parse(fs.readFileSync(FILE, 'utf8'));
// Which metrics carry an upstream label (the others cannot be filtered by $upstream).
const CATALOGUE = JSON.parse(
  fs.readFileSync(new URL('./bulwark_metrics.json', import.meta.url), 'utf8')).metrics;
const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
const queryPanels = panels.filter((p) => p.type !== 'row');
const variables = Object.fromEntries(dashboard.templating.list.map((v) => [v.name, v]));
const DS_REF = '${datasource}';

test('identity: title, a fixed uid, a schema version', () => {
  assert.equal(typeof dashboard.title, 'string');
  assert.match(dashboard.uid, /^[A-Za-z0-9_-]{1,40}$/, 'a uid Grafana accepts, so links survive re-imports');
  assert.ok(Number.isInteger(dashboard.schemaVersion) && dashboard.schemaVersion >= 36);
  assert.equal(dashboard.id ?? null, null, 'no instance-specific id');
  assert.equal(dashboard.__inputs, undefined, 'imports without an input mapping (the datasource variable does it)');
});

test('variables: a Prometheus datasource picker, then job and upstream from Bulwark\'s own series', () => {
  assert.equal(variables.datasource?.type, 'datasource');
  assert.equal(variables.datasource.query, 'prometheus');
  for (const name of ['job', 'upstream']) {
    const v = variables[name];
    assert.equal(v?.type, 'query', `$${name} is a query variable`);
    assert.equal(v.datasource.uid, DS_REF, `$${name} queries through $datasource`);
    assert.equal(v.includeAll, true, `$${name} has All`);
    assert.equal(v.allValue, '.*', `$${name}'s All matches every value, even ones not listed yet`);
  }
});

test('every panel and query uses the $datasource variable', () => {
  for (const p of queryPanels) {
    assert.equal(p.datasource?.uid, DS_REF, `panel "${p.title}"`);
    for (const t of p.targets ?? []) assert.equal(t.datasource?.uid, DS_REF, `panel "${p.title}" ${t.refId}`);
  }
  for (const a of dashboard.annotations.list.filter((a) => a.expr)) assert.equal(a.datasource.uid, DS_REF);
  assert.doesNotMatch(JSON.stringify(dashboard), /"uid":\s*"(?!\$\{datasource\}|-- Grafana --|bulwark)[^"]*"/,
    'no hard-wired datasource uid');
});

test('every query filters by $job and, where the metric has an upstream, by $upstream', () => {
  for (const p of queryPanels) {
    for (const t of p.targets ?? []) {
      const where = `panel "${p.title}" ${t.refId}`;
      const { metrics } = analyse(fromGrafana(t.expr));
      for (const selector of t.expr.matchAll(/(bulwark_[a-z_]+)\{([^}]*)\}/g)) {
        assert.match(selector[2], /job=~"\$job"/, `${where}: ${selector[1]} filtered by $job`);
        const family = selector[1].replace(/_(bucket|sum|count)$/, '');
        const entry = CATALOGUE[selector[1]] ?? CATALOGUE[family];
        assert.ok(entry, `${where}: ${selector[1]} is in the metric catalogue`);
        if (entry.labels.includes('upstream')) {
          assert.match(selector[2], /upstream=~"\$upstream"/, `${where}: ${selector[1]} filtered by $upstream`);
        }
      }
      for (const m of metrics) {
        assert.match(t.expr, new RegExp(`${m}\\{`), `${where}: every selector of ${m} has matchers`);
      }
    }
  }
});

test('panel ids and per-panel refIds are unique; queries are not empty', () => {
  const ids = panels.map((p) => p.id);
  assert.equal(new Set(ids).size, ids.length, 'unique panel ids');
  for (const p of queryPanels) {
    assert.ok(p.targets?.length, `panel "${p.title}" has queries`);
    const refs = p.targets.map((t) => t.refId);
    assert.equal(new Set(refs).size, refs.length, `panel "${p.title}": unique refIds`);
    for (const t of p.targets) assert.ok(t.expr?.trim(), `panel "${p.title}" ${t.refId}: an expression`);
    assert.ok(p.description?.trim(), `panel "${p.title}" says what it shows (description)`);
  }
});

test('the layout: inside the 24-column grid, no overlapping panels', () => {
  const cells = new Map();
  for (const p of panels) {
    const { x, y, w, h } = p.gridPos;
    assert.ok(x >= 0 && w > 0 && x + w <= 24 && y >= 0 && h > 0, `panel "${p.title}" fits the grid`);
    for (let i = x; i < x + w; i++) {
      for (let j = y; j < y + h; j++) {
        const key = `${i},${j}`;
        assert.ok(!cells.has(key), `panels "${cells.get(key)}" and "${p.title}" overlap at ${key}`);
        cells.set(key, p.title);
      }
    }
  }
});

test('the panels an incident needs are there', () => {
  const find = (type, re) => queryPanels.filter((p) => p.type === type && p.targets.some((t) => re.test(t.expr)));
  const need = {
    'requests by status code': find('timeseries', /sum by \(code\) \(rate\(bulwark_requests_total/),
    'attempts per request': find('timeseries', /bulwark_upstream_attempts_total.*\/.*bulwark_requests_total/),
    'retries by reason': find('timeseries', /sum by \(reason\) \(rate\(bulwark_retries_total/),
    'breaker state timeline per upstream': find('state-timeline', /by \(upstream\) \(bulwark_circuit_breaker_state/),
    'time to first byte percentiles': find('timeseries', /histogram_quantile\(0\.\d+, sum by \(le, upstream\) \(rate\(bulwark_upstream_time_to_first_byte_seconds_bucket/),
    'duration percentiles': find('timeseries', /histogram_quantile\(0\.\d+, sum by \(le, upstream\) \(rate\(bulwark_request_duration_seconds_bucket/),
    'tokens per model': find('timeseries', /by \(model, kind\) \(rate\(bulwark_tokens_total/),
    'in flight': find('timeseries', /bulwark_inflight_requests/),
  };
  for (const [what, found] of Object.entries(need)) assert.ok(found.length >= 1, `a panel for ${what}`);
  const timeline = need['breaker state timeline per upstream'][0];
  const mapped = Object.fromEntries(Object.entries(timeline.fieldConfig.defaults.mappings[0].options)
    .map(([k, v]) => [k, v.text]));
  assert.deepEqual(mapped, { 0: 'CLOSED', 1: 'OPEN', 2: 'HALF_OPEN' }, 'breaker states named as SPEC §5 numbers them');
});
