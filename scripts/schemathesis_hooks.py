"""Schemathesis hooks for scripts/schemathesis.sh (loaded via SCHEMATHESIS_HOOKS).

Schemathesis draws Idempotency-Key values from a small space and reuses
them across requests with different bodies. The API answers such a reuse
with the documented 422 "idempotency key already used for a different
request" (what the IETF idempotency-key draft asks for), which the
positive_data_acceptance check would count as a valid request refused.
Only that exact answer is dropped; every other 422 to a schema-valid
request still fails the run. The reuse itself is tested in
crates/producer-api/tests/api/idempotency.rs.
"""

import schemathesis

IDEMPOTENCY_CONFLICT = "idempotency key already used for a different request"


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """False (drop) for "valid data rejected" (ST202) when the rejection is
    the idempotency-key conflict."""
    if getattr(failure, "code", None) != "ST202":
        return True
    if response is None or response.status_code != 422:
        return True
    if not any(name.lower() == "idempotency-key" for name in (case.headers or {})):
        return True
    try:
        error = response.json().get("error")
    except Exception:  # not JSON: keep the failure
        return True
    return error != IDEMPOTENCY_CONFLICT
