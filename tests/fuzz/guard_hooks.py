"""schemathesis hooks for tests/openapi.rs: keep the fuzzer past the door.

The fuzzer learns ids from the answers it gets, so with an admin key it soon
finds that key's own id and disables, demotes or deletes it; every request
after that is a 401 and the Studio operations go unfuzzed past their door.
Before each call:
- a PUT or DELETE aimed at a guarded id (the fuzzer's own key, from
  TOLLGATE_FUZZ_GUARDED_IDS, comma-separated) is pointed at the decoy key
  instead (TOLLGATE_FUZZ_DECOY_ID): the request keeps its generated body and
  headers and still reaches the handler, on a key the run may ruin;
- a project operation is pointed at the caller's project
  (TOLLGATE_FUZZ_PROJECT_ID), which no answer names, so that its body is
  fuzzed against a real project rather than answered 404.
"""

import os

import schemathesis

GUARDED = {i for i in os.environ.get("TOLLGATE_FUZZ_GUARDED_IDS", "").split(",") if i}
DECOY = os.environ.get("TOLLGATE_FUZZ_DECOY_ID", "")
PROJECT = os.environ.get("TOLLGATE_FUZZ_PROJECT_ID", "")


@schemathesis.hook
def before_call(context, case, kwargs):
    params = case.path_parameters
    if not params or "id" not in params:
        return
    if PROJECT and case.operation.path.startswith("/api/v1/projects/"):
        params["id"] = PROJECT
    elif case.method.upper() in ("PUT", "DELETE", "PATCH") and params["id"] in GUARDED:
        params["id"] = DECOY
