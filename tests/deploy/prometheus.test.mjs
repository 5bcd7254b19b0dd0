// deploy/prometheus/prometheus.yml: `promtool check config` passes, and the Kubernetes job
// finds exactly the Bulwark sidecars of deploy/kubernetes.
//
// Debian's promtool (like its Prometheus) is built without Kubernetes service discovery, so it
// rejects kubernetes_sd_configs as an unknown field. The check therefore runs on a copy whose
// kubernetes_sd_configs are swapped for file_sd_configs: everything else — relabel rules,
// regexes, rule files — is promtool's to judge. What Kubernetes discovery would find is then
// emulated: the targets Prometheus' pod role makes from the rendered example pods (one per
// declared container port, init containers included, with the __meta_kubernetes_* labels),
// run through the job's relabel_configs.
//
//   node --test prometheus.test.mjs      (from tests/deploy, after `npm ci`)
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import YAML from 'yaml';

import { render } from './lib/kustomize.mjs';
import { DEPLOY_DIR } from './lib/repo.mjs';

const PROM_DIR = path.join(DEPLOY_DIR, 'prometheus');
const CONFIG_FILE = path.join(PROM_DIR, 'prometheus.yml');
const config = YAML.parse(fs.readFileSync(CONFIG_FILE, 'utf8'));
const K8S_DIR = path.join(DEPLOY_DIR, 'kubernetes');

const KUBERNETES_SD_FIELDS = new Set(['role', 'namespaces', 'selectors', 'api_server', 'kubeconfig_file',
  'attach_metadata', 'basic_auth', 'authorization', 'oauth2', 'tls_config', 'proxy_url',
  'follow_redirects', 'enable_http2']);

