"""Hostile or careless input at the api's edge: money fields refused with a code, Checkout
returning only to the customer's own hosts, the bootstrap admin key retired for good, a login
storm that cannot stall usage ingest, and a control database outage answered with 503."""

from __future__ import annotations

import contextlib
import secrets
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from apiworld import Api, database_url, running_api

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp: Path = tmp_path_factory.mktemp("edge")
    env = {"STREAMBILL_ALLOWED_ORIGINS": "https://app.example.com"}
    with running_api(tmp, "sqlite", env) as running:
        yield running


def customer(api: Api, **extra: object) -> str:
    body = {"name": f"Edge {secrets.token_hex(3)}", "currency": "EUR", **extra}
    return str(api.ok("POST", "/v2/customers", body)["id"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("auto_topup", {"enabled": True, "threshold": "5.00", "amount": "20.005"}),
        ("auto_topup", {"enabled": True, "threshold": "5.001", "amount": "20.00"}),
        ("auto_topup", {"enabled": True, "threshold": "5.00", "amount": "4.99"}),
        ("auto_topup", {"enabled": True, "threshold": "5.00", "amount": "10000.01"}),
        ("auto_topup", {"enabled": True, "threshold": "20000.00", "amount": "20.00"}),
        ("low_balance_threshold", "0.001"),
        ("low_balance_threshold", "2000000.00"),
    ],
)
def test_money_a_person_sets_is_whole_cents_within_limits(
    api: Api, field: str, value: object
) -> None:
    cid = customer(api)
    answer = api.call("PATCH", f"/v2/customers/{cid}", api.stack.admin_key, {field: value})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid_money_amount"
    created = api.call(
        "POST", "/v2/customers", api.stack.admin_key, {"name": "x", "currency": "EUR", field: value}
    )
    assert created.status_code == 422
    assert created.json()["error"]["code"] == "invalid_money_amount"


def test_valid_money_settings_are_kept(api: Api) -> None:
    cid = customer(api)
    auto = {"enabled": True, "threshold": "5.50", "amount": "20.00"}
    api.ok("PATCH", f"/v2/customers/{cid}", {"auto_topup": auto, "low_balance_threshold": "7.25"})
    got = api.ok("GET", f"/v2/customers/{cid}")
    assert got["auto_topup"]["amount"] == "20.00" and got["low_balance_threshold"] == "7.25"


