"""docker-compose.yml stays in step with the code: every topic, its partitions and policy."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from streambill.streams.topics import topic_specs

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CREATE_LINE = re.compile(r"^\s*create (\S+) (\d+) (compact|delete)\s*$", re.MULTILINE)


def test_topics_job_creates_every_topic_of_the_code() -> None:
    created = {
        name: (int(partitions), policy)
        for name, partitions, policy in CREATE_LINE.findall(COMPOSE.read_text())
    }
    expected = {
        spec.name: (spec.partitions, spec.config.get("cleanup.policy", "delete"))
        for spec in topic_specs(8)
    }
    assert created == expected


def _compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")  # pyyaml: not a project dependency yet
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_services_images_and_dependencies() -> None:
    services = _compose()["services"]
    assert {"kafka", "topics", "clickhouse", "postgres", "api"} <= set(services)
    workers = [name for name in services if name.startswith("worker")]
    assert len(workers) == 2
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["topics"]["image"] == services["kafka"]["image"]
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["postgres"]["image"].startswith("postgres:")
    for name in [*workers, "api"]:
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (ROOT / service["build"]["dockerfile"]).is_file()
        assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert "healthcheck" in service
        env = service["environment"]
        assert env["STREAMBILL_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["STREAMBILL_CLICKHOUSE_URL"] == "http://clickhouse:8123"
        assert env["STREAMBILL_DATABASE_URL"].startswith("postgresql")
        assert "@postgres:5432/" in env["STREAMBILL_DATABASE_URL"]
    assert services["api"]["command"] == ["api"]
    assert all(services[w]["command"] == ["worker"] for w in workers)
    for name in ("kafka", "clickhouse", "postgres"):
        assert "healthcheck" in services[name]


def test_a_compose_client_accepts_the_file(tmp_path: Path) -> None:
    """Parsed and validated by a real compose client where one is installed (Debian's
    ``docker-compose`` 1.29, which needs no Docker engine for ``config``). That client
    predates the Compose Specification's top-level ``name``, which the v2 client reads, so
    it checks a copy without that one line."""
    client = shutil.which("docker-compose")
    if client is None:
        pytest.skip("no docker-compose client on this machine")
    text = COMPOSE.read_text()
    assert re.search(r"^name: streambill$", text, re.MULTILINE)
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(re.sub(r"^name: .*\n", "", text, flags=re.MULTILINE))
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    result = subprocess.run(
        [client, "-f", str(copy), "config", "--services"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {
        "kafka",
        "topics",
        "clickhouse",
        "postgres",
        "worker-1",
        "worker-2",
        "ml",
        "api",
    }
