// Parses PromQL with Prometheus' own grammar (@prometheus-io/lezer-promql, the parser of the
// Prometheus UI) and follows labels through the expression: which metrics each selector names,
// which labels its matchers use, and which labels every sub-expression still carries (an
// aggregation `by (a)` keeps only a; histogram_quantile drops le; ...). A label used where
// the data cannot carry it — in a matcher, a by/without/on/ignoring clause, a legend or an
// alert template — is an error, and so is any metric Bulwark does not export.
import fs from 'node:fs';
import path from 'node:path';
import { parser } from '@prometheus-io/lezer-promql';

import { TESTS_DIR } from './repo.mjs';

const catalog = JSON.parse(fs.readFileSync(path.join(TESTS_DIR, 'bulwark_metrics.json'), 'utf8'));
export const METRICS = catalog.metrics;
export const TARGET_LABELS = catalog.target_labels;

/** name -> labels a series of it can carry, for every metric the expressions may use. */
export function allowedSeries() {
  const out = new Map();
  const add = (name, labels) => out.set(name, new Set([...labels, ...TARGET_LABELS]));
  for (const [name, m] of Object.entries(METRICS)) {
    if (m.type === 'histogram') {
      add(`${name}_bucket`, [...m.labels, 'le']);
      add(`${name}_sum`, m.labels);
      add(`${name}_count`, m.labels);
    } else {
      add(name, m.labels);
    }
  }
  for (const [name, m] of Object.entries(catalog.prometheus_metrics)) add(name, m.labels);
  return out;
}

const SERIES = allowedSeries();

// Functions whose result keeps the labels of their (first) vector argument.
const LABEL_PRESERVING = new Set(['rate', 'irate', 'increase', 'delta', 'idelta', 'deriv', 'abs', 'ceil',
  'floor', 'round', 'clamp', 'clamp_min', 'clamp_max', 'exp', 'ln', 'log2', 'log10', 'sqrt', 'sgn',
  'changes', 'resets', 'predict_linear', 'avg_over_time', 'min_over_time', 'max_over_time',
  'sum_over_time', 'count_over_time', 'last_over_time', 'quantile_over_time', 'stddev_over_time',
  'stdvar_over_time', 'present_over_time', 'absent_over_time', 'timestamp', 'sort', 'sort_desc',
  'holt_winters', 'double_exponential_smoothing']);

const text = (source, node) => source.slice(node.from, node.to);
const children = (node) => {
  const out = [];
  for (let c = node.firstChild; c; c = c.nextSibling) out.push(c);
  return out;
};
const child = (node, name) => children(node).find((c) => c.name === name);
const labelNames = (source, groupingLabels) => (groupingLabels ? children(groupingLabels)
  .filter((c) => c.name === 'LabelName' || c.name === 'QuotedLabelName')
  .map((c) => text(source, c).replace(/^"|"$/g, '')) : []);

/**
 * Analyses one expression. Returns {metrics: Set, errors: [], labels: Set|null} — `labels`
 * being what the result's series can carry (null for a scalar).
 */
