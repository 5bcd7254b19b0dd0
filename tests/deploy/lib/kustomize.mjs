// Renders the kustomizations under deploy/kubernetes without the kustomize binary (not
// packaged for Debian 12): the subset of Kustomize that these files use — resources (files
// and directories), components, configMapGenerator (files), images, and JSON 6902 patches
// with a target. Any other field is an error, so a kustomization cannot quietly grow a
// feature that this check would skip. Generated ConfigMaps keep their plain name (Kustomize
// appends a content hash and rewrites the references; both sides stay consistent here).
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import jsonpatch from 'fast-json-patch';

const KUSTOMIZATION = 'kustomize.config.k8s.io/v1beta1';
const COMPONENT = 'kustomize.config.k8s.io/v1alpha1';
const SUPPORTED = new Set(['apiVersion', 'kind', 'resources', 'components', 'configMapGenerator',
  'images', 'patches']);

// kubectl and kustomize read YAML 1.1 (0444 is octal, yes/no are booleans): parse the same way.
export function parseYamlDocuments(text, file) {
  return YAML.parseAllDocuments(text, { version: '1.1' }).map((doc) => {
    if (doc.errors.length) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join('; ')}`);
    return doc.toJS();
  }).filter((obj) => obj !== null && obj !== undefined);
}

export function readYaml(file) {
  return parseYamlDocuments(fs.readFileSync(file, 'utf8'), file);
}

function mustExist(file, from) {
  if (!fs.existsSync(file)) throw new Error(`${from} refers to ${file}, which does not exist`);
  return file;
}

function loadKustomization(dir, expectedKind) {
  const file = path.join(dir, 'kustomization.yaml');
  mustExist(file, dir);
  const [k] = readYaml(file);
  const apiVersion = expectedKind === 'Component' ? COMPONENT : KUSTOMIZATION;
  if (k.kind !== expectedKind || k.apiVersion !== apiVersion) {
    throw new Error(`${file}: expected ${apiVersion} ${expectedKind}, got ${k.apiVersion} ${k.kind}`);
  }
  for (const key of Object.keys(k)) {
    if (!SUPPORTED.has(key)) throw new Error(`${file}: field ${key} is not supported by this renderer`);
  }
  return { file, k };
}

function targetMatches(target, obj) {
  const [group, version] = obj.apiVersion.includes('/') ? obj.apiVersion.split('/') : ['', obj.apiVersion];
  return (target.group === undefined || target.group === group)
    && (target.version === undefined || target.version === version)
    && (target.kind === undefined || target.kind === obj.kind)
    && (target.name === undefined || target.name === obj.metadata?.name);
}

function applyPatches(objects, patches, dir, file, filesUsed) {
  for (const p of patches ?? []) {
    if (!p.target) throw new Error(`${file}: every patch needs a target (JSON 6902)`);
    let ops;
    if (p.path) {
      const patchFile = mustExist(path.join(dir, p.path), file);
      filesUsed.add(patchFile);
      [ops] = readYaml(patchFile);
    } else {
      [ops] = parseYamlDocuments(p.patch, file);
    }
    if (!Array.isArray(ops)) throw new Error(`${file}: only JSON 6902 patches (a list of ops) are supported`);
    const matched = objects.filter((o) => targetMatches(p.target, o));
    if (matched.length === 0) throw new Error(`${file}: patch target ${JSON.stringify(p.target)} matches nothing`);
    for (const obj of matched) {
      const errors = jsonpatch.validate(ops, obj);
      if (errors) throw new Error(`${file}: patch does not apply to ${obj.kind}/${obj.metadata.name}: ${errors.message}`);
      jsonpatch.applyPatch(obj, ops, true, true);
    }
  }
}

function applyImages(objects, images) {
  for (const img of images ?? []) {
    for (const obj of objects) {
      const spec = obj.spec?.template?.spec;
      for (const c of [...(spec?.containers ?? []), ...(spec?.initContainers ?? [])]) {
        const [name] = c.image.split(/[:@]/);
        if (name !== img.name) continue;
        c.image = (img.newName ?? img.name) + (img.digest ? `@${img.digest}` : `:${img.newTag ?? 'latest'}`);
      }
    }
  }
}

/**
 * Renders the kustomization (or component) in `dir`. Returns {objects, filesUsed}: the
 * resulting objects, and every file the kustomization tree read.
 */
export function render(dir, kind = 'Kustomization', filesUsed = new Set()) {
  const { file, k } = loadKustomization(dir, kind);
  filesUsed.add(file);
  const objects = [];
  for (const entry of k.resources ?? []) {
    const target = mustExist(path.join(dir, entry), file);
    if (fs.statSync(target).isDirectory()) {
      objects.push(...render(target, 'Kustomization', filesUsed).objects);
    } else {
      filesUsed.add(target);
      objects.push(...readYaml(target));
    }
  }
  for (const gen of k.configMapGenerator ?? []) {
    const data = {};
    for (const entry of gen.files ?? []) {
      const [key, rel] = entry.includes('=') ? entry.split('=') : [path.basename(entry), entry];
      const source = mustExist(path.join(dir, rel), file);
      filesUsed.add(source);
      data[key] = fs.readFileSync(source, 'utf8');
    }
    for (const key of Object.keys(gen)) {
      if (!['name', 'files'].includes(key)) throw new Error(`${file}: configMapGenerator.${key} is not supported`);
    }
    objects.push({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: gen.name }, data });
  }
  for (const entry of k.components ?? []) {
    const compDir = mustExist(path.join(dir, entry), file);
    const comp = loadKustomization(compDir, 'Component');
    filesUsed.add(comp.file);
    // A component's resources join this kustomization's; its patches apply to all of them.
    const own = render(compDir, 'Component', filesUsed).objects;
    objects.push(...own);
    applyPatches(objects, comp.k.patches, compDir, comp.file, filesUsed);
  }
  if (kind === 'Kustomization') applyPatches(objects, k.patches, dir, file, filesUsed);
  applyImages(objects, k.images);
  return { objects, filesUsed };
}
