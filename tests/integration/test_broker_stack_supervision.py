"""``run_up`` supervision with a real broker and stand-in children (a fake ``streambill`` CLI
that serves /readyz), so start order, readiness, shutdown and the lock are tested on their
own. The real worker and api are covered by tests/e2e/test_stack_up.py."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
from pathlib import Path

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

pytestmark = pytest.mark.integration

FAKE_CLI = r"""
import http.server, json, os, signal, sys, threading, time
role = sys.argv[1]
if role in ("worker", "ml"):
    host, port = "127.0.0.1", int(sys.argv[3])
else:
    host, port = os.environ["STREAMBILL_API_HOST"], int(os.environ["STREAMBILL_API_PORT"])
name = f"{role}-{port}"
data_dir = os.environ["STREAMBILL_DATA_DIR"]
with open(os.path.join(data_dir, f"env-{name}.json"), "w") as f:
    json.dump({k: v for k, v in os.environ.items() if k.startswith("STREAMBILL_")}, f)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if role == "demo":
    time.sleep(600)
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer((host, port), Ready)
threading.Thread(target=server.serve_forever, daemon=True).start()
crash = os.environ.get("FAKE_CRASH")
if crash == role:
    time.sleep(2)
    sys.exit(3)
if crash == "ignore-term" and role == "worker":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(600)
"""


def start_up(
    tmp_path: Path, env: dict[str, str], workers: int = 2, stop_timeout_s: float = 30.0
) -> subprocess.Popen[str]:
    fake = tmp_path / "fake_cli.py"
    fake.write_text(FAKE_CLI)
    runner = (
        "import sys\n"
        "from streambill import stack\n"
        "from streambill.settings import load_settings\n"
        f"stack.CHILD_COMMAND = (sys.executable, {str(fake)!r})\n"
        f"stack.STOP_TIMEOUT_S = {stop_timeout_s}\n"
        f"raise SystemExit(stack.run_up(load_settings(), workers={workers}))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", runner],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def assert_all_gone(pids: dict[str, int]) -> None:
    assert [name for name, pid in pids.items() if pid_alive(pid)] == []
    assert [name for name, pid in pids.items() if process_group_members(pid)] == []


def test_up_starts_in_order_and_stops_everything(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = stack_env(data_dir, workers=2, storage="s3")
    env["STREAMBILL_DEMO"] = "1"
    up = start_up(tmp_path, env)
    output = OutputReader(up)
    try:
        output.wait_for(READY_LINE, 60)
        pids = pids_in(data_dir / "run")
        assert set(pids) == {"bucket", "broker", "worker-0", "worker-1", "ml", "api", "demo"}
        key = (data_dir / "admin_api_key").read_text().strip()
        assert key.startswith("sb_admin_") and key not in output.text()  # never in a banner
        assert stat.S_IMODE((data_dir / "admin_api_key").stat().st_mode) == 0o600
        api_env = json.loads((data_dir / f"env-api-{env['STREAMBILL_API_PORT']}.json").read_text())
        assert api_env["STREAMBILL_ADMIN_API_KEY"] == key
        assert api_env["STREAMBILL_KAFKA_BOOTSTRAP"] == f"127.0.0.1:{env['STREAMBILL_BROKER_PORT']}"
        assert api_env["STREAMBILL_DATA_DIR"] == str(data_dir.resolve())
    finally:
        code = stop_stack(up, output, 60)
    assert code == 0, output.text()
    assert_all_gone(pids)
    assert list((data_dir / "run").glob("*.pid")) == []


def test_second_up_on_one_data_dir_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = start_up(tmp_path, stack_env(data_dir))
    output = OutputReader(first)
    try:
        output.wait_for(READY_LINE, 60)
        second = start_up(tmp_path, stack_env(data_dir))
        second_output, _ = second.communicate(timeout=30)
        assert second.returncode == 1
        assert "in use by pid" in second_output
    finally:
        assert stop_stack(first, output, 60, signal.SIGINT) == 0


def test_a_crashed_child_stops_the_stack(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = stack_env(data_dir)
    env["FAKE_CRASH"] = "api"
    up = start_up(tmp_path, env)
    output = OutputReader(up)
    try:
        output.wait_for(READY_LINE, 60)
        pids = pids_in(data_dir / "run")
        assert up.wait(30) == 1
    finally:
        if up.poll() is None:
            up.kill()
    assert "api exited with 3 unexpectedly" in output.text()
    assert_all_gone(pids)


def test_a_child_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = stack_env(data_dir, workers=1)
    env["FAKE_CRASH"] = "ignore-term"
    up = start_up(tmp_path, env, workers=1, stop_timeout_s=2.0)
    output = OutputReader(up)
    try:
        output.wait_for(READY_LINE, 60)
        pids = pids_in(data_dir / "run")
    finally:
        code = stop_stack(up, output, 60)
    assert code == 1  # not a clean stop: the worker had to be killed
    assert "ignored SIGTERM" in output.text()
    assert_all_gone(pids)
