// Loads a web-target folder with unmodified transformers.js (onnxruntime-web, WASM) in the browser, runs the
// job's tensors per encoder and dtype, and POSTs embeddings and timings to /result. Everything is served from
// 127.0.0.1 by the Python side: the transformers.js bundle (/tf/), onnxruntime-web's wasm (/ort/), the folder.
import { env, CLIPTextModelWithProjection, CLIPVisionModelWithProjection, Tensor } from '/tf/transformers.js';

const CLASSES = { image: CLIPVisionModelWithProjection, text: CLIPTextModelWithProjection };
const OUT = { image: 'image_embeds', text: 'text_embeds' };

function fromB64(s, Type) {
  const bin = atob(s);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Type(bytes.buffer);
}
function toB64(f32) {
  const bytes = new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength);
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

async function runOne(job, run) {
  const input = job.inputs[run.encoder];
  const data = run.encoder === 'image' ? fromB64(input.data, Float32Array) : fromB64(input.data, BigInt64Array);
  const feeds = { [run.encoder === 'image' ? 'pixel_values' : 'input_ids']:
    new Tensor(run.encoder === 'image' ? 'float32' : 'int64', data, input.dims) };
  const opts = { device: 'wasm' };
  if (run.dtype) opts.dtype = run.dtype; // absent: the folder's config.json pin decides (or the q8 default)
  const t0 = performance.now();
  const model = await CLASSES[run.encoder].from_pretrained(job.model, opts);
  const t1 = performance.now();
  const out = (await model(feeds))[OUT[run.encoder]];
  const t2 = performance.now();
  const warm = [];
  for (let i = 0; i < (job.warm_runs || 0); i++) {
    const s = performance.now();
    await model(feeds);
    warm.push(performance.now() - s);
  }
  await model.dispose();
  return { ...run, dims: out.dims, data: toB64(Float32Array.from(out.data)), load_ms: t1 - t0,
    first_infer_ms: t2 - t1, warm_ms: warm };
}

async function main() {
  const job = await (await fetch('/job')).json();
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  env.localModelPath = '/models/';
  env.useBrowserCache = false;
  env.backends.onnx.wasm.wasmPaths = '/ort/';
  env.backends.onnx.wasm.numThreads = job.threads || 1;
  const runs = [];
  for (const [i, run] of job.runs.entries()) {
    await fetch(`/mark?run=${i}`); // the server attributes the files fetched from here on to run i
    try {
      runs.push({ ok: true, ...(await runOne(job, run)) });
    } catch (err) {
      runs.push({ ok: false, ...run, error: String(err && err.message ? err.message : err).split('\n')[0] });
    }
  }
  return { runs, user_agent: navigator.userAgent, cross_origin_isolated: self.crossOriginIsolated,
    transformers: env.version };
}

main()
  .catch((err) => ({ fatal: String(err && err.stack ? err.stack : err) }))
  .then((result) => fetch('/result', { method: 'POST', body: JSON.stringify(result) }));
