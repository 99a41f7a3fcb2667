"""What the comparison scripts beside this file share: one-line failures, the fixtures folder and
the machine's description. Each script imports it from its own folder (`python3 benches/X.py`
puts `benches/` first on the module path)."""

import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fail(message):
    """Ends the script with one line naming it, and exit status 1."""
    print(f"{Path(sys.argv[0]).stem}: {message}", file=sys.stderr)
    sys.exit(1)


def shared_dir(arg):
    """The fixtures folder: `arg`, else $FASTSCNN_SHARED, else `../shared` beside the checkout."""
    for candidate in [arg, os.environ.get("FASTSCNN_SHARED"), ROOT.parent / "shared"]:
        if candidate and (Path(candidate) / "golden").is_dir():
            return Path(candidate)
    fail("no fixtures: pass --shared or set FASTSCNN_SHARED (the folder holding golden/)")


def machine():
    """The CPU's model, its logical CPUs, its widest vector instructions and the system."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    except OSError:
        isa = "?"
    return f"{model}, {os.cpu_count()} logical CPUs, {isa}, {platform.system()} {platform.release()}"
