// deploy/kubernetes: every kustomization renders (each file it names exists, no manifest is
// left unused), every object validates offline against the Kubernetes API schemas (and the
// Prometheus Operator's, for the PodMonitor) with unknown fields rejected, and the sidecar is
// wired the way the README promises: proxy.yaml accepted by the real binary, probes on the
// admin port, the key from a Secret, the app pointed at the loopback listener, a non-root
// read-only container, and a termination grace period that covers shutdown_grace.
//
//   node --test kubernetes.test.mjs      (from tests/deploy, after `npm ci`)
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';

import { render, readYaml } from './lib/kustomize.mjs';
import { validateObject } from './lib/k8s-schema.mjs';
import {
  DEPLOY_DIR, REPO_DIR, checkProxyConfig, durationSeconds, filesUnder, splitHostPort,
} from './lib/repo.mjs';

const K8S_DIR = path.join(DEPLOY_DIR, 'kubernetes');

// Every directory with a kustomization.yaml, split into kustomizations and components.
const kustomizationDirs = filesUnder(K8S_DIR, /^kustomization\.yaml$/).map((f) => path.dirname(f));
const variants = [];
const components = [];
for (const dir of kustomizationDirs) {
  const [k] = readYaml(path.join(dir, 'kustomization.yaml'));
  (k.kind === 'Component' ? components : variants).push(dir);
}
const rel = (p) => path.relative(REPO_DIR, p);

function rendered(dir) {
  return render(dir, 'Kustomization').objects;
}

function projectVersion() {
  const cmake = fs.readFileSync(path.join(REPO_DIR, 'CMakeLists.txt'), 'utf8');
  return /project\(bulwark\s+VERSION\s+([0-9.]+)/.exec(cmake)[1];
}

// "${VAR:-default}" -> default, as Bulwark would expand it with VAR unset.
function expandDefaults(text) {
  return String(text).replace(/\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}/g, '$1');
}

function quantityBytes(q) {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|K|M|G)?$/.exec(String(q));
  assert.ok(m, `not a memory quantity: ${q}`);
  return Number(m[1]) * ({ Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, K: 1e3, M: 1e6, G: 1e9 }[m[2]] ?? 1);
}

function preStopSleepSeconds(container) {
  const pre = container.lifecycle?.preStop;
  if (!pre) return 0;
  if (pre.sleep) return Number(pre.sleep.seconds);
  const cmd = pre.exec?.command ?? [];
  if (cmd.length === 2 && /(^|\/)sleep$/.test(cmd[0])) return Number(cmd[1]);
  assert.fail(`${container.name}: preStop hook is not a plain sleep (${JSON.stringify(pre)}): account for it here`);
}

// The pod, its Bulwark sidecar, its app containers, and Bulwark's proxy.yaml, for a variant.
function sidecarSetup(objects) {
  // The example app's Deployment: the one with a bulwark container (fleet-redis adds Redis).
  const hasBulwark = (o) => [...(o.spec.template.spec.initContainers ?? []),
    ...o.spec.template.spec.containers].some((c) => c.name === 'bulwark');
  const deployments = objects.filter((o) => o.kind === 'Deployment' && hasBulwark(o));
  assert.equal(deployments.length, 1, 'one example Deployment per variant');
  const deployment = deployments[0];
  const pod = deployment.spec.template;
  const spec = pod.spec;
  const inInit = (spec.initContainers ?? []).filter((c) => c.name === 'bulwark');
  const inMain = spec.containers.filter((c) => c.name === 'bulwark');
  assert.equal(inInit.length + inMain.length, 1, 'exactly one container named bulwark');
  const bulwark = inInit[0] ?? inMain[0];
  const form = inInit.length ? 'native' : 'classic';
  const apps = spec.containers.filter((c) => c.name !== 'bulwark');
  assert.ok(apps.length >= 1, 'an app container beside the sidecar');

  // --config <path> -> the volume mounted there -> the ConfigMap and key holding proxy.yaml.
  const args = [...(bulwark.command ?? []), ...(bulwark.args ?? [])];
  const configPath = args[args.indexOf('--config') + 1];
  assert.ok(args.includes('--config') && configPath, 'bulwark is started with --config <path>');
  const mount = (bulwark.volumeMounts ?? []).find((m) => configPath.startsWith(`${m.mountPath}/`));
  assert.ok(mount, `a volume is mounted over ${path.dirname(configPath)}`);
  assert.equal(mount.readOnly, true, 'the config volume is mounted read-only');
  const volume = spec.volumes.find((v) => v.name === mount.name);
  assert.ok(volume?.configMap, `volume ${mount.name} comes from a ConfigMap`);
  const configMap = objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name === volume.configMap.name);
  assert.ok(configMap, `ConfigMap ${volume.configMap.name} is part of the variant`);
  const key = path.relative(mount.mountPath, configPath);
  const proxyYamlText = configMap.data?.[key];
  assert.ok(proxyYamlText, `ConfigMap ${configMap.metadata.name} has the key ${key}`);
  const proxy = YAML.parse(proxyYamlText);
  return { deployment, pod, spec, bulwark, form, apps, proxy, proxyYamlText };
}

