"""The official OpenAI Python client (tests/requirements.txt) on the Responses
API and embeddings, unchanged: what a client of Tollgate's /external/v1 sees.

Usage:
  responses_client.py responses BASE_URL KEY MODEL [MAX_OUTPUT_TOKENS] [--only create|stream]
  responses_client.py embeddings BASE_URL KEY MODEL

BASE_URL is what `openai.OpenAI(base_url=...)` takes: `…/external/v1` on the
gateway, `…/v1` on the mock upstream. Prints ONE JSON object on stdout and
exits 0, also when the API answers an error (tests/mock_protocols.rs and the
gateway's tests assert on it):

`responses` runs `create` (`client.responses.with_raw_response.create`) and
then `stream` (`client.responses.stream`, the helper that checks and
accumulates the typed events); `--only` runs one of them. Sections:
  "create": {"text", "status", "usage", "error_field", "incomplete_reason",
             "compose", "budget_used", "final_amount"}
  "stream": {"text", "types", "sequence_numbers", "terminal", "status",
             "usage", "error_field", "incomplete_reason", "compose",
             "response_compose", "final_text", "budget_used", "final_amount"}
`embeddings` runs `client.embeddings.with_raw_response.create(input=["a", "b"])`
(the SDK asks for base64 and decodes it):
  "embeddings": {"model", "count", "vectors", "usage", "compose",
                 "budget_used", "final_amount"}
where
* "usage" is {"input_tokens", "output_tokens", "cached_tokens",
  "total_tokens"} (Responses) or {"prompt_tokens", "total_tokens"}
  (embeddings), or null;
* "compose" is the body's extra `compose` field (create, embeddings) or the
  LAST raw stream event's (stream), null when absent; "response_compose" is
  the extra `compose` field of the `response` in the stream's terminal event;
* "budget_used"/"final_amount" are the headers `x-compose-key-budget-used`
  and `x-compose-key-final-amount-wei` (null when absent);
* "text" of a stream is its `response.output_text.delta`s joined, also when
  the stream then failed; "types" the raw events' types in order;
  "terminal" the type of the last raw event; "final_text" is
  `get_final_response().output_text` after a `response.completed`, else null;
* "error_field" is the Response's `error` (e.g. of a failed response, or the
  error object of a 200 that carries one), "incomplete_reason" its
  `incomplete_details.reason`.
A call that fails makes its section {"error": {"status", "body"}} (with the
partial stream keys kept), plus "exception"/"message" when it was not an HTTP
error (a cut connection); the top-level "error" is the first such error, null
when none.
"""
import argparse
import json
import os
import sys

# Only the arguments count: no key, base URL or headers from the environment.
for name in list(os.environ):
    if name.startswith("OPENAI_"):
        del os.environ[name]

import openai  # noqa: E402
from openai import APIError, APIStatusError, OpenAI  # noqa: E402

PROMPT = "hello from python"


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
    included: the stream helper rebuilds some events without them)."""
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
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "cached_tokens": (usage.get("input_tokens_details") or {}).get("cached_tokens"),
        "total_tokens": usage.get("total_tokens"),
    }


def response_fields(response):
    """What a Response says, read from its dict: a 200 that carries an error
    object instead parses into a Response without the other fields."""
    data = response.to_dict() if response is not None else {}
    text = "".join(
        part.get("text", "")
        for item in data.get("output") or []
        if item.get("type") == "message"
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    )
    return {
        "text": text,
        "status": data.get("status"),
        "usage": usage_of(data.get("usage")),
        "error_field": data.get("error"),
        "incomplete_reason": (data.get("incomplete_details") or {}).get("reason"),
    }


def run_create(client, model, max_output_tokens):
    raw = client.responses.with_raw_response.create(
        model=model, input=PROMPT, max_output_tokens=max_output_tokens
    )
    response = raw.parse()
    report = response_fields(response)
    if report["status"] is not None:
        # The SDK's own reading agrees with the dict's.
        assert response.output_text == report["text"], (response.output_text, report["text"])
    report["compose"] = extra(response, "compose")
    report.update(headers_of(raw.headers))
    return report


def run_stream(client, model, max_output_tokens):
    report = {"text": "", "types": [], "sequence_numbers": [], "terminal": None, "final_text": None}
    raw_events = []
    try:
        with client.responses.stream(model=model, input=PROMPT, max_output_tokens=max_output_tokens) as stream:
            report.update(headers_of(stream._raw_stream.response.headers))
            tap(stream._raw_stream, raw_events)
            for event in stream:
                if event.type == "response.output_text.delta":
                    report["text"] += event.delta
            if raw_events and raw_events[-1].type == "response.completed":
                report["final_text"] = stream.get_final_response().output_text
    except Exception as e:  # noqa: BLE001 (a cut stream is an httpx error)
        report["error"] = error_of(e)
    report["types"] = [event.type for event in raw_events]
    report["sequence_numbers"] = [getattr(event, "sequence_number", None) for event in raw_events]
    last = raw_events[-1] if raw_events else None
    report["terminal"] = last.type if last is not None else None
    report["compose"] = extra(last, "compose")
    terminal_response = getattr(last, "response", None)
    fields = response_fields(terminal_response) if terminal_response is not None else {
        "status": None, "usage": None, "error_field": None, "incomplete_reason": None}
    fields.pop("text", None)
    report.update(fields)
    report["response_compose"] = extra(terminal_response, "compose")
    return report


def run_embeddings(client, model):
    raw = client.embeddings.with_raw_response.create(model=model, input=["a", "b"])
    embeddings = raw.parse()
    usage = embeddings.usage
    return {
        "model": embeddings.model,
        "count": len(embeddings.data),
        "vectors": [list(item.embedding) for item in embeddings.data],
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens} if usage else None,
        "compose": extra(embeddings, "compose"),
        **headers_of(raw.headers),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["responses", "embeddings"])
    parser.add_argument("base_url")
    parser.add_argument("key")
    parser.add_argument("model")
    parser.add_argument("max_output_tokens", nargs="?", type=int, default=None)
    parser.add_argument("--only", choices=["create", "stream"])
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.key, max_retries=0, timeout=30)
    max_output_tokens = args.max_output_tokens if args.max_output_tokens is not None else openai.omit

    if args.command == "embeddings":
        sections = {"embeddings": lambda: run_embeddings(client, args.model)}
    else:
        sections = {
            "create": lambda: run_create(client, args.model, max_output_tokens),
            "stream": lambda: run_stream(client, args.model, max_output_tokens),
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
