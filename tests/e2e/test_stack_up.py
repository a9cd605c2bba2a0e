"""``streambill up`` for real: broker, worker and api started by the CLI, then SIGTERM.

Needs the real ``streambill worker``, ``streambill ml`` and ``streambill api`` (each answering
/readyz).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from streambill.broker.process import pid_alive
from streambill.broker.testing import (
    OutputReader,
    pids_in,
    process_group_members,
    stack_env,
    stop_stack,
)
from streambill.stack import READY_LINE

pytestmark = pytest.mark.e2e

READY_TIMEOUT_S = 150.0


def run_up_until_ready(data_dir: Path, env: dict[str, str]) -> tuple[int, dict[str, int], str]:
    """Start ``up``, wait for the ready line, check the api, SIGTERM; exit code, pids, output."""
    up = subprocess.Popen(
        [sys.executable, "-m", "streambill.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = OutputReader(up)
    try:
        output.wait_for(READY_LINE, READY_TIMEOUT_S)
        pids = pids_in(data_dir / "run")
        api = f"http://127.0.0.1:{env['STREAMBILL_API_PORT']}"
        assert httpx.get(f"{api}/readyz", timeout=5, trust_env=False).status_code == 200
    finally:
        code = stop_stack(up, output, 120)
    return code, pids, output.text()


def test_up_starts_the_stack_and_sigterm_stops_every_child(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = stack_env(data_dir, workers=1, storage="durable")
    code, pids, output = run_up_until_ready(data_dir, env)
    assert code == 0, output
    assert {"broker", "worker-0", "ml", "api"} <= set(pids)
    # Every child finished its own shutdown: none died of the signal (the api did, -15).
    exits = dict(re.findall(r"stopped (\S+) pid=\d+ exit=(-?\d+)", output))
    assert {"broker", "worker-0", "ml", "api"} <= set(exits), output
    assert {name: code for name, code in exits.items() if code != "0"} == {}, output
    assert [name for name, pid in pids.items() if pid_alive(pid)] == []
    assert [name for name, pid in pids.items() if process_group_members(pid)] == []
    key = (data_dir / "admin_api_key").read_text().strip()
    # The banner says where the key is and never shows it (a banner ends up in logs).
    assert key not in output and str(data_dir / "admin_api_key") in output

    # A second start on the same data dir keeps the admin key and its topics.
    code, _pids, output = run_up_until_ready(data_dir, env)
    assert code == 0, output
    assert (data_dir / "admin_api_key").read_text().strip() == key
    assert key not in output
