"""The official OpenAI Python client against Tollgate's /external/v1, unchanged.

Usage: openai_client.py BASE_URL COMPOSE_KEY. Prints one JSON report that
tests/paid_api.rs checks: a plain call, a streamed call, a streamed call with
stream_options=None and tools, the model list, and a call the budget cannot
cover (402).
"""
import json
import sys

from openai import APIStatusError, OpenAI

base_url, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)
messages = [{"role": "user", "content": "hello from python"}]

raw = client.chat.completions.with_raw_response.create(model="echo", messages=messages)
completion = raw.parse()
plain = {
    "content": completion.choices[0].message.content,
    "completion_tokens": completion.usage.completion_tokens,
    "final_amount": raw.headers["x-compose-key-final-amount-wei"],
}

text, usage, compose = "", None, None
for chunk in client.chat.completions.create(
    model="echo", messages=messages, stream=True, stream_options={"include_usage": True}
):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage
        compose = (chunk.model_extra or {}).get("compose")
stream = {
    "content": text,
    "completion_tokens": usage.completion_tokens if usage else None,
    "final_amount": compose["finalAmountWei"] if compose else None,
}

# stream_options=None (the client sends null) with tools, through an
# OpenAI-compatible upstream: the gateway still asks the upstream for usage
# and charges by it; the client gets no usage chunk, but `compose` at the end.
tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
text, compose, usage_chunks = "", None, 0
for chunk in client.chat.completions.create(
    model="mock_ok", messages=messages, stream=True, stream_options=None, tools=tools, max_tokens=3
):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage_chunks += 1
    compose = (chunk.model_extra or {}).get("compose") or compose
no_usage_asked = {
    "content": text,
    "usage_chunks": usage_chunks,
    "final_amount": compose["finalAmountWei"] if compose else None,
}

models = sorted(model.id for model in client.models.list())

error = None
try:
    client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": " ".join(["w"] * 5000)}]
    )
except APIStatusError as e:
    error = {"status": e.status_code, "code": (e.body or {}).get("code")}

print(json.dumps({"plain": plain, "stream": stream, "no_usage_asked": no_usage_asked,
                  "models": models, "error": error}))
