#!/usr/bin/env python3
"""Where PyTorch eager spends GPU time on one model: the CUDA kernels of one inference
(after warm-up), grouped by kernel name, longest first. The peer of etf-run's per-kernel
breakdown when a model is slower on ETF's CUDA device than on PyTorch.

    bench/torch_gpu_profile.py NAME BATCH [TOP]
"""
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_gpu_latency import cuda_model, fp32_like_etf, known_models, positive  # noqa: E402


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    name = known_models([sys.argv[1]])[0]
    batch = positive("BATCH", sys.argv[2])
    top = positive("TOP", sys.argv[3]) if len(sys.argv) > 3 else 25
    fp32_like_etf()
    model, x = cuda_model(name, batch)
    with torch.no_grad():
        for _ in range(5):
            model(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(x)
            torch.cuda.synchronize()
    kernels = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            n, t = kernels.get(ev.name, (0, 0.0))
            kernels[ev.name] = (n + 1, t + ev.device_time)
    total = sum(t for _, t in kernels.values())
    print(f"{name} batch {batch}: {total / 1e3:.3f} ms of GPU kernels, {sum(n for n, _ in kernels.values())} launches")
    for kname, (n, t) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"{t / 1e3:9.3f} ms {n:4d}x  {kname[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
