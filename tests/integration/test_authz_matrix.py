"""The authorization matrix: every route and GraphQL field x every kind of principal x objects
owned by everyone, on SQLite and PostgreSQL. A principal must reach exactly what the scope rule
(``apiworld.may_see``, written independently of the product) allows. For anything else the
answer is the one a non-existent id gets (404, or 403 where the role may never do this at all):
the api is no oracle for what exists. Without a valid credential: 401. Lists hold nothing
foreign, and no response names a tenant the principal may not see.

The operations come from the running api's OpenAPI document, so a new route fails this test
until it is classified here. Stripe is the recorded stand-in (``tests/fixtures/stripe``), so
top-up and payment-method routes run for real; each customer of the world gets a top-up.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiworld import (
    BACKENDS,
    PRINCIPAL_TENANTS,
    Api,
    World,
    build_world,
    may_see,
    running_api,
)
from recorded_stripe import RecordedStripe

pytestmark = pytest.mark.integration

PRINCIPALS = (
    "admin",
    "reseller_a",
    "reseller_b",
    "customer_a",
    "customer_b",
    "service_a",
    "none",
    "revoked",
)
# What each path parameter names, and the objects of the world it ranges over.
PARAM_OBJECTS = {
    "customer_id": ("cus_a", "cus_b", "cus_d"),
    "reseller_id": ("res_a", "res_b"),
    "key_id": tuple(f"key_{t}" for t in ("res_a", "res_b", "cus_a", "cus_b", "cus_d")),
    "user_id": tuple(f"user_{t}" for t in ("res_a", "res_b", "cus_a", "cus_b", "cus_d")),
    "attempt_id": ("topup_cus_a", "topup_cus_b", "topup_cus_d"),
    "run_id": ("payout_run",),
    # The world holds no commission entries, so no payout: only the ghost case runs.
    "payout_id": (),
    # Nor dead letters (no worker runs): only the ghost case runs.
    "letter_id": (),
}
# Path parameters that are not objects: one value that exists for every reseller.
FIXED_PARAMS = {"month": "2026-10"}
# Routes whose success is not 200 for a principal that sees the object. The world's top-ups
# are Checkout top-ups: their payment link is for auto top-ups only (409); service keys never
# pay (403).
GET_ANSWERS = {
    "/v2/topups/{attempt_id}/checkout": {"service_a": 403, "*": 409},
    # the world's payout run paid nobody by SEPA, so it has no pain.001 file
    "/v2/payouts/runs/{run_id}/pain.001.xml": {"*": 404},
    # fraud labels and scores: the admin and the owning reseller; a suspect never sees them
    "/v2/customers/{customer_id}/fraud-labels": {
        "customer_a": 403,
        "customer_b": 403,
        "service_a": 403,
        "*": 200,
    },
    "/v2/customers/{customer_id}/fraud-scores": {
        "customer_a": 403,
        "customer_b": 403,
        "service_a": 403,
        "*": 200,
    },
    # the world's ledger is empty, so no month has a statement
    "/v2/customers/{customer_id}/statements/{month}": {"*": 404},
}
# Writes whose exact success status is checked for the principals allowed to do them.
WRITE_SUCCESS = {("POST", "/v2/customers/{customer_id}/fraud-labels"): 201}
# Writes that a principal who sees the object may still never do (403), by role.
WRITE_FORBIDDEN = {
    ("POST", "/v2/customers/{customer_id}/fraud-labels"): {"customer_a", "customer_b", "service_a"},
}
_counter = itertools.count()


def _body(method: str, path: str) -> Any:
    """A valid request body for each write operation (None: the operation has none)."""
    bodies: dict[tuple[str, str], Any] = {
        ("PATCH", "/v2/customers/{customer_id}"): {"low_balance_threshold": "1.00"},
        ("PATCH", "/v2/resellers/{reseller_id}"): {"timezone": "Europe/Berlin"},
        ("POST", "/v2/customers/{customer_id}/adjustments"): {"amount": "1.00", "reason": "m"},
        ("POST", "/v2/customers/{customer_id}/topups"): {"amount": "10.00"},
        ("POST", "/v2/customers/{customer_id}/payment-methods/setup"): {},
        ("PUT", "/v2/customers/{customer_id}/payment-method"): {"payment_method_id": "pm_matrix"},
        ("DELETE", "/v2/customers/{customer_id}/payment-method"): None,
        ("DELETE", "/v2/api-keys/{key_id}"): None,
        ("PUT", "/v2/resellers/{reseller_id}/commission-plan"): {"new_customer_bonus": "5"},
        ("POST", "/v2/payouts/{payout_id}/paid"): None,
        ("POST", "/v2/payouts/{payout_id}/failed"): {"reason": "matrix"},
        ("POST", "/v2/customers/{customer_id}/fraud-labels"): {"fraud": True, "note": "matrix"},
        ("POST", "/v2/admin/deadletters/{letter_id}/replay"): None,
    }
    return bodies[(method, path)]


# Operations without an object in the path, by how the matrix treats them.
LISTS = {
    "/v2/customers": "cus_",
    "/v2/resellers": "res_",
    "/v2/api-keys": "key_",
    "/v2/users": "user_",
}
ADMIN_ONLY = {
    "/v2/admin/ledger/invariants",
    "/v2/admin/audit",
    "/v2/admin/commissions/check",
    "/v2/admin/kpis",
    "/v2/admin/deadletters",
}
# Admin-only operations with a body: (body, raw content type or None, the admin's status).
ADMIN_WRITES: dict[tuple[str, str], tuple[Any, str | None, int]] = {
    ("PUT", "/v2/exchange-rates"): (
        {"rates": [{"day": "2026-11-20", "currency": "USD", "rate": "1.05"}]},
        None,
        200,
    ),
    ("GET", "/v2/exchange-rates"): (None, None, 200),
    ("POST", "/v2/exchange-rates/import"): ("2026-11-20,GBP,0.84\n", "text/csv", 200),
    ("POST", "/v2/commissions/close"): ({"month": "2026-10"}, None, 200),
    ("POST", "/v2/payouts/runs"): (None, None, 201),
}
SELF = {"/v2/auth/me"}
# Reads of a reseller's customers' data, scoped by an optional reseller_id filter: the admin
# (all, or any reseller), a reseller (itself; another's id: 404); anyone else 403.
RESELLER_SCOPED = {"/v2/fraud/suspected"}
# Reads everyone may make within its scope, narrowed by optional customer_id / reseller_id
# filters: a filter naming something outside the scope answers 404.
SCOPE_FILTERED = {"/v2/alerts"}
# No bearer key: public, or authenticated otherwise (Stripe's signature; test_stripe_webhook).
PUBLIC = {"/", "/healthz", "/readyz", "/metrics", "/v2/auth/login", "/v2/stripe/webhook"}
REFERENCING = {  # creates that name another object in their body
    "/v2/customers",
    "/v2/api-keys",
    "/v2/users",
    "/v2/usage",
}
CREATE_ONLY_ADMIN = {"/v2/resellers"}
SESSION_ONLY = {"/v2/auth/logout"}


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Api, World]]:
    tmp: Path = tmp_path_factory.mktemp(f"matrix-{request.param}")
    with RecordedStripe() as stub, running_api(tmp, request.param, stub.env()) as api:
        world = build_world(api)
        for customer in ("cus_a", "cus_b", "cus_d"):
            path = f"/v2/customers/{world.objects[customer]}/topups"
            world.objects[f"topup_{customer}"] = api.ok("POST", path, {"amount": "20.00"})["id"]
            world.kinds[f"topup_{customer}"] = "topup"
        for reseller in ("res_a", "res_b"):  # a statement each for the {month} routes
            body = {"month": FIXED_PARAMS["month"], "reseller_id": world.objects[reseller]}
            api.ok("POST", "/v2/commissions/close", body)
        world.objects["payout_run"] = api.ok("POST", "/v2/payouts/runs")["id"]
        world.kinds["payout_run"] = "payout_run"
        yield api, world


def visible(principal: str, obj: str) -> bool:
    """``may_see``, and a top-up is seen by whoever sees its customer."""
    return may_see(principal, obj.removeprefix("topup_"))


def token(world: World, principal: str) -> str | None:
    return None if principal == "none" else world.tokens[principal]


def operations(api: Api) -> list[tuple[str, str]]:
    spec = api.client.get("/openapi.json").json()
    return [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops]


class Tally:
    def __init__(self) -> None:
        self.cases = 0
        self.failures: list[str] = []

    def expect(self, ok: bool, what: str) -> None:
        self.cases += 1
        if not ok:
            self.failures.append(what)


def _leaks(world: World, principal: str, text: str) -> list[str]:
    """Names of tenants this principal may not see that appear in a response."""
    return [
        name for obj, name in world.names.items() if not may_see(principal, obj) and name in text
    ]


GHOST = "ghost_does_not_exist"


def _check_object_route(
    api: Api, world: World, tally: Tally, method: str, path: str, param: str
) -> None:
    def call(principal: str, object_id: str) -> Any:
        url = path.replace("{" + param + "}", object_id)
        for name, value in FIXED_PARAMS.items():
            url = url.replace("{" + name + "}", value)
        body = _body(method, path) if method != "GET" else None
        keyed = "adjustments" in path or "topups" in path
        headers = {"Idempotency-Key": f"m-{next(_counter)}"} if keyed else {}
        return api.call(method, url, token(world, principal), body, headers=headers)

    for principal in PRINCIPALS:
        ghost = call(principal, GHOST).status_code
        tally.expect(ghost in (401, 403, 404), f"{principal} {method} {path} on a ghost: {ghost}")
        for obj in PARAM_OBJECTS[param]:
            r = call(principal, world.objects[obj])
            what = f"{principal} {method} {path} on {obj}: {r.status_code} {r.text[:160]}"
            if principal in ("none", "revoked"):
                tally.expect(r.status_code == 401, what)
            elif visible(principal, obj):
                if method == "GET":
                    answers = GET_ANSWERS.get(path, {})
                    ok = r.status_code == answers.get(principal, answers.get("*", 200))
                elif principal in WRITE_FORBIDDEN.get((method, path), ()):
                    ok = r.status_code == 403
                elif (method, path) in WRITE_SUCCESS:
                    ok = r.status_code == WRITE_SUCCESS[(method, path)]
                else:
                    ok = r.status_code not in (401, 404)
                tally.expect(ok, what)
            else:
                tally.expect(r.status_code == ghost and ghost in (403, 404), what)
            tally.expect(not _leaks(world, principal, r.text), f"leak: {what}")


def _check_list(api: Api, world: World, tally: Tally, path: str, prefix: str) -> None:
    ids = {v: k for k, v in world.objects.items() if k.startswith(prefix)}
    for principal in PRINCIPALS:
        r = api.call("GET", path, token(world, principal), params={"limit": 1000})
        what = f"{principal} GET {path}: {r.status_code} {r.text[:160]}"
        if principal in ("none", "revoked"):
            tally.expect(r.status_code == 401, what)
            continue
        tally.expect(r.status_code == 200, what)
        listed = {item["id"] for item in r.json().get("items", [])}
        for object_id, obj in ids.items():
            # every object of the world: listed exactly when the principal may see it
            tally.expect((object_id in listed) == may_see(principal, obj), f"{what} / {obj}")
        tally.expect(not _leaks(world, principal, r.text), f"leak: {what}")


def _reference_body(path: str, world: World, obj: str) -> tuple[dict[str, Any], str]:
    target = world.objects[obj]
    n = next(_counter)
    if path == "/v2/customers":
        return {"name": f"m{n}", "currency": "EUR", "reseller_id": target}, "res_"
    if path == "/v2/api-keys":
        role = "service"
        return {"tenant_id": target, "role": role}, ""
    if path == "/v2/users":
        role = "reseller" if world.kinds[obj] == "reseller" else "customer"
        body = {
            "email": f"m{n}@example.com",
            "password": "a-long-password-1",
            "role": role,
            "tenant_id": target,
        }
        return body, ""
    event = {"event_id": f"m-{n}", "customer_id": target, "meter": "call_minutes", "quantity": "1"}
    return event, "cus_"


def _check_references(api: Api, world: World, tally: Tally, path: str) -> None:
    for principal in PRINCIPALS:
        ghosts: dict[str, int] = {}
        for obj in ("res_a", "res_b", "cus_a", "cus_b", "cus_d"):
            body, only = _reference_body(path, world, obj)
            if only and not obj.startswith(only):
                continue
            kind = world.kinds[obj]
            if kind not in ghosts:  # the same request naming an id that does not exist
                ghost_body = {k: (GHOST if v == world.objects[obj] else v) for k, v in body.items()}
                if "email" in ghost_body:
                    ghost_body["email"] = f"g{next(_counter)}@example.com"
                ghosts[kind] = api.call(
                    "POST", path, token(world, principal), ghost_body
                ).status_code
            r = api.call("POST", path, token(world, principal), body)
            what = f"{principal} POST {path} naming {obj}: {r.status_code} {r.text[:160]}"
            if principal in ("none", "revoked"):
                tally.expect(r.status_code == 401, what)
            elif may_see(principal, obj):
                tally.expect(r.status_code not in (401, 404), what)
            else:
                ghost = ghosts[kind]
                tally.expect(
                    r.status_code == ghost and ghost in (403, 404), f"{what} (ghost {ghost})"
                )
            tally.expect(not _leaks(world, principal, r.text), f"leak: {what}")


def _check_admin_write(api: Api, world: World, tally: Tally, method: str, path: str) -> None:
    body, content_type, success = ADMIN_WRITES[(method, path)]
    for principal in PRINCIPALS:
        if content_type is None:
            r = api.call(method, path, token(world, principal), body)
        else:
            headers = {"Content-Type": content_type}
            r = api.call(method, path, token(world, principal), content=body, headers=headers)
        expected = {"admin": success, "none": 401, "revoked": 401}.get(principal, 403)
        tally.expect(r.status_code == expected, f"{principal} {method} {path}: {r.status_code}")


def _check_reseller_scoped(api: Api, world: World, tally: Tally, path: str) -> None:
    for principal in PRINCIPALS:
        for target in (None, "res_a", "res_b", "ghost"):
            params = {} if target is None else {"reseller_id": world.objects.get(target, GHOST)}
            r = api.call("GET", path, token(world, principal), params=params)
            what = f"{principal} GET {path} {params}: {r.status_code} {r.text[:160]}"
            if principal in ("none", "revoked"):
                expected = 401
            elif principal == "admin":
                expected = 404 if target == "ghost" else 200
            elif principal in ("reseller_a", "reseller_b"):
                own = PRINCIPAL_TENANTS[principal][0]
                expected = 200 if target in (None, own) else 404
            else:
                expected = 403
            tally.expect(r.status_code == expected, what)
            tally.expect(not _leaks(world, principal, r.text), f"leak: {what}")


def _check_scope_filtered(api: Api, world: World, tally: Tally, path: str) -> None:
    filters: list[tuple[str, str] | None] = [None, ("customer_id", "ghost")]
    filters += [("customer_id", c) for c in ("cus_a", "cus_b", "cus_d")]
    filters += [("reseller_id", r) for r in ("res_a", "res_b")]
    for principal in PRINCIPALS:
        for chosen in filters:
            params = {} if chosen is None else {chosen[0]: world.objects.get(chosen[1], GHOST)}
            r = api.call("GET", path, token(world, principal), params=params)
            what = f"{principal} GET {path} {params}: {r.status_code} {r.text[:160]}"
            if principal in ("none", "revoked"):
                expected = 401
            elif chosen is None:
                expected = 200
            elif chosen[1] == "ghost":
                # the admin sees every customer id, also one only the ledger knows
                expected = 200 if principal == "admin" else 404
            elif chosen[0] == "customer_id":
                expected = 200 if may_see(principal, chosen[1]) else 404
            elif principal == "admin":
                expected = 200
            else:  # a reseller filter: a reseller's own only
                own = PRINCIPAL_TENANTS.get(principal, ("", ""))
                expected = 200 if own == (chosen[1], "reseller") else 404
            tally.expect(r.status_code == expected, what)
            tally.expect(not _leaks(world, principal, r.text), f"leak: {what}")


def _check_admin_only(api: Api, world: World, tally: Tally, method: str, path: str) -> None:
    for principal in PRINCIPALS:
        r = api.call(method, path, token(world, principal))
        what = f"{principal} {method} {path}: {r.status_code}"
        expected = {"admin": 200, "none": 401, "revoked": 401}.get(principal, 403)
        tally.expect(r.status_code == expected, what)


GRAPHQL_BY_CUSTOMER = {
    "balance": "query($id: String!) { balance(customerId: $id) { balance seq currency } }",
    "transactions": "query($id: String!) { transactions(customerId: $id, limit: 5) { seq } }",
    "processUsage": (
        "mutation($id: String!, $e: String!) { processUsage(customerId: $id,"
        ' meter: "call_minutes", quantity: "1", eventId: $e) { accepted } }'
    ),
    "createTopup": (
        "mutation($id: String!, $e: String!) { createTopup(customerId: $id,"
        ' amount: "10.00", idempotencyKey: $e) { id status checkoutUrl } }'
    ),
}
GRAPHQL_BY_CUSTOMER["forecast"] = (
    "query($id: String!) { forecast(customerId: $id) { dailyUnits daysLearned } }"
)
GRAPHQL_BY_CUSTOMER["fraudScores"] = (
    "query($id: String!) { fraudScores(customerId: $id, limit: 5) { scoreId } }"
)
# Fields a service key may never use, whatever it sees (FORBIDDEN).
GRAPHQL_NOT_FOR_SERVICE = {GRAPHQL_BY_CUSTOMER["createTopup"]}
# Fields only the admin and the owning reseller use: customers and service keys that see the
# customer get FORBIDDEN (fraud scores are not shown to a suspect).
GRAPHQL_STAFF_ONLY = {GRAPHQL_BY_CUSTOMER["fraudScores"]}
GRAPHQL_TENANT = "query($id: String!) { tenant(id: $id) { id name } }"
GRAPHQL_CUSTOMERS = "{ customers(first: 1000) { items { id name } } }"


def _graphql(api: Api, world: World, principal: str, query: str, **variables: Any) -> Any:
    return api.call(
        "POST", "/graphql", token(world, principal), {"query": query, "variables": variables}
    )


def _check_graphql(api: Api, world: World, tally: Tally) -> None:
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for obj in ("res_a", "res_b", "cus_a", "cus_b", "cus_d"):
        cases.append((obj, GRAPHQL_TENANT, {"id": world.objects[obj]}))
    for obj in ("cus_a", "cus_b", "cus_d"):
        for query in GRAPHQL_BY_CUSTOMER.values():
            cases.append((obj, query, {"id": world.objects[obj], "e": f"g{next(_counter)}"}))
    for principal, (obj, query, variables) in itertools.product(PRINCIPALS, cases):
        r = _graphql(api, world, principal, query, **variables)
        what = f"{principal} graphql {query[:40]} on {obj}: {r.status_code} {r.text[:160]}"
        if principal in ("none", "revoked"):
            tally.expect(r.status_code == 401, what)
            continue
        errors = r.json().get("errors") or []
        codes = {e.get("extensions", {}).get("code") for e in errors}
        if (
            principal == "service_a"
            and query in GRAPHQL_NOT_FOR_SERVICE
            and may_see(principal, obj)
        ) or (
            principal in ("customer_a", "customer_b", "service_a")
            and query in GRAPHQL_STAFF_ONLY
            and may_see(principal, obj)
        ):
            tally.expect(codes == {"FORBIDDEN"}, what)
        elif may_see(principal, obj) and not (principal == "service_a" and obj.startswith("res")):
            tally.expect(r.status_code == 200 and not errors, what)
        else:
            tally.expect(codes <= {"NOT_FOUND", "UNKNOWN_CUSTOMER"} and bool(codes), what)
        tally.expect(not _leaks(world, principal, r.text), f"leak: {what}")
    for principal in PRINCIPALS:
        r = _graphql(api, world, principal, GRAPHQL_CUSTOMERS)
        what = f"{principal} graphql customers: {r.status_code} {r.text[:160]}"
        if principal in ("none", "revoked"):
            tally.expect(r.status_code == 401, what)
            continue
        listed = {c["id"] for c in r.json()["data"]["customers"]["items"]}
        for obj in ("cus_a", "cus_b", "cus_d"):
            tally.expect((world.objects[obj] in listed) == may_see(principal, obj), what)
        tally.expect(not _leaks(world, principal, r.text), f"leak: {what}")


def test_every_route_and_field_keeps_to_the_scope(world: tuple[Api, World]) -> None:
    api, w = world
    tally = Tally()
    unclassified = []
    for method, path in operations(api):
        params = [p for p in re.findall(r"{(\w+)}", path) if p not in FIXED_PARAMS]
        if params:
            if len(params) != 1 or params[0] not in PARAM_OBJECTS:
                unclassified.append(f"{method} {path}")
                continue
            try:
                _body(method, path) if method != "GET" else None
            except KeyError:
                unclassified.append(f"{method} {path}")
                continue
            _check_object_route(api, w, tally, method, path, params[0])
        elif path in PUBLIC or path in SELF or path in SESSION_ONLY or path == "/graphql":
            continue
        elif method == "GET" and path in LISTS:
            _check_list(api, w, tally, path, LISTS[path])
        elif (method, path) in ADMIN_WRITES:
            _check_admin_write(api, w, tally, method, path)
        elif path in ADMIN_ONLY:
            _check_admin_only(api, w, tally, method, path)
        elif method == "GET" and path in RESELLER_SCOPED:
            _check_reseller_scoped(api, w, tally, path)
        elif method == "GET" and path in SCOPE_FILTERED:
            _check_scope_filtered(api, w, tally, path)
        elif method == "POST" and path in REFERENCING:
            _check_references(api, w, tally, path)
        elif method == "POST" and path in CREATE_ONLY_ADMIN:
            for principal in PRINCIPALS:
                body = {"name": f"m{next(_counter)}", "currency": "EUR"}
                r = api.call(method, path, token(w, principal), body)
                expected = {"admin": 201, "none": 401, "revoked": 401}.get(principal, 403)
                tally.expect(r.status_code == expected, f"{principal} POST {path}: {r.status_code}")
        else:
            unclassified.append(f"{method} {path}")
    _check_graphql(api, w, tally)
    print(f"\nauthorization matrix: {tally.cases} cases, {len(tally.failures)} failures")
    assert not unclassified, f"classify these operations in the matrix: {unclassified}"
    assert not tally.failures, "\n".join(tally.failures[:40])
    assert tally.cases > 1000
