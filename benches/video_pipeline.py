#!/usr/bin/env python3
"""The video pipeline against its own stages and the bare model, in one run.

Makes a clip of panning 1024x2048 crops of the Cityscapes frame frankfurt_000001_058914 with
ffmpeg (H.264, 10 fps, `--frames` frames), segments it with `fastscnn segment --stats` (colour
video out), and times the model alone with `fastscnn bench` at the same size. Prints the wall
time per frame of the pipeline, each stage's mean time per frame, the ratio of the wall time to
the slowest stage (the stages overlap when it is near 1; they would add up otherwise), and the
model-only figure beside them.

    cargo build --release -p fastscnn-cli
    python3 benches/video_pipeline.py --threads 2

Not run by CI: it takes minutes. docs/performance.md holds its output on the machine it ran on.
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness import ROOT, fail, machine, shared_dir

FRAME = "frankfurt_000001_058914"


def run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"{' '.join(map(str, command))} failed: {result.stderr.strip()}")
    return result.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", help="the fixtures folder (default: $FASTSCNN_SHARED or ../shared)")
    parser.add_argument("--binary", default=str(ROOT / "target/release/fastscnn"))
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    shared = shared_dir(args.shared)
    if shutil.which("ffmpeg") is None and not os.environ.get("FASTSCNN_FFMPEG"):
        fail("ffmpeg not found: apt install ffmpeg")
    ffmpeg = os.environ.get("FASTSCNN_FFMPEG") or shutil.which("ffmpeg")
    weights = shared / "golden" / "fastscnn_seed0_c19.safetensors"
    image = shared / "cityscapes-mini" / f"leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png"

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = tmp / "pan.mp4"
        # Crops of a 10%-larger copy, moving 20 pixels right and 10 down a second.
        run([ffmpeg, "-v", "error", "-nostdin", "-loop", "1", "-framerate", "10", "-i", image,
             "-vf", "scale=2248:1124,crop=2048:1024:t*20:t*10", "-frames:v", str(args.frames),
             "-c:v", "libx264", "-g", "30", "-pix_fmt", "yuv420p", clip])
        stats = tmp / "stats.json"
        run([args.binary, "segment", clip, "--weights", weights, "--out-dir", tmp / "out",
             "--format", "color", "--threads", str(args.threads), "--stats", stats])
        s = json.loads(stats.read_text())
        bench_out = tmp / "bench.json"
        # On the frame the clip is cut from: the label map's time depends on the scene.
        run([args.binary, "bench", "--weights", weights, "--size", "1024x2048", "--mode", "labels",
             "--image", image, "--threads", str(args.threads), "--json", bench_out])
        bench = json.loads(bench_out.read_text())

    wall_ms = 1000.0 / s["fps"]
    slowest = max(s["decode_ms"], s["infer_ms"], s["encode_ms"])
    print(f"machine: {machine()}, {args.threads} inference threads; "
          f"clip: {s['frames']} frames of 1024x2048")
    print("| pipeline wall | decode | infer | encode | wall / slowest stage | model only (bench) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {wall_ms:.1f} ms ({s['fps']:.2f} fps) | {s['decode_ms']:.1f} ms | {s['infer_ms']:.1f} ms "
          f"| {s['encode_ms']:.1f} ms | {wall_ms / slowest:.3f} | {bench['median_ms']:.1f} ms "
          f"({1000.0 / bench['median_ms']:.2f} fps) |")


if __name__ == "__main__":
    main()
