"""Peak memory and speed of `layerdiffuse export` on fabricated output folders (hard-linked PNGs).

    python -m tests.bench.export_scale --rows 10000 100000 [--side 64] [--work /tmp/x]

Each export runs as its own process; its peak RSS comes from the kernel (wait4), next to the peak of a
process that only imports what `export` imports, so the difference is what the export itself holds.
Flat figures across row counts mean memory is bounded.
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


def peak_rss(command: list[str]) -> tuple[float, float]:
    """(seconds, peak resident memory in MiB) of one child process; raises if it fails."""
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {os.waitstatus_to_exitcode(status)}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def measure(work: Path, rows: int, side: int, shard_size: int) -> list[list]:
    source = fabricate_output_folder(work / f"run-{rows}", rows, side=side)
    out = []
    for fmt in FORMATS:
        dest = work / f"{fmt}-{rows}"
        command = [sys.executable, "-m", "pipeline", "export", str(source), "--format", fmt, "--to", str(dest),
                   "--shard-size", str(shard_size)]  # fmt: skip
        seconds, rss = peak_rss(command)
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
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args()
    _, baseline = peak_rss([sys.executable, "-c", IMPORTS])
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        rows = [line for count in args.rows for line in measure(Path(work), count, args.side, args.shard_size)]
    print(f"imports alone: peak RSS {baseline:.0f} MiB\n")
    print(table(["format", "rows", "image", "seconds", "rows/s", "peak RSS (MiB)", "export size (MiB)"], rows))


if __name__ == "__main__":
    main()
