"""``streambill up``: the one-command embedded stack.

Starts the broker (Tansu in memory behind its journal proxy, see
:mod:`streambill.broker.proxy`; or memory; or s3 on localbucket), creates the
topics, starts ``streambill worker`` (one per ``--workers``) and ``streambill api`` as child
processes, waits until each answers ``/readyz``, then the demo traffic when
``STREAMBILL_DEMO=1``, and prints the URLs and the admin key.

Stopping (Ctrl-C, SIGTERM, SIGHUP): demo, api, workers (SIGTERM, up to 30 s each for a clean
exit, then SIGKILL), broker, object store; exit code 0 when everything stopped on its own.
Children run in their own session, so a Ctrl-C reaches only this process, which stops them
in that order; they also receive SIGTERM from the kernel if this process dies.

A crashed worker, api or broker stops the whole stack with exit code 1; nothing is restarted
here, because a restart loop hides a crash (a supervisor such as systemd or Kubernetes owns
restarts). The demo is not essential: when it exits, the stack keeps running.

One data dir holds one stack (a lock file refuses a second ``up``); two stacks with different
data dirs and ports run side by side.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from streambill import consistency, demo_logins
from streambill.broker import persist
from streambill.broker.admin import ensure_topics
from streambill.broker.embedded import EmbeddedBroker
from streambill.broker.process import ChildProcess, DirLock, pid_alive, require_free_port
from streambill.errors import StreambillError
from streambill.settings import Settings
from streambill.shutdown import StopRequest, stop_on_signals
from streambill.streams.topics import topic_specs

log = logging.getLogger(__name__)

READY_LINE = "streambill is ready"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
BROKER_LOST_STOP_S = 5.0
TOPICS_TIMEOUT_S = 60.0
MONITOR_INTERVAL_S = 0.5
ADMIN_KEY_FILE = "admin_api_key"
DEMO_PASSWORD_FILE = "demo_password"
ADMIN_KEY_PREFIX = "sb_admin_"
DEMO_ARGS = ("--customers", "50", "--rate", "20")
BROKER_SNAPSHOT = "broker-snapshot"
# Written when a stop could not save the broker; `up` then refuses to start (see below).
UNSAVED_MARKER = "broker-snapshot.unsaved"
# How children are started; tests replace it with a stand-in CLI to test the supervision.
CHILD_COMMAND: tuple[str, ...] = (sys.executable, "-m", "streambill.cli")


class StackError(StreambillError):
    """The stack could not start, or a part of it died."""

    code = "stack_failed"


@dataclass
class _Stack:
    settings: Settings
    data_dir: Path
    broker: EmbeddedBroker | None = None
    workers: list[ChildProcess] = field(default_factory=list)
    ml: ChildProcess | None = None
    api: ChildProcess | None = None
    demo: ChildProcess | None = None
    broker_lost: bool = False  # the children cannot finish what waits for the broker

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def child(self, name: str, args: list[str], env: dict[str, str]) -> ChildProcess:
        argv = [*CHILD_COMMAND, *args]
        return ChildProcess(name, argv, log_dir=self.log_dir, pid_dir=self.run_dir, env=env)


def run_up(settings: Settings, workers: int = 1) -> int:
    """Run the embedded stack until a signal arrives; return the process exit code."""
    _configure_logging()
    if workers < 1:
        print("streambill up: --workers must be at least 1", file=sys.stderr)
        return 2
    stack = _Stack(settings, settings.data_dir.resolve())
    lock = DirLock(stack.run_dir / "up.lock", "streambill up")
    try:
        lock.acquire()
    except StreambillError as exc:
        print(f"streambill up: {exc.message}", file=sys.stderr)
        return 1
    stop = StopRequest()
    code = 1
    with stop_on_signals(stop, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)):
        try:
            code = _run(stack, workers, stop)
        except StreambillError as exc:
            print(f"streambill up: {exc.message}", file=sys.stderr, flush=True)
        finally:
            if stop.is_set():
                log.info("received %s; stopping", stop.reason)
            print("streambill up: stopping", file=sys.stderr, flush=True)
            clean = _shutdown(stack)
            lock.release()
    stop.close()  # after the handlers are gone: its descriptors may be reused
    how = "cleanly" if clean else "(some processes had to be killed, see the log above)"
    print(f"streambill up: stopped {how}", flush=True)
    return code if clean else max(code, 1)


def _run(stack: _Stack, workers: int, stop: StopRequest) -> int:
    settings = stack.settings
    if settings.kafka_bootstrap is None and settings.broker_storage == "durable":
        refuse_unsaved(stack.data_dir)
    _forget_stale_pids(stack.run_dir)
    admin_key = resolve_admin_key(settings, stack.data_dir)
    _check_ports(settings, workers)
    if settings.kafka_bootstrap is None:
        stack.broker = EmbeddedBroker.from_settings(settings)
        stack.broker.start()
    bootstrap = stack.broker.bootstrap if stack.broker else settings.bootstrap
    ensure_topics(bootstrap, topic_specs(settings.topic_partitions), TOPICS_TIMEOUT_S)
    if _journals_broker(stack):
        _migrate_snapshot(stack.data_dir, bootstrap)
    # Before anything reads or writes: a broker that lost what the stores saw refuses here.
    # (Not on Tansu's s3 engine: after a restart it reports every end offset as 1 until the
    # partition is written to, docs/architecture.md.)
    if not (stack.broker is not None and settings.broker_storage == "s3"):
        consistency.check_stack(
            bootstrap, settings.control_db_url, settings.clickhouse_dsn, str(stack.data_dir)
        )
    env = child_env(settings, stack.data_dir, bootstrap, admin_key)
    targets: dict[str, tuple[ChildProcess, str]] = {}
    for index in range(workers):
        port = settings.worker_port + index
        worker = stack.child(f"worker-{index}", ["worker", "--web-port", str(port)], env)
        stack.workers.append(worker)
        targets[worker.name] = (worker, f"http://127.0.0.1:{port}/readyz")
    if settings.ml:
        # The online-ML agents stop with the workers (in parallel) and are as essential.
        stack.ml = stack.child("ml", ["ml", "--web-port", str(settings.ml_port)], env)
        targets["ml"] = (stack.ml, f"http://127.0.0.1:{settings.ml_port}/readyz")
    stack.api = stack.child("api", ["api"], env)
    targets["api"] = (stack.api, f"{_local_url(settings)}/readyz")
    for child, _url in targets.values():
        if stop.is_set():
            return 0
        child.start()
    if not _wait_ready(targets, stop, time.monotonic() + READY_TIMEOUT_S):
        return 0
    password = None
    if settings.demo:
        password = resolve_demo_password(settings, stack.data_dir)
        stack.demo = stack.child(
            "demo", ["demo", *DEMO_ARGS], {**env, "STREAMBILL_DEMO_PASSWORD": password}
        )
        stack.demo.start()
    _print_banner(stack, bootstrap, password)
    return _supervise(stack, stop)


def resolve_admin_key(settings: Settings, data_dir: Path) -> str:
    """The admin key: from settings, else from ``<data_dir>/admin_api_key``, else a new one
    written there with mode 0600."""
    if settings.admin_api_key:
        return settings.admin_api_key
    return _kept_secret(data_dir / ADMIN_KEY_FILE, ADMIN_KEY_PREFIX + secrets.token_urlsafe(32))


def resolve_demo_password(settings: Settings, data_dir: Path) -> str:
    """The demo users' password: from settings, else ``<data_dir>/demo_password``, else a new
    one kept there (mode 0600), so a restart signs in with the same one."""
    if settings.demo_password:
        return settings.demo_password
    return _kept_secret(data_dir / DEMO_PASSWORD_FILE, secrets.token_urlsafe(12))


def _kept_secret(path: Path, new_value: str) -> str:
    if path.exists():
        kept = path.read_text().strip()
        if kept:
            return kept
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(new_value + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)  # never a half-written file
    return new_value


def child_env(settings: Settings, data_dir: Path, bootstrap: str, admin_key: str) -> dict[str, str]:
    """Our environment plus every setting of ours (so overrides reach the children too)."""
    env = dict(os.environ)
    for name, value in settings.model_dump(mode="json").items():
        key = f"STREAMBILL_{name.upper()}"
        if value is None:
            env.pop(key, None)
        elif isinstance(value, bool):
            env[key] = "1" if value else "0"
        else:
            env[key] = str(value)
    env["STREAMBILL_DATA_DIR"] = str(data_dir)
    if "STREAMBILL_KAFKA_FETCH_MAX_WAIT_MS" not in env:
        # The children see a bootstrap address either way; the wait suits the broker `up` ran.
        env["STREAMBILL_KAFKA_FETCH_MAX_WAIT_MS"] = str(settings.fetch_max_wait_ms)
    if (
        settings.kafka_bootstrap is None
        and settings.broker_storage == "s3"
        and "STREAMBILL_KAFKA_IDEMPOTENCE" not in os.environ
    ):
        # Only Tansu's s3 engine fails idempotent producers (see Settings.kafka_idempotence).
        # Without idempotence librdkafka keeps one request in flight per broker, i.e. one
        # partition at a time: a worker batch's flush took ~160 ms per phase under load.
        env["STREAMBILL_KAFKA_IDEMPOTENCE"] = "0"
    env["STREAMBILL_KAFKA_BOOTSTRAP"] = bootstrap
    env["STREAMBILL_ADMIN_API_KEY"] = admin_key
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _check_ports(settings: Settings, workers: int) -> None:
    """Fail fast, and never mistake another stack's /readyz for ours."""
    if settings.kafka_bootstrap is None:
        require_free_port(settings.broker_port, "broker")
        if settings.broker_storage == "durable" and settings.bucket_port:
            require_free_port(settings.bucket_port, "localbucket")
    for index in range(workers):
        require_free_port(settings.worker_port + index, f"worker {index}")
    if settings.ml:
        require_free_port(settings.ml_port, "ml")
    api_host = "0.0.0.0" if settings.api_host in ("0.0.0.0", "::") else settings.api_host
    require_free_port(settings.api_port, "api", api_host)


