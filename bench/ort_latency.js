// The peer of bench/cpu_models.sh: batch-1 latency of a model under ONNX Runtime on the
// CPU, with the same thread count and the same input file as etf-run.
//   node ort_latency.js MODEL.onnx INPUT.bin SHAPE THREADS ITERS   (SHAPE like 1,3,224,224)
// Prints one line of JSON: {"load_ms": ..., "p50_ms": ..., "p90_ms": ..., "p99_ms": ...}
'use strict';
const ort = require('onnxruntime-node');
const fs = require('fs');

function percentile(sorted, p) {
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1];
}

async function main() {
  const [model, inputPath, shapeArg, threads, iters] = process.argv.slice(2);
  if (!iters) {
    console.error('usage: node ort_latency.js MODEL.onnx INPUT.bin SHAPE THREADS ITERS');
    process.exit(2);
  }
  const t0 = process.hrtime.bigint();
  const session = await ort.InferenceSession.create(model, {
    intraOpNumThreads: Number(threads), interOpNumThreads: 1, graphOptimizationLevel: 'all',
  });
  const loadMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const name = session.inputNames[0];
  const bytes = fs.readFileSync(inputPath);
  const data = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  const shape = shapeArg.split(',').map(Number);
  const feeds = { [name]: new ort.Tensor('float32', data, shape) };
  for (let i = 0; i < 3; i++) await session.run(feeds);
  const times = [];
  for (let i = 0; i < Number(iters); i++) {
    const t = process.hrtime.bigint();
    await session.run(feeds);
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  times.sort((a, b) => a - b);
  console.log(JSON.stringify({
    load_ms: loadMs, p50_ms: percentile(times, 50), p90_ms: percentile(times, 90),
    p99_ms: percentile(times, 99),
  }));
}

main().catch((e) => { console.error(`ort_latency: ${e.message}`); process.exit(1); });
