#!/usr/bin/env python3
"""The PyTorch peer of the GPU benchmark: eager latency of the models ETF runs (the same
constructors as scripts/export_models.py), fp32 with TF32 off, cuDNN autotuning on, on the
first CUDA device.

    bench/torch_gpu_latency.py BATCH ITERS NAME [NAME...]

Prints one JSON object per model: {"model", "batch", "p50_ms", "p90_ms"}.
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


def latency(name, batch, iters):
    model, x = cuda_model(name, batch)
    times = []
    with torch.no_grad():
        for _ in range(5):
            model(x)
        torch.cuda.synchronize()
        for _ in range(iters):
            # host wall time to the end of the GPU work, as etf-run measures a task
            start = time.perf_counter()
            model(x)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"model": name, "batch": batch, "p50_ms": statistics.median(times),
            "p90_ms": times[int(0.9 * (len(times) - 1))]}


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    fp32_like_etf()
    batch, iters = int(sys.argv[1]), int(sys.argv[2])
    for name in sys.argv[3:]:
        print(json.dumps(latency(name, batch, iters)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
