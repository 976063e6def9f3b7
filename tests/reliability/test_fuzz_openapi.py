"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis), against the real server.

The schema is read from the running server and every generated request (valid and invalid parameters,
bodies and content types) goes to it over HTTP: no 5xx, every error body is ``{"error": "..."}``, no
answer takes longer than the per-request timeout, and the server is healthy afterwards.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from eca_serve.api import create_app
from eca_serve.settings import Settings
from tests.reliability.clients import error_problems, server_errors_counted, wait_idle
from tests.reliability.served import CLASSIFIER, DETECTOR, Served, assert_still_serving

EXAMPLES_PER_OPERATION = 25  # x 2 modes (valid, invalid) x 23 operations: about 800 requests, 15 s on 2 idle cores
REQUEST_TIMEOUT_S = 10.0  # no request to an idle server may take longer; a hang fails the test


def real_names(context: Any, path_parameters: dict[str, Any] | None) -> st.SearchStrategy[dict[str, Any] | None]:
    """Mostly the served models and version 1, so requests reach the parsers behind the 404s; sometimes the generated values."""
    if not path_parameters or "name" not in path_parameters:
        return st.just(path_parameters)
    names = st.sampled_from([CLASSIFIER, DETECTOR, CLASSIFIER, path_parameters.get("name", "")])
    versions = st.sampled_from(["1", "1", str(path_parameters.get("version", ""))])
    updates = {"name": names, **({"version": versions} if "version" in path_parameters else {})}
    return st.fixed_dictionaries(updates).map(lambda chosen: {**path_parameters, **chosen})


@pytest.fixture(scope="module")
def api_schema(server: Served) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(server.url("/openapi.json"), timeout=30)
    schema.hook("flatmap_path_parameters")(real_names)
    return schema


def error_body_is_json(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool:
    """Every non-2xx answer is ``{"error": "<message>"}`` and no answer shows a stack trace."""
    fake = httpx.Response(response.status_code, content=response.content)
    problems = error_problems(fake)
    if problems:
        raise AssertionError(f"{case.method} {case.formatted_path}: {problems}")
    return True


def operations() -> list[tuple[str, str, bool]]:
    """(METHOD, path, whether it takes any input) of every operation the app documents.

    The test itself loads the schema from the running server; this list only names the tests.
    """
    spec = create_app(Settings()).openapi()
    return sorted((method.upper(), path, bool(op.get("parameters") or op.get("requestBody")))
                  for path, methods in spec["paths"].items() for method, op in methods.items())


# schemathesis.pytest.from_fixture would do this, but its LazySchema writes `request.node._nodeid`, which pytest 9.2 no
# longer has; so each documented operation is a test here, fuzzed with the operation's own hypothesis strategies.
@pytest.mark.parametrize(("method", "path", "has_inputs"), operations(), ids=lambda value: str(value))
def test_api(api_schema: schemathesis.BaseSchema, server: Served, method: str, path: str, has_inputs: bool) -> None:
    operation = api_schema[path][method]
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if has_inputs else [GenerationMode.POSITIVE]
    # Only the fuzzing phase's strategies: schemathesis's coverage phase enumerates boundary values per
    # parameter (hundreds of cases per operation), too many for CI.
    strategy = st.one_of(*(operation.as_strategy(mode, hooks=api_schema.hooks) for mode in modes))

    @settings(max_examples=EXAMPLES_PER_OPERATION * len(modes), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call(base_url=server.base, timeout=REQUEST_TIMEOUT_S)
        case.validate_response(response, checks=[not_a_server_error, error_body_is_json])

    fuzz()


def test_server_is_healthy_and_counted_no_5xx_after_fuzzing(server: Served) -> None:
    wait_idle(server.base)
    assert httpx.get(server.url("/healthz"), timeout=10).json()["ready"] is True
    assert_still_serving(server)
    metrics = httpx.get(server.url("/metrics"), timeout=10).text
    assert server_errors_counted(metrics) == 0, [line for line in metrics.splitlines() if 'status="5' in line]
    assert json.loads(httpx.get(server.url("/v2/health/ready"), timeout=10).text) == {"ready": True}