def _local_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    return f"http://{host}:{settings.api_port}"


def _wait_ready(
    targets: dict[str, tuple[ChildProcess, str]], stop: StopRequest, deadline: float
) -> bool:
    """Poll every ``/readyz`` until all answer 200. False when a stop was requested."""
    pending = dict(targets)
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while pending:
            for name, (child, url) in list(pending.items()):
                code = child.poll()
                if code is not None:
                    raise StackError(_died(child, code, "while starting"))
                if _answers_ok(client, url):
                    log.info("%s is ready (%s)", name, url)
                    del pending[name]
            if not pending:
                break
            if time.monotonic() >= deadline:
                late = ", ".join(f"{name} ({url})" for name, (_c, url) in pending.items())
                tails = "\n".join(_died(child, None, "") for child, _u in pending.values())
                raise StackError(f"not ready after {READY_TIMEOUT_S:.0f} s: {late}\n{tails}")
            if stop.wait(0.5):
                return False
    return True


def _answers_ok(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def _died(child: ChildProcess, code: int | None, when: str) -> str:
    status = f"exited with {code} {when}" if code is not None else "is not ready"
    return f"{child.name} {status}; last lines of {child.log_path}:\n{child.log_tail()}"


def _supervise(stack: _Stack, stop: StopRequest) -> int:
    """Watch the children until a stop is requested (0) or an essential one dies (1)."""
    essential = [*stack.workers, *(c for c in (stack.ml, stack.api) if c is not None)]
    while not stop.wait(MONITOR_INTERVAL_S):
        if stack.broker is not None:
            try:
                stack.broker.check()
            except StreambillError as exc:
                log.error("the broker died; stopping the stack: %s", exc.message)
                stack.broker_lost = True
                return 1
        for child in essential:
            code = child.poll()
            if code is not None:
                log.error("%s; stopping the stack", _died(child, code, "unexpectedly"))
                return 1
        if stack.demo is not None and (code := stack.demo.poll()) is not None:
            level = logging.INFO if code == 0 else logging.WARNING
            log.log(level, "demo exited with %s; the stack keeps running", code)
            stack.demo.finish(time.monotonic())
            stack.demo = None
    return 0


def _shutdown(stack: _Stack) -> bool:
    """Stop in order: demo, api, workers, broker, object store. True when all were clean.

    With the broker gone, a child's clean stop would wait out its Kafka timeouts (a minute)
    for publishes that cannot finish; what they had acknowledged is in the broker's journal
    already, so they get BROKER_LOST_STOP_S before they are killed."""
    clean = True
    timeout_s = BROKER_LOST_STOP_S if stack.broker_lost else STOP_TIMEOUT_S
    for child in (stack.demo, stack.api):
        if child is not None:
            clean = child.stop(timeout_s) and clean
    # Workers stop in parallel (each hands back its partitions), the ml process with them.
    stopping = [*stack.workers, *([stack.ml] if stack.ml is not None else [])]
    for worker in stopping:
        worker.terminate()
    deadline = time.monotonic() + timeout_s
    for worker in stopping:
        clean = worker.finish(deadline) and clean
    # Nothing to save: the journal proxy synced every acknowledged write as it happened.
    if stack.broker is not None:
        clean = stack.broker.stop(STOP_TIMEOUT_S) and clean
    stack.demo = stack.api = stack.broker = stack.ml = None
    stack.workers = []
    return clean


def record_unsaved(data_dir: Path, exc: BaseException) -> None:
    """Remember that the broker's last run is not in its snapshot (data dirs from before the
    journal, whose ``durable`` storage saved a snapshot at a clean stop)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
    (data_dir / UNSAVED_MARKER).write_text(f"{stamp}: {exc}\n")


def refuse_unsaved(data_dir: Path) -> None:
    """Do not start from a snapshot older than the data the api already holds.

    ClickHouse and the worker's table snapshots keep what happened after the broker's last
    saved snapshot; restoring that snapshot would roll balances and ``seq`` back beneath
    them. The operator decides: start fresh in a new data dir, or accept the loss."""
    marker = data_dir / UNSAVED_MARKER
    if not marker.exists():
        return
    reason = marker.read_text().strip()
    raise StackError(
        f"the embedded broker could not be saved when it last stopped ({reason}).\n"
        f"Its snapshot in {data_dir / BROKER_SNAPSHOT} is older than the ledger in ClickHouse;\n"
        f"starting from it would roll balances back. Start in a new data dir "
        f"(STREAMBILL_DATA_DIR), or delete {marker} to start from the old snapshot anyway."
    )


def _journals_broker(stack: _Stack) -> bool:
    return stack.broker is not None and stack.settings.broker_storage == "durable"


def _migrate_snapshot(data_dir: Path, bootstrap: str) -> None:
    """A data dir from before the journal: its broker snapshot goes into the (journaled)
    broker once, then is kept aside as ``broker-snapshot.migrated``."""
    snapshot = data_dir / BROKER_SNAPSHOT
    if not snapshot.is_dir():
        return
    restored = persist.restore(bootstrap, snapshot)
    os.replace(snapshot, data_dir / f"{BROKER_SNAPSHOT}.migrated")
    log.info("the broker snapshot of an older version moved into the journal: %d records", restored)


def _forget_stale_pids(run_dir: Path) -> None:
    """Remove pid files of a previous run; warn about processes that are still alive."""
    for pid_file in run_dir.glob("*.pid"):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid and pid_alive(pid):
            log.warning("%s of a previous run is still alive (pid %d)", pid_file.stem, pid)
        pid_file.unlink(missing_ok=True)


def _dashboard_rows(settings: Settings, password: str | None) -> list[tuple[str, str]]:
    """The dashboards' addresses; with the demo, its sign-ins on white-label hosts."""
    port = settings.api_port
    if password is None:
        return [
            (f"{area}", f"{settings.api_url}/{area}") for area in ("portal", "reseller", "admin")
        ]
    rows = []
    for login in demo_logins.banner_logins():
        host = f"{login.slug}.{settings.dashboard_base_domain}" if login.slug else "127.0.0.1"
        rows.append((login.area, f"http://{host}:{port}/{login.area}  ({login.email})"))
    where = (
        "STREAMBILL_DEMO_PASSWORD"
        if settings.demo_password
        else str(settings.data_dir / DEMO_PASSWORD_FILE)
    )
    rows.append(("password", f"in {where}  (every demo sign-in)"))
    return rows


def _admin_key_source(settings: Settings, data_dir: Path) -> str:
    """Where the admin key is, never the key: a banner ends up in logs and terminals."""
    if settings.admin_api_key:
        return "STREAMBILL_ADMIN_API_KEY (from the environment)"
    return f"in {data_dir / ADMIN_KEY_FILE} (mode 0600)"


def _print_banner(stack: _Stack, bootstrap: str, password: str | None = None) -> None:
    settings = stack.settings
    url = settings.api_url
    kafka = "external" if stack.broker is None else f"embedded, {stack.broker.storage}"
    rows = [
        ("api", url),
        ("api docs", f"{url}/docs"),
        *_dashboard_rows(settings, password),
        ("metrics", f"{url}/metrics"),
    ]
    for index in range(len(stack.workers)):
        rows.append((f"worker {index}", f"http://127.0.0.1:{settings.worker_port + index}/metrics"))
    if stack.ml is not None:
        rows.append(("ml", f"http://127.0.0.1:{settings.ml_port}/metrics"))
    rows += [
        ("kafka", f"{bootstrap} ({kafka})"),
        ("admin key", _admin_key_source(settings, stack.data_dir)),
        ("data dir", str(stack.data_dir)),
        ("logs", str(stack.log_dir)),
        ("demo", "on" if stack.demo is not None else "off (STREAMBILL_DEMO=1 turns it on)"),
    ]
    lines = ["", "streambill is up", *(f"  {name:<10} {value}" for name, value in rows)]
    lines.append(f"{READY_LINE} (Ctrl-C stops every process)")
    print("\n".join(lines), flush=True)


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per /readyz poll
