#!/usr/bin/env python3
"""Throughput of the CPU kernels' inner loops on processors this machine cannot time, by llvm-mca.

Builds fastscnn-cpu in release for aarch64 and x86-64 Linux (the code a release build ships:
the library's object files, disassembled), finds each kernel's inner loop by its instructions,
and runs llvm-mca on it for a few processor models. For every loop it prints the cycles per
iteration, and beside them the bound of the loop's multiply-adds alone (the same number of them,
independent of each other, on the same model): a loop at that bound runs its FMA units flat out.

    python3 benches/llvm_mca.py [--llvm /usr/lib/llvm-19/bin] [--no-build]

Needs llvm-mca and llvm-objdump from LLVM 19 or newer (Debian's `llvm-19`; older ones lack the
Neoverse models) and `rustup target add aarch64-unknown-linux-gnu`; run on an x86-64 Linux host.
The cross build needs no linker: a library is not linked. Models: Neoverse N1 is the server
twin of the Cortex-A76 (Raspberry Pi 5, RK3588's big cores; LLVM gives the A76 itself an older
core's model), Cortex-A72 the Raspberry Pi 4's core, Cortex-A55 a little core, Apple M1,
Neoverse V2 (Graviton 4, Grace); Zen 4 and Skylake-X for AVX-512, Zen 3 and Skylake for AVX2.
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARM_MODELS = ["neoverse-n1", "cortex-a72", "cortex-a55", "apple-m1", "neoverse-v2"]

# (target, loops): each loop is (name, models, predicate on (function, body), fma pattern,
# bound instruction template, registers the bound may use as accumulators).
ARM_FMA = r"\b(fmla|fmul)\s+v\d+\.4s, v\d+\.4s, v\d+\.s\[\d\]"
ZMM_FMA = r"\bvfmadd\d+ps\s+.*%zmm|\bvmulps\s+.*%zmm"
YMM_FMA = r"\bvfmadd\d+ps\s+.*%ymm"


def count(pattern, body):
    return sum(1 for line in body if re.search(pattern, line))


def per_output(body, fma, add, relu):
    """Whether `body` computes some number of output vectors with nine multiply-adds, two adds
    and a ReLU each: the depthwise run, however many vectors the compiler put in one step."""
    vectors = count(relu, body)
    return vectors > 0 and count(fma, body) == 9 * vectors and count(add, body) == 2 * vectors


LOOPS = {
    "aarch64-unknown-linux-gnu": [
        (
            "1x1 product, NEON 8x12 tile (gemm_neon)",
            ARM_MODELS,
            lambda f, b: count(r"\bfmla\s+v\d+\.4s, v\d+\.4s, v\d+\.s\[", b) == 24,
            ARM_FMA,
            "fmla v{i}.4s, v30.4s, v31.s[0]",
            24,
        ),
        (
            "depthwise 3x3 flat run, ReLU (portable, compiled for NEON)",
            ARM_MODELS,
            lambda f, b: "depthwise" in f
            and per_output(b, ARM_FMA, r"\bfadd\s+v\d+\.4s", r"\bfmaxnm\s+v\d+\.4s"),
            ARM_FMA,
            "fmla v{i}.4s, v30.4s, v31.s[0]",
            24,
        ),
    ],
    "x86_64-unknown-linux-gnu": [
        (
            "1x1 product, AVX-512 8x48 tile (gemm_avx512)",
            ["znver4", "skylake-avx512"],
            lambda f, b: count(r"\bvfmadd231ps\s+.*%zmm", b) == 24,
            ZMM_FMA,
            "vfmadd231ps %zmm30, %zmm31, %zmm{i}",
            24,
        ),
        (
            "1x1 product, AVX2 4x24 tile, K loop in assembly (gemm_avx2)",
            ["znver3", "skylake"],
            lambda f, b: count(YMM_FMA, b) == 12 and count(r"\bvbroadcastss\s", b) == 4,
            YMM_FMA,
            "vfmadd231ps %ymm14, %ymm15, %ymm{i}",
            12,
        ),
        (
            "depthwise 3x3 flat run, stride 1, ReLU (AVX-512 rows over 128)",
            ["znver4", "skylake-avx512"],
            lambda f, b: "depthwise::stride1::avx512" in f
            and per_output(b, ZMM_FMA, r"\bvaddps\s+.*%zmm", r"\bvmaxps\s+.*%zmm"),
            ZMM_FMA,
            "vfmadd231ps %zmm30, %zmm31, %zmm{i}",
            24,
        ),
    ],
}


def library(target, build):
    """fastscnn-cpu's release library for `target`, built first unless `build` is false."""
    if build:
        subprocess.run(
            ["cargo", "build", "--release", "--quiet", "-p", "fastscnn-cpu", "--target", target],
            cwd=ROOT,
            check=True,
        )
    path = os.path.join(ROOT, "target", target, "release", "libfastscnn_cpu.rlib")
    if not os.path.exists(path):
        sys.exit(f"{path} does not exist: run without --no-build first")
    return path