function containerPort(container, port) {
  if (typeof port === 'number') return port;
  const found = (container.ports ?? []).find((p) => p.name === port);
  assert.ok(found, `${container.name} declares a port named ${port}`);
  return found.containerPort;
}

// --- the files ----------------------------------------------------------------------------

test('the layout has the native base, the classic and operator overlays, and the PodMonitor component', () => {
  const names = kustomizationDirs.map((d) => path.relative(K8S_DIR, d)).sort();
  for (const expected of ['base', 'components/podmonitor', 'overlays/classic-sidecar',
    'overlays/prometheus-operator', 'overlays/fleet-redis']) {
    assert.ok(names.includes(expected), `deploy/kubernetes/${expected}/kustomization.yaml exists`);
  }
});

test('every manifest file under deploy/kubernetes is used by a kustomization', () => {
  const used = new Set();
  for (const dir of variants) render(dir, 'Kustomization', used);
  for (const dir of components) render(dir, 'Component', used);
  const all = filesUnder(K8S_DIR, /\.(ya?ml)$/);
  const unused = all.filter((f) => !used.has(f));
  assert.deepEqual(unused.map(rel), [], 'files no kustomization refers to');
});

for (const dir of [...variants, ...components]) {
  test(`${rel(dir)}: renders, and every object validates against its schema`, async () => {
    const kind = components.includes(dir) ? 'Component' : 'Kustomization';
    const { objects } = render(dir, kind);
    assert.ok(objects.length > 0, 'renders to at least one object');
    for (const obj of objects) await validateObject(obj);
  });
}

test('the strict schema pass rejects a misspelt field', async () => {
  const [deployment] = rendered(path.join(K8S_DIR, 'base')).filter((o) => o.kind === 'Deployment');
  deployment.spec.template.spec.initContainers[0].securityContext.readOnlyRootFileSystem = true;
  await assert.rejects(validateObject(deployment), /readOnlyRootFileSystem/);
});

// --- the sidecar, in each variant -----------------------------------------------------------

