// Validates Kubernetes objects offline with the kubernetes-models packages: the API's OpenAPI
// schemas (types, formats, required fields, enums) through each model's validate(), plus a
// strict pass that rejects fields the schema does not know. The OpenAPI schemas allow unknown
// fields (the API server drops them silently, or rejects them with kubectl's strict field
// validation), so `readOnlyRootFileSystem: true` would otherwise pass and protect nothing.
// The strict pass reads the field lists from the packages' TypeScript declarations.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

// apiVersion -> the module that holds its models.
function modelModule(apiVersion) {
  if (apiVersion === 'monitoring.coreos.com/v1') {
    return '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
  }
  return `kubernetes-models/${apiVersion}`;  // "v1" (core) and "group/version" alike
}

function declarationFile(apiVersion, kind) {
  const entry = require.resolve(`${modelModule(apiVersion)}/${kind}`);
  return entry.replace(/\.(c|m)?js$/, '.d.ts');
}

// --- a small parser for the declaration files' type expressions ------------------------------
// Grammar (what the generated .d.ts files use):
//   type    := primary ('|' primary)*
//   primary := 'Array<' type '>' | '{' members '}' | '{' '[key: string]:' type ';' '}'
//            | identifier | string literal | keyword
//   members := ('"name"' '?'? ':' type ';')*
// Shapes: {kind:'object', fields: Map(name -> shape)}, {kind:'map', value}, {kind:'array', item},
// {kind:'ref', name, file}, {kind:'leaf'}, {kind:'union', options}.

function tokenize(text) {
  const tokens = [];
  const re = /\s+|\/\*[\s\S]*?\*\/|\/\/[^\n]*|"(?:[^"\\]|\\.)*"|[A-Za-z_$][\w$.]*|-?\d+(?:\.\d+)?|[{}<>[\]();:?|,&=]/g;
  let m;
  while ((m = re.exec(text)) !== null) {
    const t = m[0];
    if (/^\s/.test(t) || t.startsWith('/*') || t.startsWith('//')) continue;
    tokens.push(t);
  }
  return tokens;
}

class TypeParser {
  constructor(tokens, file) {
    this.t = tokens;
    this.i = 0;
    this.file = file;
  }
  peek(k = 0) { return this.t[this.i + k]; }
  next() { return this.t[this.i++]; }
  expect(tok) {
    const got = this.next();
    if (got !== tok) throw new Error(`${this.file}: expected ${tok}, got ${got} at token ${this.i}`);
  }
  type() {
    const options = [this.primary()];
    while (this.peek() === '|') {
      this.next();
      options.push(this.primary());
    }
    return options.length === 1 ? options[0] : { kind: 'union', options };
  }
  primary() {
    const tok = this.next();
    if (tok === 'Array') {
      this.expect('<');
      const item = this.type();
      this.expect('>');
      return { kind: 'array', item };
    }
    if (tok === '{') return this.members();
    if (tok.startsWith('"') || /^-?\d/.test(tok)) return { kind: 'leaf' };
    if (['string', 'number', 'boolean', 'any', 'unknown', 'null', 'object', 'true', 'false'].includes(tok)) {
      return { kind: 'leaf' };
    }
    if (/^[A-Za-z_$]/.test(tok)) {
      // Indexed access like IFoo["apiVersion"] is a literal type.
      if (this.peek() === '[') {
        while (this.next() !== ']');
        return { kind: 'leaf' };
      }
      return { kind: 'ref', name: tok, file: this.file };
    }
    throw new Error(`${this.file}: unexpected token ${tok}`);
  }
  members() {
    if (this.peek() === '[') {  // { [key: string]: T; }
      while (this.next() !== ']');
      this.expect(':');
      const value = this.type();
      if (this.peek() === ';') this.next();
      this.expect('}');
      return { kind: 'map', value };
    }
    const fields = new Map();
    while (this.peek() !== '}') {
      const name = JSON.parse(this.next());
      if (this.peek() === '?') this.next();
      this.expect(':');
      fields.set(name, this.type());
      if (this.peek() === ';') this.next();
    }
    this.expect('}');
    return { kind: 'object', fields };
  }
}

const fileCache = new Map();

