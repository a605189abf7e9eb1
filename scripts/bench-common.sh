# Shared by scripts/bench-gateway and scripts/bench-embedded (sourced, not
# run): the bench models and a funded key. Expects `$bin` (the release build
# folder) to be set.

# The bench's models on the mock upstream at port $1, priced alike: chat's
# `mock_ok` (plain calls, at most 5 words) and `quirk_max_tokens` (streams
# one chunk per `max_tokens`); `resp_bench` (Responses, the mock's
# `resp_long`) and `msg_bench` (Messages, protocol anthropic, the mock's
# `msg_long`), each answering as many words as asked, a delta each.
export_bench_models() {
  local model
  for model in MOCK_OK QUIRK_MAX_TOKENS RESP_BENCH MSG_BENCH; do
    export "TOLLGATE__MODELS__${model}__UPSTREAM=http://127.0.0.1:$1/v1"
    export "TOLLGATE__MODELS__${model}__PRICE_VERSION=bench"
    export "TOLLGATE__MODELS__${model}__INPUT_ATOMIC_PER_MILLION=1000000"
    export "TOLLGATE__MODELS__${model}__OUTPUT_ATOMIC_PER_MILLION=2000000"
    export "TOLLGATE__MODELS__${model}__API_KEY=sk-bench"
  done
  export TOLLGATE__MODELS__MOCK_OK__MAX_OUTPUT_TOKENS=16
  export TOLLGATE__MODELS__QUIRK_MAX_TOKENS__MAX_OUTPUT_TOKENS=64
  export TOLLGATE__MODELS__RESP_BENCH__UPSTREAM_MODEL=resp_long
  export TOLLGATE__MODELS__RESP_BENCH__MAX_OUTPUT_TOKENS=64
  export TOLLGATE__MODELS__MSG_BENCH__UPSTREAM_MODEL=msg_long
  export TOLLGATE__MODELS__MSG_BENCH__PROTOCOL=anthropic
  export TOLLGATE__MODELS__MSG_BENCH__MAX_OUTPUT_TOKENS=64
}

# A funded wallet (Anvil's public dev account signs in) and a key with a
# large budget, on the gateway at port $1 running in folder $2 (its store at
# URL $3 when not the folder's own); prints the key's token.
bench_wallet=0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266
make_key() {
  local b="http://127.0.0.1:$1" dir="$2" nonce session
  nonce=$(curl -sf "$b/api/sessions/nonce" | jq -r .nonce)
  (cd "$dir" && "$bin/tollgate" siwe-sign --nonce "$nonce" --domain "127.0.0.1:$1") >"$dir/signin.json"
  session=$(curl -sf -X POST "$b/api/sessions" -H 'content-type: application/json' -d @"$dir/signin.json" | jq -r .token)
  (cd "$dir" && env ${3:+TOLLGATE__STORE__URL=$3} "$bin/tollgate" credit "$bench_wallet" 1000000000000 >/dev/null)
  curl -sf -X POST "$b/api/keys" -H "authorization: Bearer $session" \
    -H "x-session-user-address: $bench_wallet" -H 'x-chain-id: 43113' -H 'content-type: application/json' \
    -d '{"budgetLimit": 1000000000000, "name": "bench"}' | jq -r .token
}
