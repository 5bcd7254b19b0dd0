// Every PromQL expression in deploy/ — the alert rules, the Grafana dashboard's queries,
// annotations and variables — parses, names only metrics Bulwark exports (SPEC §5, listed in
// bulwark_metrics.json; histograms as _bucket/_sum/_count; plus Prometheus' up), and uses only
// labels those series carry: in matchers, in by/without/on clauses, in legends and in alert
// templates. The metric list itself is checked against the names registered in
// proxy/observe/metrics.cc, so it cannot drift from the code.
//
//   node --test promql.test.mjs      (from tests/deploy, after `npm ci`)
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';

import { METRICS, analyse, fromGrafana } from './lib/promql.mjs';
import { DEPLOY_DIR, REPO_DIR } from './lib/repo.mjs';

const RULES_FILE = path.join(DEPLOY_DIR, 'prometheus', 'bulwark-alerts.yml');
const DASHBOARD_FILE = path.join(DEPLOY_DIR, 'grafana', 'bulwark-dashboard.json');
const rules = YAML.parse(fs.readFileSync(RULES_FILE, 'utf8')).groups.flatMap((g) => g.rules);
const dashboard = JSON.parse(fs.readFileSync(DASHBOARD_FILE, 'utf8'));

function allPanels(panels) {
  return (panels ?? []).flatMap((p) => [p, ...allPanels(p.panels)]);
}

// {where, expr, legend?} for every query in the dashboard.
function dashboardQueries() {
  const out = [];
  for (const panel of allPanels(dashboard.panels)) {
    for (const t of panel.targets ?? []) {
      out.push({ where: `panel "${panel.title}" ${t.refId}`, expr: fromGrafana(t.expr), legend: t.legendFormat });
    }
  }
  for (const a of dashboard.annotations?.list ?? []) {
    if (a.expr) out.push({ where: `annotation "${a.name}"`, expr: fromGrafana(a.expr), legend: a.textFormat });
  }
  for (const v of dashboard.templating?.list ?? []) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'string' ? v.query : v.query.query;
    const m = /^label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)$/.exec(q.trim());
    assert.ok(m, `variable ${v.name}: a label_values(selector, label) query`);
    out.push({ where: `variable $${v.name}`, expr: fromGrafana(m[1]), legend: `{{${m[2]}}}` });
  }
  return out;
}

test('the metric list matches the names proxy/observe/metrics.cc registers', () => {
  const source = fs.readFileSync(path.join(REPO_DIR, 'proxy', 'observe', 'metrics.cc'), 'utf8');
  const registered = [...source.matchAll(/\.Name\("([a-z_:][a-z0-9_:]*)"\)/g)].map((m) => m[1]).sort();
  assert.deepEqual(registered, Object.keys(METRICS).sort());
});

test('the checker itself: unknown metrics, missing labels and bad syntax are errors', () => {
  const bad = {
    'rate(bulwark_request_total[5m])': /not a metric Bulwark exports/,
    'sum by (model) (rate(bulwark_requests_total[5m]))': /label "model"/,
    'bulwark_retries_total{code="500"}': /no label "code"/,
    'sum by (code) (sum by (upstream) (rate(bulwark_requests_total[5m])))': /label "code"/,
    'histogram_quantile(0.9, sum by (upstream) (rate(bulwark_request_duration_seconds_bucket[5m])))': /needs le/,
    'rate(bulwark_requests_total[5m]': /syntax error/,
    '{job="x"}': /without a metric name/,
  };
  for (const [expr, re] of Object.entries(bad)) {
    assert.match(analyse(expr).errors.join('\n'), re, expr);
  }
  const good = analyse('histogram_quantile(0.5, sum by (le, upstream) (rate(bulwark_request_duration_seconds_bucket{job=~"a"}[5m])))');
  assert.deepEqual(good.errors, []);
  assert.deepEqual([...good.labels], ['upstream']);
});

for (const rule of rules) {
  test(`alert ${rule.alert}: its expression and templates use only Bulwark's metrics and their labels`, () => {
    const { errors, labels } = analyse(rule.expr);
    assert.deepEqual(errors, []);
    for (const [key, value] of Object.entries(rule.annotations ?? {})) {
      for (const m of value.matchAll(/\$labels\.([A-Za-z_][A-Za-z0-9_]*)/g)) {
        assert.ok(labels?.has(m[1]), `annotation ${key} uses $labels.${m[1]}, which ${rule.alert}'s alerts cannot carry`);
      }
    }
  });

  test(`alert ${rule.alert}: severity, summary, description and a runbook hint`, () => {
    assert.ok(['critical', 'warning', 'info'].includes(rule.labels?.severity), 'severity label');
    for (const key of ['summary', 'description', 'runbook']) {
      assert.ok(rule.annotations?.[key]?.trim(), `annotation ${key}`);
    }
  });
}

test('the rules cover the alerts the README promises', () => {
  const names = rules.map((r) => r.alert);
  for (const expected of ['BulwarkCircuitBreakerOpen', 'BulwarkHighRetryShare', 'BulwarkRetryBudgetExhausted',
    'BulwarkStreamInterruptions', 'BulwarkHigh5xxRate', 'BulwarkTargetDown', 'BulwarkMetricsAbsent']) {
    assert.ok(names.includes(expected), expected);
  }
});

test('every alert has a firing and a quiet case in the promtool tests', () => {
  const testsDir = path.join(DEPLOY_DIR, 'prometheus', 'tests');
  const cases = fs.readdirSync(testsDir).filter((f) => /\.ya?ml$/.test(f))
    .flatMap((f) => YAML.parse(fs.readFileSync(path.join(testsDir, f), 'utf8')).tests ?? [])
    .flatMap((t) => t.alert_rule_test ?? []);
  for (const rule of rules) {
    const own = cases.filter((c) => c.alertname === rule.alert);
    assert.ok(own.some((c) => (c.exp_alerts ?? []).length > 0), `${rule.alert}: a case where it fires`);
    assert.ok(own.some((c) => (c.exp_alerts ?? []).length === 0), `${rule.alert}: a case where it does not`);
  }
});

test('every dashboard query uses only Bulwark\'s metrics, and legends only labels the result carries', () => {
  const problems = [];
  const queries = dashboardQueries();
  assert.ok(queries.length > 20, 'the dashboard has its queries');
  for (const { where, expr, legend } of queries) {
    const { errors, labels } = analyse(expr);
    problems.push(...errors.map((e) => `${where}: ${e}`));
    for (const m of (legend ?? '').matchAll(/\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}/g)) {
      if (!labels?.has(m[1])) problems.push(`${where}: legend {{${m[1]}}} is not a label of the result`);
    }
  }
  assert.deepEqual(problems, []);
});

test('the dashboard shows every metric Bulwark exports', () => {
  const used = new Set(dashboardQueries().flatMap(({ expr }) => [...analyse(expr).metrics]));
  const base = (name) => name.replace(/_(bucket|sum|count)$/, '');
  const missing = Object.keys(METRICS).filter((m) => ![...used].some((u) => u === m || base(u) === m));
  assert.deepEqual(missing, [], 'metrics without a panel');
});
