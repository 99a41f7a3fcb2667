#!/usr/bin/env python3
"""fastscnn against ONNX Runtime on the same weights, interleaved in one run.

Times ONNX Runtime (CPU execution provider) on the golden ONNX exports
(`fastscnn_seed0_c19_{768x1536,384x768}.onnx`, the reference-layout weights of
`fastscnn_seed0_c19.safetensors`) and `fastscnn bench` on the safetensors, round after round
so both see the same machine state, and prints each case's medians and the ratio. Before
timing, it checks that both engines label a real Cityscapes frame the same way. Both engines
are timed on that frame resized to each case's size (`--noise` for random values instead): the
label map's time depends on the scene, as fastscnn skips the scores where the network's labels
do not change.

    cargo build --release -p fastscnn-cli
    python3 -m pip install onnxruntime numpy pillow
    python3 benches/ort_compare.py --markdown /tmp/ort.md

`--baseline BINARY` times a second build of `fastscnn` (another commit's) in the same rounds and
adds its medians and this build's time against it: a change's effect on the whole frame, with
ONNX Runtime as the yardstick both are measured against.

Not run by CI: it needs the Python packages and takes a few minutes. docs/performance.md holds
its output on the machine it ran on.
"""

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from harness import ROOT, fail, machine, shared_dir


