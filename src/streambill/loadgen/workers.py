"""Resident memory of the running workers: their /metrics first, pid files second."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

log = logging.getLogger(__name__)

RSS_METRIC: Final = "process_resident_memory_bytes"
CPU_METRIC: Final = "process_cpu_seconds_total"
MAX_WORKERS_PROBED: Final = 32
BYTES_PER_MB: Final = 1024 * 1024


@dataclass(frozen=True)
class WorkerMemory:
    source: str  # "metrics" or "pidfile"
    rss_mb: list[float]


def rss_from_metrics(text: str) -> float | None:
    """The resident set in MB from a Prometheus exposition, or None.

    >>> rss_from_metrics("# HELP x\\nprocess_resident_memory_bytes 1.048576e+08\\n")
    100.0
    """
    for line in text.splitlines():
        if line.startswith(RSS_METRIC) and not line.startswith(RSS_METRIC + "_"):
            parts = line.split()
            if len(parts) >= 2:
                return float(parts[-1]) / BYTES_PER_MB
    return None


def rss_from_proc_status(text: str) -> float | None:
    """The resident set in MB from /proc/<pid>/status (VmRSS is in kB).

    >>> rss_from_proc_status("Name:\\tpython\\nVmRSS:\\t  204800 kB\\n")
    200.0
    """
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def _scrape(host: str, first_port: int, timeout_s: float) -> list[float]:
    found: list[float] = []
    with httpx.Client(timeout=timeout_s) as client:
        for index in range(MAX_WORKERS_PROBED):
            url = f"http://{host}:{first_port + index}/metrics"
            try:
                response = client.get(url)
            except httpx.HTTPError:
                break  # `up` numbers workers from the first port without holes
            rss = rss_from_metrics(response.text) if response.status_code == 200 else None
            if rss is None:
                break
            found.append(rss)
    return found


def _from_pid_files(run_dir: Path) -> list[float]:
    found: list[float] = []
    for pid_file in sorted(run_dir.glob("worker-*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
            rss = rss_from_proc_status(Path(f"/proc/{pid}/status").read_text())
        except (OSError, ValueError):
            continue
        if rss is not None:
            found.append(rss)
    return found


def worker_memory(
    first_port: int, data_dir: Path, host: str = "127.0.0.1", timeout_s: float = 2.0
) -> WorkerMemory:
    """RSS of each running worker, from /metrics or else from <data_dir>/run/worker-*.pid."""
    scraped = _scrape(host, first_port, timeout_s)
    if scraped:
        return WorkerMemory("metrics", scraped)
    log.info("no worker /metrics from port %d; trying pid files", first_port)
    return WorkerMemory("pidfile", _from_pid_files(data_dir / "run"))


def metric_value(text: str, name: str) -> float | None:
    """An unlabelled sample of a Prometheus exposition, or None.

    >>> metric_value("process_cpu_seconds_total 12.5\\n", "process_cpu_seconds_total")
    12.5
    """
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == name:
            return float(parts[-1])
    return None


def cpu_seconds(urls: list[str], timeout_s: float = 2.0) -> float | None:
    """The CPU seconds the processes behind these /metrics urls have used, summed; None when
    one does not answer (the figure would be wrong, not smaller)."""
    total = 0.0
    with httpx.Client(timeout=timeout_s) as client:
        for url in urls:
            try:
                response = client.get(url)
            except httpx.HTTPError:
                return None
            value = metric_value(response.text, CPU_METRIC) if response.status_code == 200 else None
            if value is None:
                return None
            total += value
    return total


def metrics_urls(first_port: int, host: str = "127.0.0.1", timeout_s: float = 2.0) -> list[str]:
    """The /metrics urls of the running workers (numbered from the first port)."""
    urls = []
    with httpx.Client(timeout=timeout_s) as client:
        for index in range(MAX_WORKERS_PROBED):
            url = f"http://{host}:{first_port + index}/metrics"
            try:
                if client.get(url).status_code != 200:
                    break
            except httpx.HTTPError:
                break
            urls.append(url)
    return urls


def proc_cpu_seconds(pids: list[int]) -> float | None:
    """CPU seconds (user + system) of processes from /proc/<pid>/stat, summed; None when
    one is gone."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def support_pids(run_dir: Path) -> list[int]:
    """The stack's processes besides workers, ml and api (the broker, localbucket), from the
    pid files ``streambill up`` writes."""
    pids = []
    for pid_file in sorted(run_dir.glob("*.pid")):
        if pid_file.stem.startswith(("worker", "api", "ml")):
            continue
        try:
            pids.append(int(pid_file.read_text().strip()))
        except (OSError, ValueError):
            continue
    return pids