// One declaration file: its imports (local name -> module specifier), its interfaces and type
// aliases (name -> shape), and its re-exports (exported alias -> local name).
function readDeclarations(file) {
  if (fileCache.has(file)) return fileCache.get(file);
  const text = fs.readFileSync(file, 'utf8');
  const decl = { file, imports: new Map(), types: new Map(), aliases: new Map() };
  for (const m of text.matchAll(/import\s*\{([^}]*)\}\s*from\s*"([^"]+)"/g)) {
    for (const part of m[1].split(',')) {
      const [orig, local] = part.trim().split(/\s+as\s+/);
      if (orig) decl.imports.set((local || orig).trim(), m[2]);
    }
  }
  for (const m of text.matchAll(/export\s*\{([^}]*)\}/g)) {
    for (const part of m[1].split(',')) {
      const [orig, alias] = part.trim().split(/\s+as\s+/);
      if (orig && alias) decl.aliases.set(alias.trim(), orig.trim());
    }
  }
  const tokens = tokenize(text);
  for (let i = 0; i < tokens.length; i++) {
    if (tokens[i] === 'interface' && tokens[i - 1] === 'export') {
      const name = tokens[i + 1];
      let j = i + 2;
      const bases = [];
      if (tokens[j] === 'extends') {
        j++;
        while (tokens[j] !== '{') {
          if (tokens[j] !== ',') bases.push(tokens[j]);
          j++;
        }
      }
      const parser = new TypeParser(tokens, file);
      parser.i = j + 1;
      const shape = parser.members();
      for (const base of bases) {
        if (base === 'TypeMeta') {
          shape.fields.set('apiVersion', { kind: 'leaf' });
          shape.fields.set('kind', { kind: 'leaf' });
        } else {
          throw new Error(`${file}: interface ${name} extends ${base}: not supported`);
        }
      }
      decl.types.set(name, shape);
    } else if (tokens[i] === 'type' && tokens[i - 1] === 'declare' && tokens[i + 2] === '=') {
      const parser = new TypeParser(tokens, file);
      parser.i = i + 3;
      decl.types.set(tokens[i + 1], parser.type());
    }
  }
  fileCache.set(file, decl);
  return decl;
}

function resolveRef(ref) {
  let decl = readDeclarations(ref.file);
  let name = ref.name;
  for (let hops = 0; hops < 10; hops++) {
    if (decl.types.has(name)) return decl.types.get(name);
    if (decl.aliases.has(name)) {
      name = decl.aliases.get(name);
      continue;
    }
    const spec = decl.imports.get(name);
    if (!spec) throw new Error(`${decl.file}: cannot resolve type ${name}`);
    const target = spec.startsWith('.')
      ? path.resolve(path.dirname(decl.file), spec)
      : require.resolve(spec).replace(/\.(c|m)?js$/, '');
    decl = readDeclarations(target.replace(/\.(c|m)?js$/, '') + '.d.ts');
  }
  throw new Error(`type ${ref.name}: too many hops`);
}

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

// Every field path in `value` that `shape` does not declare.
function unknownFields(value, shape, where, out) {
  if (shape.kind === 'ref') return unknownFields(value, resolveRef(shape), where, out);
  if (shape.kind === 'union') {
    // Unions in these schemas mix leaves (string | number); an object shape in a union is
    // checked against the first object-like option.
    const structured = shape.options.find((o) => o.kind !== 'leaf');
    if (structured && typeof value === 'object' && value !== null) unknownFields(value, structured, where, out);
    return out;
  }
  if (shape.kind === 'array' && Array.isArray(value)) {
    value.forEach((item, i) => unknownFields(item, shape.item, `${where}[${i}]`, out));
  } else if (shape.kind === 'map' && isPlainObject(value)) {
    for (const [k, v] of Object.entries(value)) unknownFields(v, shape.value, `${where}.${k}`, out);
  } else if (shape.kind === 'object' && isPlainObject(value)) {
    for (const [k, v] of Object.entries(value)) {
      const field = shape.fields.get(k);
      if (!field) out.push(`${where}.${k}`);
      else unknownFields(v, field, `${where}.${k}`, out);
    }
  }
  return out;
}

/** Throws with every problem found in `obj` (a parsed manifest). */
export async function validateObject(obj) {
  const { apiVersion, kind } = obj ?? {};
  if (typeof apiVersion !== 'string' || typeof kind !== 'string') {
    throw new Error('not a Kubernetes object: apiVersion and kind are required');
  }
  let mod;
  try {
    mod = await import(modelModule(apiVersion));
  } catch (error) {
    throw new Error(`no schema for apiVersion ${apiVersion}: ${error.message}`);
  }
  const Model = mod[kind];
  if (typeof Model !== 'function') throw new Error(`no schema for ${apiVersion} ${kind}`);
  const name = obj.metadata?.name ?? '(unnamed)';
  try {
    new Model(structuredClone(obj)).validate();
  } catch (error) {
    throw new Error(`${kind}/${name}: ${error.message}`);
  }
  const declFile = declarationFile(apiVersion, kind);
  const shape = resolveRef({ name: `I${kind}`, file: declFile });
  const unknown = unknownFields(obj, shape, kind, []);
  if (unknown.length) {
    throw new Error(`${kind}/${name}: fields unknown to the ${apiVersion} schema: ${unknown.join(', ')}`);
  }
}
