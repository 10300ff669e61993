"""Peak memory and speed of `layerdiffuse export` on fabricated output folders (hard-linked PNGs).

    python -m tests.bench.export_scale --rows 10000 100000 [--side 64] [--work /tmp/x]

Each export runs as its own process, which reports its own peak RSS (VmHWM) as it exits: the kernel's
figure for a child (wait4) would include this process's own peak, copied at fork/exec. Next to it, the peak
of a process that only imports what `export` imports; flat figures across row counts mean bounded memory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import REPO, table
from .fabricate import fabricate_output_folder

FORMATS = ("webdataset", "imagefolder", "parquet")
IMPORTS = "import pipeline.cli, pipeline.export.exporter, pipeline.export.to_parquet, pyarrow.parquet, webdataset"
# Runs `python -m pipeline ARGS` (or IMPORTS) and writes its VmHWM line to $PEAK_FILE at exit.
PROBE = """import atexit, os, runpy, sys
def peak():
    with open("/proc/self/status") as status, open(os.environ["PEAK_FILE"], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM")))
atexit.register(peak)
if sys.argv[1:]:
    sys.argv = ["layerdiffuse", *sys.argv[1:]]
    runpy.run_module("pipeline", run_name="__main__")
else:
    exec(os.environ["IMPORTS"])
"""


def peak_rss(args: list[str]) -> tuple[float, float]:
    """(seconds, peak resident memory in MiB) of `python -m pipeline ARGS` (no ARGS: IMPORTS only)."""
    with tempfile.NamedTemporaryFile("r", suffix=".peak") as peak:
        env = {**os.environ, "PEAK_FILE": peak.name, "IMPORTS": IMPORTS}
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        return seconds, int(peak.read().split()[1]) / 1024  # "VmHWM:  123456 kB"


def measure(work: Path, rows: int, side: int, shard_size: int, formats=FORMATS) -> list[list]:
    """One fabricated folder of `rows` rows exported in each format: a table row per format."""
    source = fabricate_output_folder(work / f"run-{rows}", rows, side=side)
    out = []
    for fmt in formats:
        dest = work / f"{fmt}-{rows}"
        args = ["export", str(source), "--format", fmt, "--to", str(dest), "--shard-size", str(shard_size)]
        seconds, rss = peak_rss(args)
        size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        out.append([fmt, f"{rows:,}", f"{side}x{side}", f"{seconds:.1f}", f"{rows / seconds:,.0f}",
                    f"{rss:.0f}", f"{size / 2**20:,.0f}"])  # fmt: skip
        shutil.rmtree(dest)
    shutil.rmtree(source)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--side", type=int, default=64, help="image side in pixels (noise: incompressible)")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=FORMATS)
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args()
    _, baseline = peak_rss([])
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        rows = [line for n in args.rows for line in measure(Path(work), n, args.side, args.shard_size, args.formats)]
    print(f"imports alone: peak RSS {baseline:.0f} MiB\n")
    print(table(["format", "rows", "image", "seconds", "rows/s", "peak RSS (MiB)", "export size (MiB)"], rows))


if __name__ == "__main__":
    main()
