// Runs a web-target folder through unmodified transformers.js in Node (onnxruntime-node, CPU), local files only.
// Protocol: one JSON request per stdin line, one JSON answer per stdout line prefixed with "@@MCE@@ " (other
// stdout lines, e.g. library warnings, are ignored by the Python side). argv[2] = the folder.
import path from 'node:path';
import readline from 'node:readline';
import {
  env, AutoProcessor, AutoTokenizer, CLIPTextModelWithProjection, CLIPVisionModelWithProjection, RawImage, Tensor,
} from '@huggingface/transformers';

const folder = path.resolve(process.argv[2]);
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.useFSCache = false;
env.localModelPath = path.dirname(folder) + path.sep;
const id = path.basename(folder);
const models = new Map();
const CLASSES = { image: CLIPVisionModelWithProjection, text: CLIPTextModelWithProjection };

async function model(encoder, dtype) {
  const key = `${encoder}:${dtype ?? 'pinned'}`;
  if (!models.has(key)) {
    const opts = { local_files_only: true, device: 'cpu' };
    if (dtype) opts.dtype = dtype; // absent: config.json's transformers.js_config.dtype decides
    models.set(key, await CLASSES[encoder].from_pretrained(id, opts));
  }
  return models.get(key);
}

const b64 = (typed) => Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength).toString('base64');
function fromB64(s, Type) {
  const buf = Buffer.from(s, 'base64');
  const copy = new Uint8Array(buf.length);
  copy.set(buf);
  return new Type(copy.buffer);
}

async function embed(req) {
  const m = await model(req.encoder, req.dtype);
  const feeds = req.encoder === 'image'
    ? { pixel_values: new Tensor('float32', fromB64(req.data, Float32Array), req.dims) }
    : { input_ids: new Tensor('int64', fromB64(req.data, BigInt64Array), req.dims) };
  const out = await m(feeds);
  const t = out[req.encoder === 'image' ? 'image_embeds' : 'text_embeds'];
  return { dims: t.dims, data: b64(Float32Array.from(t.data)) };
}

async function tokenize(req) {
  const tok = await AutoTokenizer.from_pretrained(id, { local_files_only: true });
  const enc = tok(req.texts, { padding: 'max_length', truncation: true });
  return { dims: enc.input_ids.dims, ids: Array.from(enc.input_ids.data, Number) };
}

async function preprocess(req) {
  const proc = await AutoProcessor.from_pretrained(id, { local_files_only: true });
  const images = await Promise.all(req.paths.map((p) => RawImage.read(p)));
  const { pixel_values } = await proc(images);
  return { dims: pixel_values.dims, data: b64(Float32Array.from(pixel_values.data)) };
}

// What an app gets: the folder's own processor / tokenizer, then the model with the dtype config.json pins.
async function embedFiles(req) {
  const proc = await AutoProcessor.from_pretrained(id, { local_files_only: true });
  const images = await Promise.all(req.paths.map((p) => RawImage.read(p)));
  const t = (await (await model('image'))(await proc(images))).image_embeds;
  return { dims: t.dims, data: b64(Float32Array.from(t.data)) };
}

async function embedTexts(req) {
  const tok = await AutoTokenizer.from_pretrained(id, { local_files_only: true });
  const inputs = tok(req.texts, { padding: 'max_length', truncation: true });
  const t = (await (await model('text'))(inputs)).text_embeds;
  return { dims: t.dims, data: b64(Float32Array.from(t.data)) };
}

const OPS = { embed, tokenize, preprocess, embed_files: embedFiles, embed_texts: embedTexts, version: async () => ({ transformers: env.version, node: process.version }) };
const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of rl) {
  if (!line.trim()) continue;
  let answer;
  try {
    const req = JSON.parse(line);
    answer = { ok: true, ...(await OPS[req.op](req)) };
  } catch (err) {
    answer = { ok: false, error: String(err && err.message ? err.message : err).split('\n')[0] };
  }
  process.stdout.write('@@MCE@@ ' + JSON.stringify(answer) + '\n');
}