export function analyse(expr) {
  const source = expr;
  const errors = [];
  const metrics = new Set();
  const tree = parser.parse(source);
  tree.iterate({
    enter(n) {
      if (n.type.isError) errors.push(`syntax error at ${n.from}: …${source.slice(Math.max(0, n.from - 20), n.from + 20)}…`);
    },
  });
  if (errors.length) return { metrics, errors, labels: null };

  function selector(node) {
    const vs = node.name === 'MatrixSelector' ? child(node, 'VectorSelector') : node;
    let name = child(vs, 'Identifier') ? text(source, child(vs, 'Identifier')) : null;
    const matchers = child(vs, 'LabelMatchers');
    const used = [];
    for (const m of matchers ? children(matchers) : []) {
      const ln = child(m, 'LabelName') ?? child(m, 'QuotedLabelName');
      if (!ln) continue;
      const label = text(source, ln).replace(/^"|"$/g, '');
      if (label === '__name__') {
        const lit = child(m, 'StringLiteral');
        if (lit && child(m, 'MatchOp')?.firstChild?.name === 'EqlSingle') name = JSON.parse(text(source, lit));
        else errors.push(`__name__ must be matched with = to a single metric name: ${text(source, m)}`);
      } else {
        used.push(label);
      }
    }
    if (!name) {
      errors.push(`selector without a metric name: ${text(source, vs)}`);
      return new Set();
    }
    metrics.add(name);
    const labels = SERIES.get(name);
    if (!labels) {
      errors.push(`${name} is not a metric Bulwark exports (tests/deploy/bulwark_metrics.json)`);
      return new Set();
    }
    for (const label of used) {
      if (!labels.has(label)) errors.push(`${name} has no label "${label}" (matcher in ${text(source, vs)})`);
    }
    return new Set(labels);
  }

  function needLabels(labels, set, where) {
    if (set === null) return;
    for (const l of labels) if (!set.has(l)) errors.push(`${where}: label "${l}" is not on the data (it carries ${[...set].sort().join(', ') || 'no labels'})`);
  }

  // Labels the expression's result carries; null = a scalar.
  function visit(node) {
    switch (node.name) {
      case 'PromQL':
      case 'ParenExpr':
      case 'UnaryExpr':
      case 'OffsetExpr':
      case 'StepInvariantExpr':
      case 'SubqueryExpr': {
        const exprChild = children(node).find((c) => !['LeftParen', 'RightParen', 'UnaryOp', 'Sub', 'Add', 'Offset',
          'OffsetDurationExpr', 'At', 'NumberDurationLiteral', 'NumberDurationLiteralInDurationContext',
          'DurationExpr', 'Start', 'End'].includes(c.name));
        return exprChild ? visit(exprChild) : null;
      }
      case 'NumberDurationLiteral':
      case 'NumberLiteral':
      case 'StringLiteral':
        return null;
      case 'VectorSelector':
      case 'MatrixSelector':
        return selector(node);
      case 'FunctionCall': {
        const fname = text(source, child(node, 'FunctionIdentifier'));
        const args = children(child(node, 'FunctionCallBody')).filter((c) => !['LeftParen', 'RightParen', 'Comma'].includes(c.name));
        const argLabels = args.map(visit);
        const vectorArg = argLabels.find((l) => l !== null) ?? null;
        if (fname === 'histogram_quantile') {
          needLabels(['le'], argLabels[1], 'histogram_quantile needs le');
          return new Set([...(argLabels[1] ?? [])].filter((l) => l !== 'le'));
        }
        if (fname === 'vector' || fname === 'absent' || fname === 'absent_over_time') return new Set();
        if (['time', 'scalar', 'pi'].includes(fname)) return null;
        if (fname === 'label_replace') {
          return new Set([...(vectorArg ?? []), JSON.parse(text(source, args[1]))]);
        }
        if (LABEL_PRESERVING.has(fname)) return vectorArg;
        errors.push(`function ${fname} is not handled by this check: teach lib/promql.mjs its labels`);
        return vectorArg;
      }
      case 'AggregateExpr': {
        const op = text(source, child(node, 'AggregateOp'));
        const body = children(child(node, 'FunctionCallBody')).filter((c) => !['LeftParen', 'RightParen', 'Comma'].includes(c.name));
        const argLabels = body.map(visit);
        const input = argLabels[argLabels.length - 1];
        const modifier = child(node, 'AggregateModifier');
        if (['topk', 'bottomk', 'limitk', 'limit_ratio'].includes(op)) return input;
        if (!modifier) return new Set();
        const listed = labelNames(source, child(modifier, 'GroupingLabels'));
        needLabels(listed, input, `${op} ${text(source, modifier)}`);
        if (child(modifier, 'By')) return new Set(listed);
        return new Set([...(input ?? [])].filter((l) => !listed.includes(l)));
      }
      case 'BinaryExpr': {
        const parts = children(node);
        const operands = parts.filter((c) => !['MatchingModifierClause', 'BoolModifier'].includes(c.name)
          && !/^(Add|Sub|Mul|Div|Mod|Pow|Eql|Neq|Lte|Lss|Gte|Gtr|And|Or|Unless|Atan2)$/.test(c.name));
        const [left, right] = operands.map(visit);
        const op = parts.find((c) => /^(And|Or|Unless)$/.test(c.name))?.name;
        const matching = child(node, 'MatchingModifierClause');
        if (matching) {
          const groups = children(matching).filter((c) => c.name === 'GroupingLabels');
          const onLabels = labelNames(source, groups[0]);
          if (child(matching, 'On')) {
            needLabels(onLabels, left, `on(${onLabels}) left side`);
            needLabels(onLabels, right, `on(${onLabels}) right side`);
          }
          if (groups[1]) {
            const extra = labelNames(source, groups[1]);
            const one = child(matching, 'GroupLeft') ? right : left;
            needLabels(extra, one, 'group_left/group_right');
            const many = child(matching, 'GroupLeft') ? left : right;
            return new Set([...(many ?? []), ...extra]);
          }
        }
        if (left === null) return right;
        if (right === null) return left;
        if (op === 'Or') return new Set([...left, ...right]);
        return left;
      }
      default:
        errors.push(`expression node ${node.name} is not handled by this check: teach lib/promql.mjs`);
        return null;
    }
  }

  const labels = visit(tree.topNode);
  return { metrics, errors, labels };
}

/** Grafana's template variables, replaced so that the expression parses as plain PromQL. */
export function fromGrafana(expr) {
  return expr
    .replace(/\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}/g, '5m')
    .replace(/\$__range_s\b/g, '300');
}
