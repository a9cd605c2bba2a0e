"""Property-based requests from the api's own OpenAPI document (schemathesis): whatever the
generated paths, queries and bodies, the api never answers 5xx. Bounded examples per
operation keep it in the suite's budget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error

from apiworld import BACKENDS, Api, bearer, build_world, running_api
from recorded_stripe import RecordedStripe

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 30


@pytest.fixture(scope="module", params=BACKENDS)
def fuzz_api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    tmp: Path = tmp_path_factory.mktemp(f"schemathesis-{request.param}")
    # Stripe configured (the recorded stand-in), so payment routes answer for real
    with RecordedStripe() as stub, running_api(tmp, request.param, stub.env()) as api:
        build_world(api)  # some real objects, so not every generated id is a miss
        yield api


@pytest.fixture(scope="module")
def api_schema(fuzz_api: Api) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_api.base_url}/openapi.json")


def test_no_operation_answers_5xx(api_schema: Any, fuzz_api: Api) -> None:
    """Each operation in turn. (schemathesis's pytest plugin does not load under pytest 9, so
    the operations are driven through their Hypothesis strategies here.)"""
    failures: list[str] = []
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
            derandomize=True,
            database=None,
        )
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            case.call_and_validate(
                base_url=fuzz_api.base_url,
                headers=bearer(fuzz_api.stack.admin_key),
                checks=[not_a_server_error],
            )

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # one report per operation, go on
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    print(f"\nschemathesis: {operations} operations, {len(failures)} with a 5xx")
    assert operations >= 15
    assert not failures, "\n\n".join(failures)
