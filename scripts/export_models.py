#!/usr/bin/python3
"""Exports the models ETF runs on real devices to ONNX, with a fixed input and PyTorch's
output for each, from Debian's torch/torchvision (seeded random weights: no downloads).

    scripts/export_models.py OUT_DIR [--only NAME[,NAME...]] [--list]

For every model NAME it writes OUT_DIR/NAME/model.onnx, input.bin and output.bin (raw
little-endian fp32, C order), with --random-inputs K also input_0.bin/output_0.bin ...,
and meta.json (shapes, opset, ops used, how far fp32 itself is from fp64 on this input). Random weights make
BatchNorm's running statistics meaningless; they are calibrated on a random batch so that
activations keep their scale through the depth of the network (otherwise the outputs of
deep nets collapse towards 0 and a comparison proves nothing).
"""
import argparse
import copy
import inspect
import json
import os
import sys

import torch
import torch.nn as nn

OPSET = 17


class TinyConvNet(nn.Module):
    """What the CNN kernels need, in a model small enough for unit tests: a stem with BN and
    ReLU, a residual block, a depthwise/pointwise pair with ReLU6, squeeze-excitation with
    SiLU and Sigmoid, max/avg/global pooling, concat, and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.res = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
                                nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.SiLU())
        self.se_reduce = nn.Conv2d(24, 8, 1)
        self.se_expand = nn.Conv2d(8, 24, 1)
        self.branch = nn.Conv2d(24, 8, 1)
        self.avg = nn.AvgPool2d(2)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = torch.relu(x + self.res(x))
        x = self.dw(x)
        s = torch.sigmoid(self.se_expand(nn.functional.silu(self.se_reduce(x.mean((2, 3), keepdim=True)))))
        x = x * s
        x = torch.cat([x, self.branch(x)], 1)
        x = self.avg(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return torch.softmax(self.head(x), 1)


def transformer(layers, d, heads, activation):
    layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, dropout=0.0,
                                       activation=activation, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def torchvision_model(name):
    import torchvision.models as tvm
    return getattr(tvm, name)(weights=None)


# name: (constructor, input shape)
MODELS = {
    "tiny_cnn": (TinyConvNet, (1, 3, 32, 32)),
    "tiny_transformer": (lambda: transformer(2, 64, 4, "gelu"), (1, 16, 64)),
    "resnet18": (lambda: torchvision_model("resnet18"), (1, 3, 224, 224)),
    "resnet50": (lambda: torchvision_model("resnet50"), (1, 3, 224, 224)),
    "mobilenet_v2": (lambda: torchvision_model("mobilenet_v2"), (1, 3, 224, 224)),
    "squeezenet1_1": (lambda: torchvision_model("squeezenet1_1"), (1, 3, 224, 224)),
    "densenet121": (lambda: torchvision_model("densenet121"), (1, 3, 224, 224)),
    "efficientnet_b0": (lambda: torchvision_model("efficientnet_b0"), (1, 3, 224, 224)),
    "transformer": (lambda: transformer(6, 512, 8, "relu"), (1, 128, 512)),
}


def calibrate_batchnorm(model, shape):
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for bn in bns:
        # random affine parameters first, so that folding them is really tested; the
        # statistics are then measured on the network as it will be exported
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    # Only the BatchNorm layers in training mode: stochastic depth and dropout must stay
    # off, or the statistics describe a network other than the one that is exported.
    model.eval()
    for bn in bns:
        bn.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn((8,) + tuple(shape[1:])))
    model.eval()


def export(name, out_dir, extra_inputs=0):
    import onnx

    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make()
    calibrate_batchnorm(model, shape)
    model.eval()
    x = torch.randn(shape)
    with torch.no_grad():
        y = model(x)
        # How far float32 itself is from the exact result: a bound on what any fp32
        # implementation can be asked to match.
        y64 = copy.deepcopy(model).double()(x.double())
    fp32_noise = float((y.double() - y64).abs().max() / y64.abs().max())
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.onnx")
    # A symbolic batch dimension, so that a model can be loaded at any batch size. Newer
    # PyTorch defaults to the dynamo exporter; the TorchScript one gives the same graphs as
    # Debian's PyTorch.
    extra = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        extra["dynamo"] = False
    torch.onnx.export(model, x, path, opset_version=OPSET, input_names=["input"],
                      output_names=["output"], do_constant_folding=True,
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, **extra)
    x.numpy().astype("<f4").tofile(os.path.join(d, "input.bin"))
    y.numpy().astype("<f4").tofile(os.path.join(d, "output.bin"))
    # Fresh random inputs and PyTorch's outputs for them, so that a check does not rest on
    # the one fixed input.
    for k in range(extra_inputs):
        xk = torch.randn(shape)
        with torch.no_grad():
            yk = model(xk)
        xk.numpy().astype("<f4").tofile(os.path.join(d, f"input_{k}.bin"))
        yk.numpy().astype("<f4").tofile(os.path.join(d, f"output_{k}.bin"))
    ops = sorted({n.op_type for n in onnx.load(path).graph.node})
    meta = {"name": name, "opset": OPSET, "input_shape": list(shape), "output_shape": list(y.shape),
            "output_max_abs": float(y.abs().max()), "fp32_noise": fp32_noise,
            "extra_inputs": extra_inputs, "ops": ops}
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{name}: {len(ops)} op types, output {tuple(y.shape)}, max |y| {meta['output_max_abs']:.3g}, "
          f"fp32 vs fp64 {fp32_noise:.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--list", action="store_true", help="print the model names and exit")
    ap.add_argument("--random-inputs", type=int, default=0, metavar="K",
                    help="also write K fresh random inputs with PyTorch's outputs")
    args = ap.parse_args()
    if args.list:
        print("\n".join(MODELS))
        return 0
    names = args.only.split(",") if args.only else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"export_models: unknown model(s) {unknown}; known: {list(MODELS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for name in names:
        export(name, args.out_dir, args.random_inputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
