#!/usr/bin/env python3
"""The PyTorch peer of the GPU benchmark: eager latency of the models ETF runs (the same
constructors as scripts/export_models.py), fp32 with TF32 off, cuDNN autotuning on, on the
first CUDA device, over two spans:

  host      the input in (pageable) host memory, copied to the GPU, the model, the output
            copied back into a host buffer: the span etf-run measures, since ETF's API
            takes and returns host buffers (a server's requests arrive in host memory);
  resident  input and output stay on the GPU: the model's kernels alone, with the host's
            launch cost.

    bench/torch_gpu_latency.py BATCH ITERS NAME [NAME...]

Prints one JSON object per model:
{"model", "batch", "p50_ms", "p90_ms", "p50_host_ms", "p90_host_ms"} (p50_ms: resident).
"""
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from export_models import MODELS, calibrate_batchnorm  # noqa: E402


def fp32_like_etf():
    """TF32 off (ETF's default precision), cuDNN autotuning on."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True


def cuda_model(name, batch):
    """The model as scripts/export_models.py makes it (same seed, BatchNorm calibrated), on
    the GPU in eval mode, and a random input of the given batch."""
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make()
    calibrate_batchnorm(model, shape)
    model = model.eval().cuda()
    return model, torch.randn((batch,) + tuple(shape[1:]), device="cuda")


def positive(what, text):
    """text as an integer of at least 1; exits with a message saying what was found if not."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        sys.exit(f"{os.path.basename(sys.argv[0])}: {what}: expected an integer >= 1, found {text!r}")
    return value


def known_models(names):
    """names, after checking that each is one of scripts/export_models.py's models (exits
    naming the first that is not)."""
    for name in names:
        if name not in MODELS:
            sys.exit(f"{os.path.basename(sys.argv[0])}: unknown model {name!r}; expected one of "
                     + ", ".join(MODELS))
    return names


def timed(iters, run):
    """Median and 90th percentile of `run`'s host wall time in ms, after 5 warm-up runs."""
    for _ in range(5):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def latency(name, batch, iters):
    model, x = cuda_model(name, batch)
    with torch.no_grad():
        x_host = x.cpu()
        out_host = torch.empty_like(model(x), device="cpu")

        def host_to_host():
            out_host.copy_(model(x_host.to("cuda")))

        p50, p90 = timed(iters, lambda: model(x))
        p50_host, p90_host = timed(iters, host_to_host)
    return {"model": name, "batch": batch, "p50_ms": p50, "p90_ms": p90,
            "p50_host_ms": p50_host, "p90_host_ms": p90_host}


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    batch, iters = positive("BATCH", sys.argv[1]), positive("ITERS", sys.argv[2])
    names = known_models(sys.argv[3:])
    fp32_like_etf()
    for name in names:
        print(json.dumps(latency(name, batch, iters)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