for (const dir of variants) {
  const name = rel(dir);

  test(`${name}: proxy.yaml from the ConfigMap passes bulwark --check-config`, () => {
    const { proxyYamlText } = sidecarSetup(rendered(dir));
    checkProxyConfig(proxyYamlText, { OPENAI_API_KEY: 'sk-test' });
    checkProxyConfig(proxyYamlText);  // the key is optional: the client's Authorization then
  });

  test(`${name}: the app reaches Bulwark on loopback, the kubelet and Prometheus on the admin port`, () => {
    const { bulwark, apps, proxy, pod } = sidecarSetup(rendered(dir));
    const listen = splitHostPort(expandDefaults(proxy.server.listen));
    const admin = splitHostPort(expandDefaults(proxy.server.admin_listen));
    assert.equal(listen.host, '127.0.0.1', 'the proxy listens on loopback only (it adds the API key)');
    assert.ok(['0.0.0.0', '::'].includes(admin.host), 'the admin endpoints listen on the pod IP');
    for (const app of apps) {
      const env = Object.fromEntries((app.env ?? []).map((e) => [e.name, e]));
      assert.equal(env.OPENAI_BASE_URL?.value, `http://127.0.0.1:${listen.port}/v1`, `${app.name}: OPENAI_BASE_URL`);
      assert.ok(!env.OPENAI_API_KEY?.valueFrom, `${app.name}: the real key stays in the sidecar`);
    }
    assert.equal(containerPort(bulwark, 'bulwark-admin'), admin.port, 'port bulwark-admin is admin_listen\'s');
    assert.ok(!(bulwark.ports ?? []).some((p) => p.containerPort === listen.port),
      'the loopback-only proxy port is not declared (nothing outside the pod can use it)');

    const probes = { livenessProbe: '/healthz', readinessProbe: '/readyz' };
    for (const [probe, probePath] of Object.entries(probes)) {
      const get = bulwark[probe]?.httpGet;
      assert.ok(get, `bulwark has an HTTP ${probe}`);
      assert.equal(get.path, probePath, `${probe} path`);
      assert.equal(containerPort(bulwark, get.port), admin.port, `${probe} is on the admin port`);
    }
    if (bulwark.startupProbe) {
      assert.equal(containerPort(bulwark, bulwark.startupProbe.httpGet.port), admin.port);
    }

    const annotations = pod.metadata.annotations ?? {};
    if (annotations['prometheus.io/scrape'] === 'true') {
      assert.equal(annotations['prometheus.io/port'], String(admin.port), 'prometheus.io/port');
      assert.equal(annotations['prometheus.io/path'], '/metrics', 'prometheus.io/path');
    }
  });

  test(`${name}: the API key comes from a Secret into the sidecar's OPENAI_API_KEY`, () => {
    const { bulwark, proxy } = sidecarSetup(rendered(dir));
    assert.match(proxy.upstreams[0].api_key, /\$\{OPENAI_API_KEY(:-[^}]*)?\}/, 'proxy.yaml reads OPENAI_API_KEY');
    const env = (bulwark.env ?? []).find((e) => e.name === 'OPENAI_API_KEY');
    assert.ok(env?.valueFrom?.secretKeyRef?.name && env.valueFrom.secretKeyRef.key,
      'OPENAI_API_KEY from secretKeyRef');
  });

  test(`${name}: the containers run as non-root, read-only, without capabilities`, () => {
    const { spec, bulwark } = sidecarSetup(rendered(dir));
    const podSc = spec.securityContext ?? {};
    for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
      const sc = c.securityContext ?? {};
      assert.equal(sc.runAsNonRoot ?? podSc.runAsNonRoot, true, `${c.name}: runAsNonRoot`);
      assert.equal(sc.readOnlyRootFilesystem, true, `${c.name}: readOnlyRootFilesystem`);
      assert.equal(sc.allowPrivilegeEscalation, false, `${c.name}: allowPrivilegeEscalation`);
      assert.ok((sc.capabilities?.drop ?? []).includes('ALL'), `${c.name}: drops ALL capabilities`);
    }
    const uid = bulwark.securityContext?.runAsUser ?? podSc.runAsUser;
    assert.ok(Number.isInteger(uid) && uid > 0, 'bulwark runs as a numeric non-root UID');
  });

  test(`${name}: requests and a memory limit are set`, () => {
    const { bulwark } = sidecarSetup(rendered(dir));
    const { requests = {}, limits = {} } = bulwark.resources ?? {};
    assert.ok(requests.cpu && requests.memory, 'cpu and memory requests');
    assert.ok(limits.memory, 'a memory limit');
    assert.ok(quantityBytes(requests.memory) <= quantityBytes(limits.memory), 'request <= limit');
  });

  test(`${name}: terminationGracePeriodSeconds covers preStop + shutdown_grace + a margin`, () => {
    const { spec, bulwark, apps, proxy, form } = sidecarSetup(rendered(dir));
    const grace = durationSeconds(proxy.server.shutdown_grace ?? '30s');
    const preStop = Math.max(...[bulwark, ...apps].map(preStopSleepSeconds));
    const period = spec.terminationGracePeriodSeconds ?? 30;
    assert.ok(period >= preStop + grace + 5,
      `terminationGracePeriodSeconds ${period} < longest preStop ${preStop} + shutdown_grace ${grace} + 5`);
    if (form === 'classic') {
      // Both containers get SIGTERM together: Bulwark must keep serving until the app is past
      // its own preStop, or the app's calls while it drains find nothing listening.
      const appPreStop = Math.max(...apps.map(preStopSleepSeconds));
      assert.ok(preStopSleepSeconds(bulwark) > appPreStop, 'bulwark\'s preStop outlasts the app\'s');
    }
  });

  test(`${name}: sidecar form and image`, () => {
    const { bulwark, form } = sidecarSetup(rendered(dir));
    if (form === 'native') {
      assert.equal(bulwark.restartPolicy, 'Always', 'a native sidecar is an init container with restartPolicy Always');
      assert.ok(bulwark.startupProbe, 'the app waits for the native sidecar\'s startupProbe');
    } else {
      assert.equal(bulwark.restartPolicy, undefined, 'restartPolicy is for init containers only');
    }
    assert.match(bulwark.image, new RegExp(`(^|/)bulwark:${projectVersion().replaceAll('.', '\\.')}$`),
      'the image tag follows the project version');
  });
}

test('the native base and the classic overlay differ only in the sidecar\'s form', () => {
  const native = sidecarSetup(rendered(path.join(K8S_DIR, 'base')));
  const classic = sidecarSetup(rendered(path.join(K8S_DIR, 'overlays', 'classic-sidecar')));
  assert.equal(native.form, 'native');
  assert.equal(classic.form, 'classic');
  const strip = (c) => { const { restartPolicy, lifecycle, ...rest } = c; return rest; };
  assert.deepEqual(strip(classic.bulwark), strip(native.bulwark));
});

test('overlays/prometheus-operator: a PodMonitor that selects the pods and scrapes the admin port', () => {
  const objects = rendered(path.join(K8S_DIR, 'overlays', 'prometheus-operator'));
  const { pod, bulwark, proxy } = sidecarSetup(objects);
  const monitors = objects.filter((o) => o.kind === 'PodMonitor');
  assert.equal(monitors.length, 1, 'one PodMonitor');
  const { selector, podMetricsEndpoints } = monitors[0].spec;
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) {
    assert.equal(pod.metadata.labels?.[k], v, `the pod template carries ${k}=${v}`);
  }
  assert.equal(selector.matchExpressions, undefined, 'matchLabels only (checked here)');
  const admin = splitHostPort(proxy.server.admin_listen);
  for (const ep of podMetricsEndpoints) {
    assert.equal(containerPort(bulwark, ep.port), admin.port, `endpoint port ${ep.port} is the admin port`);
    assert.equal(ep.path ?? '/metrics', '/metrics');
  }
  assert.equal(pod.metadata.annotations?.['prometheus.io/scrape'], undefined,
    'no prometheus.io annotations next to the PodMonitor: one scrape per sidecar');
});