function promtool(...args) {
  try {
    return execFileSync('promtool', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (error) {
    throw new Error(`promtool ${args.join(' ')} failed:\n${error.stdout ?? ''}${error.stderr ?? ''}${error.message}`);
  }
}

test('promtool check config passes (kubernetes_sd_configs swapped for file_sd_configs)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bulwark-prom-'));
  try {
    const targets = path.join(dir, 'targets.json');
    fs.writeFileSync(targets, '[]\n');
    const copy = structuredClone(config);
    copy.rule_files = (copy.rule_files ?? []).map((f) => path.resolve(PROM_DIR, f));
    let swapped = 0;
    for (const job of copy.scrape_configs) {
      if (!job.kubernetes_sd_configs) continue;
      for (const sd of job.kubernetes_sd_configs) {
        for (const key of Object.keys(sd)) assert.ok(KUBERNETES_SD_FIELDS.has(key), `kubernetes_sd_configs.${key}`);
        assert.ok(['pod', 'node', 'service', 'endpoints', 'endpointslice', 'ingress'].includes(sd.role), `role ${sd.role}`);
      }
      delete job.kubernetes_sd_configs;
      job.file_sd_configs = [{ files: [targets] }];
      swapped++;
    }
    assert.ok(swapped >= 1, 'the example has a Kubernetes job');
    const file = path.join(dir, 'prometheus.yml');
    fs.writeFileSync(file, YAML.stringify(copy));
    const out = promtool('check', 'config', file);
    assert.match(out, /SUCCESS/);
    assert.match(out, /rules found/, 'the rule file was checked too');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// --- Kubernetes pod discovery and relabelling, emulated -------------------------------------

const sanitize = (name) => name.replace(/[^a-zA-Z0-9_]/g, '_');

// The targets Prometheus' kubernetes_sd role "pod" makes for one running pod.
function podTargets(pod, { namespace, name, ip }) {
  const common = {
    __meta_kubernetes_namespace: namespace,
    __meta_kubernetes_pod_name: name,
    __meta_kubernetes_pod_ip: ip,
    __meta_kubernetes_pod_phase: 'Running',
    __meta_kubernetes_pod_ready: 'true',
  };
  for (const [k, v] of Object.entries(pod.metadata.labels ?? {})) {
    common[`__meta_kubernetes_pod_label_${sanitize(k)}`] = v;
    common[`__meta_kubernetes_pod_labelpresent_${sanitize(k)}`] = 'true';
  }
  for (const [k, v] of Object.entries(pod.metadata.annotations ?? {})) {
    common[`__meta_kubernetes_pod_annotation_${sanitize(k)}`] = v;
    common[`__meta_kubernetes_pod_annotationpresent_${sanitize(k)}`] = 'true';
  }
  const targets = [];
  const containers = [...pod.spec.containers.map((c) => [c, false]),
    ...(pod.spec.initContainers ?? []).map((c) => [c, true])];
  for (const [c, init] of containers) {
    const base = { ...common, __meta_kubernetes_pod_container_name: c.name,
      __meta_kubernetes_pod_container_image: c.image, __meta_kubernetes_pod_container_init: String(init) };
    if (!c.ports?.length) {
      targets.push({ ...base, __address__: ip });
      continue;
    }
    for (const p of c.ports) {
      targets.push({ ...base, __address__: `${ip}:${p.containerPort}`,
        __meta_kubernetes_pod_container_port_name: p.name ?? '',
        __meta_kubernetes_pod_container_port_number: String(p.containerPort),
        __meta_kubernetes_pod_container_port_protocol: p.protocol ?? 'TCP' });
    }
  }
  return targets;
}

// Prometheus' relabelling (replace, keep, drop, labelmap), then its target label defaults.
function relabel(job, discovered) {
  let labels = { job: job.job_name, __metrics_path__: job.metrics_path ?? '/metrics',
    __scheme__: job.scheme ?? 'http', ...discovered };
  for (const rule of job.relabel_configs ?? []) {
    const action = rule.action ?? 'replace';
    const regex = new RegExp(`^(?:${rule.regex ?? '(.*)'})$`);
    const value = (rule.source_labels ?? []).map((l) => labels[l] ?? '').join(rule.separator ?? ';');
    if (action === 'keep' && !regex.test(value)) return null;
    if (action === 'drop' && regex.test(value)) return null;
    if (action === 'replace') {
      const m = regex.exec(value);
      if (!m) continue;
      const expand = (tpl) => tpl.replace(/\$\{?(\w+)\}?/g, (_, g) => m[Number(g)] ?? m.groups?.[g] ?? '');
      const result = expand(rule.replacement ?? '$1');
      if (result === '') delete labels[rule.target_label];
      else labels[expand(rule.target_label)] = result;
    } else if (action === 'labelmap') {
      for (const [k, v] of Object.entries(labels)) {
        const m = regex.exec(k);
        if (m) labels[(rule.replacement ?? '$1').replace(/\$(\d+)/g, (_, g) => m[Number(g)])] = v;
      }
    } else if (!['keep', 'drop'].includes(action)) {
      throw new Error(`relabel action ${action} is not emulated here`);
    }
  }
  if (!labels.__address__) return null;
  labels.instance ??= labels.__address__;
  const scrapeUrl = `${labels.__scheme__}://${labels.__address__}${labels.__metrics_path__}`;
  labels = Object.fromEntries(Object.entries(labels).filter(([k]) => !k.startsWith('__')));
  return { url: scrapeUrl, labels };
}

const kubernetesJobs = config.scrape_configs.filter((j) => j.kubernetes_sd_configs?.some((sd) => sd.role === 'pod'));
const POD = { namespace: 'shop', name: 'example-app-7d9f8-abcde', ip: '10.1.2.3' };

function discover(variant) {
  const { objects } = render(path.join(K8S_DIR, variant));
  const pod = objects.find((o) => o.kind === 'Deployment').spec.template;
  const found = [];
  for (const job of kubernetesJobs) {
    for (const t of podTargets(pod, POD)) {
      const result = relabel(job, t);
      if (result) found.push(result);
    }
  }
  return found;
}

// The alert rules select Bulwark's targets by job name: the job must match that selector.
const rulesText = fs.readFileSync(path.join(PROM_DIR, 'bulwark-alerts.yml'), 'utf8');
const jobSelector = new RegExp(`^(?:${/up\{job=~"([^"]+)"\}/.exec(rulesText)[1]})$`);

for (const variant of ['base', 'overlays/classic-sidecar']) {
  test(`the Kubernetes job scrapes the sidecar of ${variant}: once, on the admin port`, () => {
    assert.ok(kubernetesJobs.length >= 1, 'a kubernetes_sd pod job');
    const found = discover(variant);
    assert.deepEqual(found, [{
      url: `http://${POD.ip}:9090/metrics`,
      labels: { job: 'bulwark', instance: `${POD.ip}:9090`, namespace: POD.namespace, pod: POD.name, container: 'bulwark' },
    }]);
    assert.match(found[0].labels.job, jobSelector, 'the alert rules\' job selector matches');
  });
}

test('the annotation job leaves pods to the PodMonitor when the annotations are gone', () => {
  assert.deepEqual(discover('overlays/prometheus-operator'), []);
  // The PodMonitor's job label is <namespace>/<name>.
  const { objects } = render(path.join(K8S_DIR, 'overlays', 'prometheus-operator'));
  const monitor = objects.find((o) => o.kind === 'PodMonitor');
  assert.match(`${POD.namespace}/${monitor.metadata.name}`, jobSelector);
});

test('the annotation job honours prometheus.io/port and /path, IPv6 pod addresses included', () => {
  const job = kubernetesJobs[0];
  const target = {
    __address__: '[fd00::5]:9090', __meta_kubernetes_pod_container_port_name: 'bulwark-admin',
    __meta_kubernetes_pod_phase: 'Running', __meta_kubernetes_pod_annotation_prometheus_io_scrape: 'true',
    __meta_kubernetes_pod_annotation_prometheus_io_port: '9191',
    __meta_kubernetes_pod_annotation_prometheus_io_path: '/custom',
    __meta_kubernetes_namespace: 'ns', __meta_kubernetes_pod_name: 'p', __meta_kubernetes_pod_container_name: 'bulwark',
  };
  assert.equal(relabel(job, target).url, 'http://[fd00::5]:9191/custom');
  assert.equal(relabel(job, { ...target, __meta_kubernetes_pod_annotation_prometheus_io_scrape: 'false' }), null);
  assert.equal(relabel(job, { ...target, __meta_kubernetes_pod_phase: 'Succeeded' }), null);
});

test('the static job lists an admin address and matches the rules\' job selector', () => {
  const statics = config.scrape_configs.filter((j) => j.static_configs);
  assert.ok(statics.length >= 1);
  for (const job of statics) {
    assert.match(job.job_name, jobSelector);
    for (const sc of job.static_configs) for (const t of sc.targets) assert.match(t, /^[^:]+:\d+$/);
  }
});
