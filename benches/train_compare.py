#!/usr/bin/env python3
"""fastscnn's training step against PyTorch eager on the same weights, interleaved in one run.

Times one training step — the forward pass in training mode with the auxiliary head, the loss
(cross-entropy + 0.4 x the auxiliary cross-entropy, ignore 255), the backward pass and SGD
(momentum 0.9, weight decay 4e-5 on dense and pointwise weights) — of the reference
implementation's network in PyTorch and of `fastscnn bench --mode train`, both from the golden
weights (`fastscnn_seed0_c19.pth` / `.safetensors`), both with dropout 0.1, on the same thread
count. Each engine runs in a process of its own, round after round, so both see the same phases
of the machine; each round's median step time is kept, and the peak resident memory of each
process. It prints each case's medians, the ratio (PyTorch's time over fastscnn's) and the peaks.

Before timing, it checks that its PyTorch step is the reference's: one step on the golden
training frame (`golden/train_step/`) must give the fixture's loss and state (every tensor within
1e-4).

    cargo build --release -p fastscnn-cli
    python3 -m pip install torch numpy pillow
    python3 benches/train_compare.py --markdown /tmp/train.md

Not run by CI: it needs PyTorch and takes several minutes. docs/performance.md holds its output
on the machine it ran on.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import ROOT, fail, machine, shared_dir


# (name, batch, height, width)
CASES = [
    ("batch 2 at 512x1024", 2, 512, 1024),
    ("batch 4 at 384x384", 4, 384, 384),
]

# The PyTorch side, run as `python3 -c TORCH_STEP ARGS…` in a process of its own. The network is
# the reference implementation's (the key layout of golden/README.md, section 1).
TORCH_STEP = r'''
import json, resource, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F

weights, batch, h, w, warmup, iters, threads, mode = sys.argv[1:9]
batch, h, w, warmup, iters, threads = map(int, (batch, h, w, warmup, iters, threads))
torch.set_num_threads(threads)
torch.manual_seed(0)


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, k=3, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, bias=False),
                                  nn.BatchNorm2d(cout), nn.ReLU(True))

    def forward(self, x):
        return self.conv(x)


class DSConv(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
            nn.ReLU(True), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(True))

    def forward(self, x):
        return self.conv(x)


class DWConv(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=cin, bias=False),
                                  nn.BatchNorm2d(cout), nn.ReLU(True))

    def forward(self, x):
        return self.conv(x)


class Bottleneck(nn.Module):
    def __init__(self, cin, cout, t, stride):
        super().__init__()
        self.residual = stride == 1 and cin == cout
        self.block = nn.Sequential(ConvBNReLU(cin, cin * t, 1), DWConv(cin * t, cin * t, stride),
                                   nn.Conv2d(cin * t, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.block(x)
        return x + out if self.residual else out


class PPM(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        inter = cin // 4
        self.conv1, self.conv2, self.conv3, self.conv4 = (
            ConvBNReLU(cin, inter, 1) for _ in range(4))
        self.out = ConvBNReLU(cin * 2, cout, 1)

    def forward(self, x):
        size = x.shape[2:]
        up = lambda y: F.interpolate(y, size, mode="bilinear", align_corners=True)
        branches = [up(conv(F.adaptive_avg_pool2d(x, s)))
                    for conv, s in zip((self.conv1, self.conv2, self.conv3, self.conv4),
                                       (1, 2, 3, 6))]
        return self.out(torch.cat([x] + branches, 1))


class LearningToDownsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = ConvBNReLU(3, 32, 3, 2)
        self.dsconv1 = DSConv(32, 48, 2)
        self.dsconv2 = DSConv(48, 64, 2)

    def forward(self, x):
        return self.dsconv2(self.dsconv1(self.conv(x)))


class GlobalFeatureExtractor(nn.Module):
    def __init__(self):
        super().__init__()
        def stage(cin, cout, stride):
            return nn.Sequential(Bottleneck(cin, cout, 6, stride),
                                 *(Bottleneck(cout, cout, 6, 1) for _ in range(2)))
        self.bottleneck1 = stage(64, 64, 2)
        self.bottleneck2 = stage(64, 96, 2)
        self.bottleneck3 = stage(96, 128, 1)
        self.ppm = PPM(128, 128)

    def forward(self, x):
        return self.ppm(self.bottleneck3(self.bottleneck2(self.bottleneck1(x))))


class FeatureFusion(nn.Module):
    def __init__(self):
        super().__init__()
        self.dwconv = DWConv(128, 128, 1)
        self.conv_lower_res = nn.Sequential(nn.Conv2d(128, 128, 1), nn.BatchNorm2d(128))
        self.conv_higher_res = nn.Sequential(nn.Conv2d(64, 128, 1), nn.BatchNorm2d(128))

    def forward(self, higher, lower):
        lower = F.interpolate(lower, scale_factor=4, mode="bilinear", align_corners=True)
        lower = self.conv_lower_res(self.dwconv(lower))
        return F.relu(self.conv_higher_res(higher) + lower)


class Classifier(nn.Module):
    def __init__(self, classes, dropout):
        super().__init__()
        self.dsconv1 = DSConv(128, 128)
        self.dsconv2 = DSConv(128, 128)
        self.conv = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(128, classes, 1))

    def forward(self, x):
        return self.conv(self.dsconv2(self.dsconv1(x)))


class FastSCNN(nn.Module):
    def __init__(self, classes=19, dropout=0.1):
        super().__init__()
        self.learning_to_downsample = LearningToDownsample()
        self.global_feature_extractor = GlobalFeatureExtractor()
        self.feature_fusion = FeatureFusion()
        self.classifier = Classifier(classes, dropout)
        self.auxlayer = nn.Sequential(nn.Conv2d(64, 32, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(32), nn.ReLU(True), nn.Dropout(dropout),
                                      nn.Conv2d(32, classes, 1))

    def forward(self, x):
        size = x.shape[2:]
        higher = self.learning_to_downsample(x)
        fused = self.feature_fusion(higher, self.global_feature_extractor(higher))
        up = lambda y: F.interpolate(y, size, mode="bilinear", align_corners=True)
        return up(self.classifier(fused)), up(self.auxlayer(higher))


def optimizer(model, lr):
    decayed = [p for n, p in model.named_parameters()
               if n.endswith(".weight") and p.dim() == 4
               and not (p.shape[1] == 1 and p.shape[2] * p.shape[3] > 1)]
    ids = {id(p) for p in decayed}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.SGD([{"params": decayed, "weight_decay": 4e-5},
                            {"params": rest, "weight_decay": 0.0}], lr=lr, momentum=0.9)


def step(model, opt, images, labels):
    logits, aux = model(images)
    loss = (F.cross_entropy(logits, labels, ignore_index=255)
            + 0.4 * F.cross_entropy(aux, labels, ignore_index=255))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


if mode == "check":
    # The reference step of golden/train_step: batch 2 of the frame, no dropout, lr 0.045; its
    # loss and the state after it against the fixture's.
    import struct
    import numpy as np
    from PIL import Image
    model = FastSCNN(dropout=0.0)
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    model.train()
    frame, label_file, expected = sys.argv[9:12]
    raw = open(expected, "rb").read()
    header = struct.unpack("<Q", raw[:8])[0]
    meta = json.loads(raw[8:8 + header])

    def fixture(name):
        start, end = meta[name]["data_offsets"]
        dtype = {"F32": np.float32, "F64": np.float64, "U8": np.uint8}[meta[name]["dtype"]]
        data = np.frombuffer(raw[8 + header + start:8 + header + end], dtype=dtype)
        return data.reshape(meta[name]["shape"])
    rgb = np.asarray(Image.open(frame).convert("RGB"), dtype=np.float32) / 255.0
    rgb = (rgb - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    image = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None]
    labels = torch.from_numpy(np.asarray(Image.open(label_file), dtype=np.int64).copy())[None]
    loss = step(model, optimizer(model, 0.045), image.repeat(2, 1, 1, 1), labels.repeat(2, 1, 1))
    want = float(fixture("loss").reshape(-1)[0])
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(meta) - set(state) - {"input", "labels", "loss", "lr", "__metadata__"})
    weights = max(float(np.abs(v.numpy() - fixture(k)).max()) for k, v in state.items())
    print(json.dumps({"loss_error": abs(loss - want) / abs(want), "weights": weights,
                      "missing": missing}))
    sys.exit(0)

model = FastSCNN()
model.load_state_dict(torch.load(weights, map_location="cpu"))
model.train()
opt = optimizer(model, 1e-3)
images = torch.randn(batch, 3, h, w)
band = max(-(-h // 19), 1)
labels = (torch.arange(h) // band).view(1, h, 1).expand(batch, h, w).contiguous()
for _ in range(warmup):
    step(model, opt, images, labels)
times = []
for _ in range(iters):
    start = time.perf_counter()
    step(model, opt, images, labels)
    times.append(time.perf_counter() - start)
times.sort()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"median_ms": times[len(times) // 2] * 1e3, "peak_rss_mb": peak,
                  "torch": torch.__version__}))
'''


def run_json(label, command, env):
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        fail(f"{label} failed:\n{result.stderr.strip()}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def torch_step(golden, case, args, env):
    _, batch, h, w = case
    command = [sys.executable, "-c", TORCH_STEP, str(golden / "fastscnn_seed0_c19.pth"),
               str(batch), str(h), str(w), str(args.warmup), str(args.iters),
               str(args.threads), "time"]
    return run_json(f"PyTorch's step ({case[0]})", command, env)


def fastscnn_step(binary, golden, case, args, env):
    _, batch, h, w = case
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "bench.json"
        command = [str(binary), "bench", "--mode", "train",
                   "--weights", str(golden / "fastscnn_seed0_c19.safetensors"),
                   "--size", f"{h}x{w}", "--batch", str(batch), "--iters", str(args.iters),
                   "--warmup", str(args.warmup), "--threads", str(args.threads),
                   "--json", str(report)]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            fail(f"fastscnn bench failed:\n{result.stderr.strip()}")
        return json.loads(report.read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=ROOT / "target/release/fastscnn", type=Path)
    parser.add_argument("--shared", help="the fixtures folder (default: $FASTSCNN_SHARED, ../shared)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=5, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per process first")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    if not args.binary.is_file():
        fail(f"{args.binary}: no such binary (cargo build --release -p fastscnn-cli)")
    try:
        import torch  # noqa: F401
    except ImportError:
        fail("PyTorch is missing: python3 -m pip install torch numpy pillow")
    golden = shared_dir(args.shared) / "golden"
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))

    # The PyTorch side must be the reference: the fixture's loss and state after its step.
    step_dir = golden / "train_step"
    check = run_json("PyTorch's reference step", [
        sys.executable, "-c", TORCH_STEP, str(golden / "fastscnn_seed0_c19.pth"),
        "2", "256", "512", "0", "0", str(args.threads), "check",
        str(step_dir / "frankfurt_000001_058914_leftImg8bit.png"),
        str(step_dir / "frankfurt_000001_058914_gtFine_labelTrainIds.png"),
        str(step_dir / "one_step_lr0.045_expected.safetensors")], env)
    if check["missing"] or check["loss_error"] > 1e-4 or check["weights"] > 1e-4:
        fail(f"the PyTorch step is not the reference's: {check}")
    print(f"PyTorch's reference step: loss relative error {check['loss_error']:.1e}, "
          f"state within {check['weights']:.1e} of the fixture's", file=sys.stderr)

    rows = {case[0]: {"torch": [], "fastscnn": [], "torch_mb": 0.0, "fastscnn_mb": 0.0}
            for case in CASES}
    torch_version = None
    for round_index in range(args.rounds):
        for case in CASES:
            t = torch_step(golden, case, args, env)
            f = fastscnn_step(args.binary, golden, case, args, env)
            torch_version = t["torch"]
            row = rows[case[0]]
            row["torch"].append(t["median_ms"])
            row["fastscnn"].append(f["median_ms"])
            row["torch_mb"] = max(row["torch_mb"], t["peak_rss_mb"])
            row["fastscnn_mb"] = max(row["fastscnn_mb"], f["peak_rss_mb"] or 0.0)
            print(f"round {round_index + 1} {case[0]}: PyTorch {t['median_ms']:.0f} ms, "
                  f"fastscnn {f['median_ms']:.0f} ms", file=sys.stderr)

    lines = [
        f"{machine()}, {args.threads} threads, PyTorch {torch_version} eager, "
        f"{args.rounds} rounds of {args.iters} timed steps (after {args.warmup}) per engine",
        "",
        "| training step | PyTorch (ms) | fastscnn (ms) | PyTorch / fastscnn | peak RSS PyTorch (MB) | peak RSS fastscnn (MB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in rows.items():
        t, f = statistics.median(row["torch"]), statistics.median(row["fastscnn"])
        lines.append(f"| {name} | {t:.0f} | {f:.0f} | {t / f:.2f}x | {row['torch_mb']:.0f} | "
                     f"{row['fastscnn_mb']:.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
