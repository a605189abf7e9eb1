"""The official Anthropic Python client (tests/requirements.txt) on the
Messages API, unchanged: what a client of Tollgate's /external sees.

Usage:
  anthropic_client.py messages BASE_URL KEY MODEL [MAX_TOKENS] [--auth x-api-key|bearer] [--only create|stream]
  anthropic_client.py count_tokens BASE_URL KEY MODEL [--auth x-api-key|bearer]

BASE_URL is what `anthropic.Anthropic(base_url=...)` takes, the SDK appends
`/v1/messages`: `…/external` on the gateway, the root on the mock upstream.
MAX_TOKENS defaults to 1024. `--auth x-api-key` (the default) sends the key as
`X-Api-Key` (what Anthropic's API takes); `--auth bearer` passes it as
`auth_token`, sent as `Authorization: Bearer` (this SDK sends an `api_key`
that way too). The SDK sends its own `anthropic-version`.

Prints ONE JSON object on stdout and exits 0, also when the API answers an
error (tests/mock_protocols.rs and the gateway's tests assert on it):

`messages` runs `create` (`client.messages.with_raw_response.create`) and then
`stream` (`client.messages.stream`, the helper that accumulates the events);
`--only` runs one of them. `count_tokens` runs
`client.messages.with_raw_response.count_tokens`. Sections:
  "create": {"id", "type", "model", "text", "stop_reason", "usage",
             "error_field", "compose", "budget_used", "final_amount"}
  "stream": {"text", "types", "stop_reason", "usage", "compose",
             "budget_used", "final_amount"}
  "count_tokens": {"input_tokens", "compose", "budget_used", "final_amount"}
where
* "usage" is {"input_tokens", "output_tokens", "cache_creation_input_tokens",
  "cache_read_input_tokens"}: of the Message (create) or of
  `get_final_message()` (stream, what the SDK accumulates: `message_start`'s,
  then each `message_delta`'s, which overwrite), null when there is none;
* "compose" is the body's extra `compose` field (create, count_tokens) or the
  raw `message_stop` event's (stream; the helper rebuilds that event without
  it, so the raw events are read), null when absent;
* "budget_used"/"final_amount" are the headers `x-compose-key-budget-used`
  and `x-compose-key-final-amount-wei` (null when absent);
* "type" is the body's `type` (`message`, or `error` for a 200 that carries
  an error object, whose `error` is then "error_field");
* "text" of a stream is its text deltas joined, also when the stream then
  failed; "types" the raw events' types in order (`ping` is dropped by the
  SDK, an `error` event raises).
A call that fails makes its section {"error": {"status", "body"}} (with the
partial stream keys kept; an `event: error` in a stream is status 200 with
the event's JSON as body), plus "exception"/"message" when it was not an HTTP
error (a cut connection); the top-level "error" is the first such error, null
when none.
"""
import argparse
import json
import os
import sys

# Only the arguments count: no key, base URL or headers from the environment.
for name in list(os.environ):
    if name.startswith("ANTHROPIC_"):
        del os.environ[name]

from anthropic import Anthropic, APIError, APIStatusError  # noqa: E402

MESSAGES = [{"role": "user", "content": "hello from python"}]


def extra(model, name):
    """The extra (not modelled) field `name` of an SDK object, or None."""
    if model is None:
        return None
    found = (getattr(model, "model_extra", None) or {}).get(name)
    if found is None and hasattr(model, "to_dict"):
        found = model.to_dict().get(name)
    return found


def headers_of(headers):
    return {
        "budget_used": headers.get("x-compose-key-budget-used"),
        "final_amount": headers.get("x-compose-key-final-amount-wei"),
    }


def error_of(e):
    """An exception as the report's {"status", "body"} (+ what it was)."""
    if isinstance(e, APIStatusError):
        return {"status": e.status_code, "body": e.body}
    report = {"status": None, "body": getattr(e, "body", None) if isinstance(e, APIError) else None}
    report["exception"] = type(e).__name__
    report["message"] = str(e)
    return report


def tap(raw_stream, seen):
    """Keeps every raw event `raw_stream` yields in `seen` (extra fields
    included: the stream helper rebuilds `message_stop` without them)."""
    inner = raw_stream._iterator

    def events():
        for event in inner:
            seen.append(event)
            yield event

    raw_stream._iterator = events()


def usage_of(usage):
    if usage is None:
        return None
    usage = usage.to_dict() if hasattr(usage, "to_dict") else usage
    return {
        name: usage.get(name)
        for name in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    }


def run_create(client, model, max_tokens):
    raw = client.messages.with_raw_response.create(model=model, max_tokens=max_tokens, messages=MESSAGES)
    message = raw.parse()
    # Read from the dict: a 200 that carries an error object parses into a
    # Message without the message's fields.
    data = message.to_dict()
    return {
        "id": data.get("id"),
        "model": data.get("model"),
        "text": "".join(block.get("text", "") for block in data.get("content") or [] if block.get("type") == "text"),
        "stop_reason": data.get("stop_reason"),
        "usage": usage_of(data.get("usage")),
        "type": data.get("type"),
        "error_field": data.get("error"),
        "compose": extra(message, "compose"),
        **headers_of(raw.headers),
    }


def run_stream(client, model, max_tokens):
    report = {"text": "", "types": [], "stop_reason": None, "usage": None, "compose": None}
    raw_events = []
    try:
        with client.messages.stream(model=model, max_tokens=max_tokens, messages=MESSAGES) as stream:
            report.update(headers_of(stream.response.headers))
            tap(stream._raw_stream, raw_events)
            for event in stream:
                if event.type == "text":
                    report["text"] += event.text
            final = stream.get_final_message()
            report["stop_reason"] = final.stop_reason
            report["usage"] = usage_of(final.usage)
    except Exception as e:  # noqa: BLE001 (a cut stream is an httpx error)
        report["error"] = error_of(e)
    report["types"] = [event.type for event in raw_events]
    stops = [event for event in raw_events if event.type == "message_stop"]
    report["compose"] = extra(stops[-1], "compose") if stops else None
    return report


def run_count_tokens(client, model):
    raw = client.messages.with_raw_response.count_tokens(model=model, messages=MESSAGES)
    count = raw.parse()
    return {
        "input_tokens": count.to_dict().get("input_tokens"),
        "compose": extra(count, "compose"),
        **headers_of(raw.headers),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["messages", "count_tokens"])
    parser.add_argument("base_url")
    parser.add_argument("key")
    parser.add_argument("model")
    parser.add_argument("max_tokens", nargs="?", type=int, default=1024)
    parser.add_argument("--auth", choices=["x-api-key", "bearer"], default="x-api-key")
    parser.add_argument("--only", choices=["create", "stream"])
    args = parser.parse_args()
    if args.auth == "bearer":
        client = Anthropic(base_url=args.base_url, auth_token=args.key, max_retries=0, timeout=30)
    else:
        client = Anthropic(
            base_url=args.base_url, default_headers={"X-Api-Key": args.key}, max_retries=0, timeout=30
        )

    if args.command == "count_tokens":
        sections = {"count_tokens": lambda: run_count_tokens(client, args.model)}
    else:
        sections = {
            "create": lambda: run_create(client, args.model, args.max_tokens),
            "stream": lambda: run_stream(client, args.model, args.max_tokens),
        }
        if args.only:
            sections = {args.only: sections[args.only]}

    report, first_error = {}, None
    for name, run in sections.items():
        try:
            report[name] = run()
        except APIError as e:
            report[name] = {"error": error_of(e)}
        first_error = first_error or report[name].get("error")
    report["error"] = first_error
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