# (name, mode, size, ONNX export or None, what the issue asks of the ratio or the time)
CASES = [
    ("logits 768x1536", "logits", (768, 1536), "fastscnn_seed0_c19_768x1536.onnx", ">= 1.2x ORT"),
    ("label map 768x1536", "labels", (768, 1536), "fastscnn_seed0_c19_768x1536.onnx", ">= 2x ORT + argmax"),
    ("logits 384x768", "logits", (384, 768), "fastscnn_seed0_c19_384x768.onnx", ">= 1.2x ORT"),
    ("label map 1024x2048", "labels", (1024, 2048), None, "<= 120 ms"),
]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def ort_session(path, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def first_frame(shared):
    """The first Cityscapes frame of the fixtures, or None when there is none."""
    frames = sorted((shared / "cityscapes-mini" / "leftImg8bit").rglob("*.png"))
    return frames[0] if frames else None


def network_input(frame, size):
    """`frame` resized to `size` and normalised as the network expects, or noise without one."""
    import numpy as np

    h, w = size
    if frame is None:
        return np.random.default_rng(0).standard_normal((1, 3, h, w), dtype=np.float32)
    from PIL import Image

    rgb = np.asarray(Image.open(frame).convert("RGB").resize((w, h), Image.BILINEAR),
                     dtype=np.float32) / 255.0
    return ((rgb - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32).transpose(2, 0, 1)[None]


def time_ort(session, mode, size, iters, warmup, frame):
    x = network_input(frame, size)

    def once():
        logits = session.run(None, {"input": x})[0]
        if mode == "labels":
            logits.argmax(axis=1)

    for _ in range(warmup):
        once()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        once()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_fastscnn(binary, weights, mode, size, iters, warmup, threads, frame, candle_ops=False):
    """`fastscnn bench` in a child process: its median ms and its peak resident memory in MB."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "bench.json"
        command = [
            str(binary), "bench", "--weights", str(weights), "--size", f"{size[0]}x{size[1]}",
            "--mode", mode, "--iters", str(iters), "--warmup", str(warmup),
            "--threads", str(threads), "--json", str(report),
        ] + (["--candle-ops"] if candle_ops else []) + (["--image", str(frame)] if frame else [])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            fail(f"{' '.join(command)} failed: {done.stderr.strip()}")
        result = json.loads(report.read_text())
        return result["median_ms"], result.get("peak_rss_mb") or float("nan")


def check_agreement(binary, weights, shared, threads):
    """The share of pixels of a real frame, resized to 768x1536, that both engines label alike."""
    try:
        import numpy as np
        from PIL import Image
    except ImportError:
        print("agreement check skipped: needs numpy and pillow")
        return None
    source = first_frame(shared)
    if source is None:
        print("agreement check skipped: no frame under cityscapes-mini/leftImg8bit")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        frame = Path(tmp) / "frame.png"
        Image.open(source).convert("RGB").resize((1536, 768), Image.BILINEAR).save(frame)
        command = [
            str(binary), "segment", str(frame), "--weights", str(weights), "--out-dir", tmp,
            "--format", "trainid", "--threads", str(threads),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            fail(f"{' '.join(command)} failed: {done.stderr.strip()}")
        ours = np.asarray(Image.open(Path(tmp) / "frame_trainid.png"))
        rgb = np.asarray(Image.open(frame), dtype=np.float32) / 255.0
    x = ((rgb - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32).transpose(2, 0, 1)[None]
    session = ort_session(shared / "golden" / "fastscnn_seed0_c19_768x1536.onnx", threads)
    theirs = session.run(None, {"input": x})[0].argmax(axis=1)[0]
    return float((ours == theirs).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fastscnn", type=Path, default=ROOT / "target" / "release" / "fastscnn",
                        help="the fastscnn binary (default: target/release/fastscnn)")
    parser.add_argument("--only", help="time only the cases whose name contains this, e.g. 384x768")
    parser.add_argument("--baseline", type=Path,
                        help="another fastscnn binary to time in the same rounds (e.g. the build "
                             "of the commit before a change)")
    parser.add_argument("--shared", help="fixtures folder (default: $FASTSCNN_SHARED or ../shared)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case")
    parser.add_argument("--iters", type=int, default=10, help="timed frames per engine per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--noise", action="store_true",
                        help="time both engines on random values instead of a Cityscapes frame")
    parser.add_argument("--no-candle-ops", action="store_true",
                        help="skip timing fastscnn through candle's ops (the path before the fused "
                             "CPU kernels), which is slow at 1024x2048")
    args = parser.parse_args()
    if args.threads < 1 or args.rounds < 1 or args.iters < 1:
        fail("--threads, --rounds and --iters must be at least 1")
    if not args.fastscnn.is_file():
        fail(f"{args.fastscnn}: no such binary; run `cargo build --release -p fastscnn-cli`")
    if args.baseline is not None and not args.baseline.is_file():
        fail(f"--baseline {args.baseline}: no such binary")
    try:
        import numpy  # noqa: F401
        import onnxruntime
    except ImportError as e:
        fail(f"{e.name} is missing: python3 -m pip install onnxruntime numpy pillow")
    shared = shared_dir(args.shared)
    weights = shared / "golden" / "fastscnn_seed0_c19.safetensors"
    frame = None
    if not args.noise:
        try:
            import PIL  # noqa: F401
        except ImportError:
            fail("pillow is missing (python3 -m pip install pillow), or pass --noise")
        frame = first_frame(shared)
        if frame is None:
            fail("no frame under cityscapes-mini/leftImg8bit; pass --noise to time random values")
    what = f"the frame {frame.name} resized to each size" if frame else "random values"

    lines = [
        f"Machine: {machine()}. ONNX Runtime {onnxruntime.__version__} (CPU provider, "
        f"{args.threads} intra-op threads, sequential), fastscnn `bench` with {args.threads} "
        f"threads; float32, batch 1. Medians over {args.rounds} interleaved rounds of "
        f"{args.iters} frames each (per round: ORT, fastscnn"
        f"{', the baseline build' if args.baseline else ''}"
        f"{'' if args.no_candle_ops else ', fastscnn through candle ops'}), input {what}.",
        "",
    ]
    agreement = check_agreement(args.fastscnn, weights, shared, args.threads)
    if agreement is not None:
        lines += [f"Label agreement with ORT on a Cityscapes frame at 768x1536: {agreement:.4%}.", ""]
        print(lines[-2], flush=True)

    baseline_head = (" baseline ms | baseline / fastscnn |", " ---: | ---: |") if args.baseline \
        else ("", "")
    lines += [
        "| case | ONNX Runtime ms | fastscnn ms | vs ORT | target |" + baseline_head[0] +
        " fastscnn via candle ops ms | fused kernels vs candle ops | peak RSS (fastscnn) |",
        "| --- | ---: | ---: | ---: | --- |" + baseline_head[1] + " ---: | ---: | ---: |",
    ]
    cases = [c for c in CASES if args.only is None or args.only in c[0]]
    if not cases:
        fail(f"--only {args.only}: no case is named so ({', '.join(c[0] for c in CASES)})")
    for name, mode, size, onnx, target in cases:
        session = ort_session(shared / "golden" / onnx, args.threads) if onnx else None
        ort_ms, ours_ms, baseline_ms, candle_ms, rss = [], [], [], [], []
        for round in range(args.rounds):
            if session is not None:
                ort_ms.append(time_ort(session, mode, size, args.iters, args.warmup, frame))
            # The two builds take turns at going first: the second of two runs in a row is
            # measurably faster on these machines.
            builds = [(args.fastscnn, ours_ms)]
            if args.baseline is not None:
                builds.insert(round % 2, (args.baseline, baseline_ms))
            for binary, times in builds:
                ms, peak = time_fastscnn(binary, weights, mode, size, args.iters, args.warmup,
                                         args.threads, frame)
                times.append(ms)
                if binary == args.fastscnn:
                    rss.append(peak)
            if not args.no_candle_ops:
                ms, _ = time_fastscnn(args.fastscnn, weights, mode, size, args.iters, args.warmup,
                                      args.threads, frame, candle_ops=True)
                candle_ms.append(ms)
        ours = statistics.median(ours_ms)
        if session is not None:
            theirs = statistics.median(ort_ms)
            ort_cell, ratio = f"{theirs:.1f}", f"{theirs / ours:.2f}x"
        else:
            ort_cell, ratio = "(no export)", "—"
        if candle_ms:
            before = statistics.median(candle_ms)
            candle_cell, gain = f"{before:.1f}", f"{before / ours:.2f}x"
        else:
            candle_cell, gain = "—", "—"
        baseline_cell = ""
        if baseline_ms:
            earlier = statistics.median(baseline_ms)
            baseline_cell = f" {earlier:.1f} | {earlier / ours:.3f} |"
        row = (f"| {name} | {ort_cell} | {ours:.1f} | {ratio} | {target} |{baseline_cell} "
               f"{candle_cell} | {gain} | {max(rss):.0f} MB |")
        lines.append(row)
        print(row, flush=True)

    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