def disassembly(objdump, rlib):
    """The text of every object file in `rlib`, disassembled, names demangled."""
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(["ar", "x", os.path.abspath(rlib)], cwd=work, check=True)
        objects = sorted(glob.glob(os.path.join(work, "*.o")))
        return subprocess.run(
            [objdump, "-d", "-C", "--no-show-raw-insn", *objects],
            capture_output=True, text=True, check=True,
        ).stdout


def loops(text, comment):
    """(function, body) of every loop in the disassembly that ends in a branch back into its own
    function: the instructions from the branch's target to the branch, comments dropped and the
    branch aimed at a label at the body's start, as llvm-mca reads them."""
    function, found, code = "", [], []
    for line in text.split("\n"):
        m = re.match(r"^([0-9a-f]+) <(.*)>:$", line)
        if m:
            function, code = m.group(2), []
            continue
        m = re.match(r"^\s+([0-9a-f]+):\s+(.*)$", line)
        if not m:
            continue
        address = int(m.group(1), 16)
        instruction = m.group(2).split(comment)[0].strip()
        code.append((address, instruction))
        b = re.match(r"^(b\.\w+|cbn?z|tbn?z|j\w+)\s+(?:.*,\s*)?(?:0x)?([0-9a-f]+)(?:\s*<.*>)?$", instruction)
        if not b:
            continue
        target = int(b.group(2), 16)
        body = [ins for at, ins in code if target <= at <= address]
        if target < address and code[0][0] <= target and len(body) > 1:
            branch = re.sub(r"(?:0x)?[0-9a-f]+(?:\s*<.*>)?$", ".Lloop", body[-1])
            found.append((function, [".Lloop:"] + body[:-1] + [branch]))
    return found


def mca(tool, triple, cpu, body):
    """llvm-mca's cycles per iteration of `body` on `cpu`."""
    with tempfile.NamedTemporaryFile("w", suffix=".s", delete=False) as f:
        f.write("\n".join(body) + "\n")
        path = f.name
    try:
        out = subprocess.run(
            [tool, f"-mtriple={triple}", f"-mcpu={cpu}", "-iterations=1000", path],
            capture_output=True, text=True, check=True,
        ).stdout
    finally:
        os.unlink(path)
    return int(re.search(r"Total Cycles:\s+(\d+)", out).group(1)) / 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--llvm", default="/usr/lib/llvm-19/bin", help="where llvm-mca is")
    parser.add_argument("--no-build", action="store_true", help="read the last release build")
    args = parser.parse_args()
    tool = os.path.join(args.llvm, "llvm-mca")
    objdump = os.path.join(args.llvm, "llvm-objdump")
    for target, wanted in LOOPS.items():
        triple = target.split("-")[0]
        comment = "//" if triple == "aarch64" else "#"
        found = loops(disassembly(objdump, library(target, not args.no_build)), comment)
        for name, models, predicate, fma, bound, accumulators in wanted:
            # Inner loops only (an outer loop holding a whole kernel can match the counts too),
            # each distinct compiled copy once: the same code inlined in several places, or
            # compiled for two callers (stride 1 and stride 2), is scheduled differently.
            copies = []
            for function, body in found:
                if len(body) <= 80 and predicate(function, body) and body not in copies:
                    copies.append(body)
            if not copies:
                sys.exit(f"{target}: no loop of {name!r} in fastscnn-cpu's release build")
            fmas = count(fma, copies[0])
            independent = [bound.format(i=i % accumulators) for i in range(fmas)]
            sizes = span([len(body) - 1 for body in copies], "{:d}")  # less the label
            print(f"\n{name}, {target}: {len(copies)} compiled cop{'ies' if len(copies) > 1 else 'y'}"
                  f", {sizes} instructions a step, {fmas} of them multiply-adds")
            print(f"  {'model':16} {'cycles':>12} {'FMA bound':>10} {'of peak':>10}")
            for cpu in models:
                cycles = [mca(tool, triple, cpu, body) for body in copies]
                floor = mca(tool, triple, cpu, independent)
                peak = span([round(100 * floor / c) for c in cycles], "{:d}%")
                print(f"  {cpu:16} {span(cycles, '{:.2f}'):>12} {floor:10.2f} {peak:>10}")


def span(values, form):
    """`values` as one value when all are equal, else as their range."""
    low, high = form.format(min(values)), form.format(max(values))
    return low if low == high else f"{low}-{high}"

if __name__ == "__main__":
    main()