def test_checkout_returns_only_to_the_customers_own_hosts(api: Api) -> None:
    cid = customer(api)
    for url, code in (
        ("https://evil.example/after-payment", "return_url_not_allowed"),
        ("https://app.example.com.evil.example/x", "return_url_not_allowed"),
        ("javascript://x.example/%0aalert(1)", "invalid_request"),
    ):
        answer = api.call(
            "POST",
            f"/v2/customers/{cid}/topups",
            api.stack.admin_key,
            {"amount": "20.00", "success_url": url},
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == code
    # An allowed origin passes this check (and then needs Stripe, which this api lacks).
    allowed = api.call(
        "POST",
        f"/v2/customers/{cid}/topups",
        api.stack.admin_key,
        {"amount": "20.00", "success_url": "https://app.example.com/billing?done=1"},
    )
    assert allowed.status_code == 503 and allowed.json()["error"]["code"] == "unavailable"


def test_the_bootstrap_admin_key_can_be_retired_once_another_admin_exists(
    tmp_path: Path,
) -> None:
    with running_api(tmp_path) as api:
        boot = api.stack.admin_key
        refused = api.call("DELETE", "/v2/api-keys/key_bootstrap", boot)
        assert refused.status_code == 409, refused.text  # no other way in yet
        issued = api.ok("POST", "/v2/api-keys", {"role": "admin", "name": "ops"})
        assert issued["key"].startswith("sb_adm_")
        retired = api.call("DELETE", "/v2/api-keys/key_bootstrap", issued["key"])
        assert retired.status_code == 200 and retired.json()["revoked_at"]
        assert api.call("GET", "/v2/customers", boot).status_code == 401
        assert api.call("GET", "/v2/customers", issued["key"]).status_code == 200
        # The issued key is revocable like any other.
        api.ok("DELETE", f"/v2/api-keys/{issued['id']}", token=issued["key"])
        assert api.call("GET", "/v2/customers", issued["key"]).status_code == 401


def test_a_login_storm_is_refused_early_and_usage_keeps_flowing(tmp_path: Path) -> None:
    with running_api(tmp_path) as api:
        api.stack.start_worker()
        # The worker's web port shows health and metrics, never Faust's table or router pages.
        (_, port), *_ = api.stack.workers
        worker = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{worker}/readyz", timeout=10).status_code in (200, 503)
        for page in ("/router/", "/table/balances/", "/graph/", "/stats/"):
            assert httpx.get(f"{worker}{page}", timeout=10).status_code == 404, page
        cid = customer(api, prices=[{"meter": "call_minutes", "unit_price": "0.01"}])
        service = api.ok("POST", "/v2/api-keys", {"role": "service", "tenant_id": cid})["key"]
        stop = threading.Event()
        answers: list[int] = []

        def storm() -> None:
            with httpx.Client(base_url=api.base_url, timeout=30) as client:
                # 20 logins a second with random e-mails, for 30 s.
                begun = time.monotonic()
                for n in range(600):
                    body = {"email": f"{secrets.token_hex(6)}@storm.example", "password": "x" * 12}
                    answers.append(client.post("/v2/auth/login", json=body).status_code)
                    # On a schedule of 20 a second (pacing, not a wait).
                    time.sleep(max(0.0, begun + (n + 1) / 20 - time.monotonic()))
            stop.set()

        latencies: list[float] = []
        thread = threading.Thread(target=storm)
        thread.start()
        with httpx.Client(base_url=api.base_url, timeout=30) as client:
            n, posting = 0, time.monotonic()
            while not stop.is_set():
                event = {
                    "event_id": f"u-{n}",
                    "customer_id": cid,
                    "meter": "call_minutes",
                    "quantity": "1",
                }
                at = time.perf_counter()
                answer = client.post(
                    "/v2/usage", json=event, headers={"Authorization": f"Bearer {service}"}
                )
                latencies.append((time.perf_counter() - at) * 1000)
                assert answer.status_code == 202, answer.text
                n += 1
                # One post every 20 ms on a schedule (pacing, not a wait).
                time.sleep(max(0.0, posting + n * 0.02 - time.monotonic()))
        thread.join()
        assert len(answers) == 600
        refused = sum(code == 429 for code in answers)
        assert refused >= 0.9 * len(answers), (refused, sorted(set(answers)))
        assert set(answers) <= {401, 429}
        p99 = statistics.quantiles(latencies, n=100)[98]
        print(
            f"\nlogin storm: {refused} of {len(answers)} answered 429; usage posts "
            f"{len(latencies)}, p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms"
        )
        assert len(latencies) > 300 and p99 < 100, (len(latencies), p99)


class Forwarder:
    """A TCP forwarder to PostgreSQL that can be cut: the database going away mid-run."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.open:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open = False
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_a_control_database_outage_answers_503(tmp_path: Path) -> None:
    with database_url("postgresql", tmp_path) as url:
        assert url is not None
        forwarder = Forwarder(("127.0.0.1", 5432))
        via = url.replace("127.0.0.1:5432", f"127.0.0.1:{forwarder.port}")
        with running_api(tmp_path, "sqlite", {"STREAMBILL_DATABASE_URL": via}) as api:
            cid = customer(api)
            forwarder.cut()
            key = api.stack.admin_key
            answers = [api.call("GET", f"/v2/customers/{cid}", key) for _ in range(3)]
            for answer in answers:
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"]["code"] == "control_db_unavailable"
                assert answer.headers["Retry-After"] == "5"
