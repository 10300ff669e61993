"""Shared helpers for the benchmarks: timing, machine description, markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def timed(function, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


def median(values) -> float:
    return statistics.median(values)


def machine() -> str:
    import diffusers
    import torch
    import transformers

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · {cpu} · {os.cpu_count()} cores · {gpu} · "
        f"Python {platform.python_version()} · torch {torch.__version__} · diffusers {diffusers.__version__} · "
        f"transformers {transformers.__version__}"
    )


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(title: str, text: str) -> None:
    """Put `text` (which starts with `## <title>`) into RESULTS.md, replacing that section if it is there."""
    path = HERE / "RESULTS.md"
    current = path.read_text() if path.exists() else "# Benchmark results\n"
    start = current.find(f"\n## {title}")
    if start < 0:
        path.write_text(current.rstrip("\n") + "\n\n" + text.strip() + "\n")
        return
    end = current.find("\n## ", start + 1)
    rest = current[end:] if end >= 0 else "\n"
    path.write_text(current[:start] + "\n" + text.strip() + "\n" + rest)


def versions(*packages: str) -> str:
    """`name version` for each installed distribution (`name: not installed` for the others)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in packages:
        try:
            out.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            out.append(f"{package}: not installed")
    return " · ".join(out)
