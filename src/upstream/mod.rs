//! Upstream models: the built-in `echo` model and remote APIs.
//!
//! * [`Api`] — the APIs a paid call speaks (chat completions, responses,
//!   messages, embeddings). The gateway does not translate: a call reaches
//!   its upstream in the API the client spoke, so one `Api` names both the
//!   client's wire format and the upstream's.
//! * [`echo`] — deterministic, in process: answers every API with the last
//!   message's words, one token per word, and reports exact usage.
//! * [`remote`] — an OpenAI or Anthropic base URL over a pooled HTTP client;
//!   streams pass through event by event.
//! * [`sse`] — the Server-Sent Events reader for upstream streams.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use ledger::pricing::Tokens;
use serde::Deserialize;
use serde_json::{Map, Value};

pub mod echo;
pub mod remote;
pub mod sse;

/// An API a paid call speaks, on both sides of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// OpenAI chat completions.
    Chat,
    /// OpenAI's Responses API.
    Responses,
    /// Anthropic Messages.
    Messages,
    /// OpenAI embeddings (input tokens only).
    Embeddings,
}

impl Api {
    pub const ALL: [Api; 4] = [Api::Chat, Api::Responses, Api::Messages, Api::Embeddings];

    /// Its name in model listings and errors.
    pub fn name(self) -> &'static str {
        match self {
            Api::Chat => "chat.completions",
            Api::Responses => "responses",
            Api::Messages => "messages",
            Api::Embeddings => "embeddings",
        }
    }

    /// Tollgate's endpoint for it.
    pub fn endpoint(self) -> &'static str {
        match self {
            Api::Chat => "/external/v1/chat/completions",
            Api::Responses => "/external/v1/responses",
            Api::Messages => "/external/v1/messages",
            Api::Embeddings => "/external/v1/embeddings",
        }
    }

    /// The upstream's path for it, after the base URL.
    fn path(self) -> &'static str {
        match self {
            Api::Chat => "/chat/completions",
            Api::Responses => "/responses",
            Api::Messages => "/messages",
            Api::Embeddings => "/embeddings",
        }
    }

    /// The protocol an upstream must speak to serve it.
    pub fn protocol(self) -> WireProtocol {
        match self {
            Api::Messages => WireProtocol::Anthropic,
            Api::Chat | Api::Responses | Api::Embeddings => WireProtocol::OpenAi,
        }
    }

    /// Whether a stream event is the stream's last (Responses:
    /// `response.completed`, `.incomplete`, `.failed`; Messages:
    /// `message_stop`). Chat streams end with `[DONE]` instead.
    pub fn is_terminal(self, event: &Value) -> bool {
        let kind = event.get("type").and_then(Value::as_str);
        match self {
            Api::Responses => matches!(
                kind,
                Some("response.completed" | "response.incomplete" | "response.failed")
            ),
            Api::Messages => kind == Some("message_stop"),
            Api::Chat | Api::Embeddings => false,
        }
    }

    /// The message of a stream event that reports an error: an `error`
    /// event (`{"type": "error", …}`, Responses and Messages), or a chunk
    /// with an `error` object and no `type` (chat servers).
    pub fn stream_error(event: &Value) -> Option<String> {
        let error = event.get("error").filter(|e| !e.is_null());
        let kind = event.get("type").and_then(Value::as_str);
        if kind != Some("error") && (kind.is_some() || error.is_none()) {
            return None;
        }
        let message = error
            .and_then(|e| e.get("message"))
            .or_else(|| event.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("error");
        Some(message.to_owned())
    }
}

/// What a model's upstream speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireProtocol {
    /// OpenAI's API: `/chat/completions`, `/responses`, `/embeddings`,
    /// with `Authorization: Bearer`.
    #[default]
    OpenAi,
    /// Anthropic's API: `/messages`, `/messages/count_tokens`, with
    /// `x-api-key` and `anthropic-version`.
    Anthropic,
}

/// Token counts an upstream reported (or the gateway counted). The cached
/// and cache-written counts are parts of `prompt_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// All input tokens, the cached and cache-written ones included.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of `prompt_tokens`, those read from the upstream's prompt cache
    /// (OpenAI's `prompt_tokens_details.cached_tokens`).
    pub cached_tokens: u64,
    /// Of `prompt_tokens`, those written to the upstream's prompt cache
    /// (`prompt_tokens_details.cache_write_tokens` where an upstream says).
    pub cache_write_tokens: u64,
}

impl Usage {
    /// Counts whose cache parts never exceed the input.
    pub fn new(prompt: u64, completion: u64, cached: u64, cache_write: u64) -> Usage {
        let cached = cached.min(prompt);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: cached,
            cache_write_tokens: cache_write.min(prompt - cached),
        }
    }

    /// `usage` from an OpenAI chat body or chunk, if it has one.
    pub fn from_json(value: &Value) -> Option<Usage> {
        value.get("usage").and_then(Usage::from_usage)
    }

    /// A chat `usage` object's counts: whole numbers, also when written as
    /// floats (`7.0`, as some servers do).
    pub fn from_usage(usage: &Value) -> Option<Usage> {
        let details = |field: &str| {
            usage
                .pointer(&format!("/prompt_tokens_details/{field}"))
                .and_then(token_count)
                .unwrap_or(0)
        };
        Some(Usage::new(
            token_count(usage.get("prompt_tokens")?)?,
            token_count(usage.get("completion_tokens")?)?,
            details("cached_tokens"),
            details("cache_write_tokens"),
        ))
    }

    /// A Responses `usage` object (`input_tokens`, `output_tokens`,
    /// `input_tokens_details.cached_tokens`).
    pub fn from_responses(usage: &Value) -> Option<Usage> {
        Some(Usage::new(
            token_count(usage.get("input_tokens")?)?,
            token_count(usage.get("output_tokens")?)?,
            usage
                .pointer("/input_tokens_details/cached_tokens")
                .and_then(token_count)
                .unwrap_or(0),
            0,
        ))
    }

    /// An Anthropic `usage` object: `input_tokens` excludes the cache reads
    /// and writes, which are added to the input here.
    pub fn from_messages(usage: &Value) -> Option<Usage> {
        let count = |field: &str| usage.get(field).and_then(token_count).unwrap_or(0);
        let input = token_count(usage.get("input_tokens")?)?;
        let (read, write) = (
            count("cache_read_input_tokens"),
            count("cache_creation_input_tokens"),
        );
        Some(Usage::new(
            input.saturating_add(read).saturating_add(write),
            // `message_start` may count no output yet.
            usage.get("output_tokens").map_or(Some(0), token_count)?,
            read,
            write,
        ))
    }

    /// The usage of a non-streamed answer in `api`'s format.
    pub fn of_answer(api: Api, body: &Map<String, Value>) -> Option<Usage> {
        let usage = body.get("usage")?;
        match api {
            Api::Chat => Usage::from_usage(usage),
            Api::Responses => Usage::from_responses(usage),
            Api::Messages => Usage::from_messages(usage),
            Api::Embeddings => Some(Usage::new(
                token_count(usage.get("prompt_tokens")?)?,
                0,
                0,
                0,
            )),
        }
    }

    /// The usage of billed `tokens`.
    pub fn of_tokens(tokens: Tokens) -> Usage {
        Usage {
            prompt_tokens: tokens.input(),
            completion_tokens: tokens.output(),
            cached_tokens: tokens.cached(),
            cache_write_tokens: tokens.cache_write(),
        }
    }

    /// Chat's `usage` object; `prompt_tokens_details` only when some input
    /// tokens were cached or written to a cache.
    pub fn to_json(self) -> Value {
        let mut usage = serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens.saturating_add(self.completion_tokens),
        });
        if self.cached_tokens > 0 || self.cache_write_tokens > 0 {
            let mut details = serde_json::json!({"cached_tokens": self.cached_tokens});
            if self.cache_write_tokens > 0 {
                details["cache_write_tokens"] = self.cache_write_tokens.into();
            }
            usage["prompt_tokens_details"] = details;
        }
        usage
    }
}

/// A token count: a non-negative whole number, as an integer or a float
/// with nothing after the point (at most 2^53, where floats stay exact).
fn token_count(value: &Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    let f = value.as_f64()?;
    (f >= 0.0 && f.fract() == 0.0 && f <= 9_007_199_254_740_992.0).then_some(f as u64)
}

/// What a call asks of an upstream, after the gateway fixed its maximum.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// The API the call speaks.
    pub api: Api,
    /// The client's body as received (model, messages, options).
    pub body: Map<String, Value>,
    /// The output bound the budget affords; always sent upstream, in every
    /// field the model's upstream honours (none for embeddings).
    pub max_tokens: u64,
    /// A unique id for the call (the gateway's request id).
    pub request_id: String,
    /// Client headers passed through (`anthropic-version`, `anthropic-beta`).
    pub pass_headers: Vec<(&'static str, String)>,
}

/// A non-streamed answer.
#[derive(Debug)]
pub struct Completion {
    pub body: Map<String, Value>,
    pub usage: Option<Usage>,
}

/// One streamed chunk: its JSON, as parsed, and the upstream's own bytes
/// for it (passed on as they came, not serialized again).
#[derive(Debug)]
pub struct Chunk {
    pub json: Value,
    pub raw: Option<Bytes>,
}

/// The fields of a streamed delta that carry generated output a client
/// receives (and an upstream bills as output tokens).
const OUTPUT_TEXT_FIELDS: [&str; 4] = ["content", "reasoning_content", "reasoning", "refusal"];

/// The bytes of generated output in `choices`: every text field of each
/// choice's `part` (`delta` in a streamed chunk, `message` in an answer)
/// and its tool calls' names and arguments. The estimate of output tokens
/// when an upstream reports no usage: a token covers at least one byte, so
/// bytes never undercount.
pub fn output_bytes_of(choices: Option<&Value>, part: &str) -> u64 {
    let Some(choices) = choices.and_then(Value::as_array) else {
        return 0;
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map_or(0, |s| s.len() as u64);
    choices
        .iter()
        .filter_map(|choice| choice.get(part))
        .map(|delta| {
            let fields: u64 = OUTPUT_TEXT_FIELDS.iter().map(|f| text(delta.get(*f))).sum();
            let known = fields + tool_bytes(delta, &text);
            if known > 0 {
                return known;
            }
            // Output in a shape not listed (content parts, a legacy
            // `function_call`, audio transcripts, …): its JSON size, so
            // nothing delivered is free.
            match delta {
                Value::Object(map) => map
                    .iter()
                    .filter(|(k, v)| k.as_str() != "role" && !is_empty(v))
                    .map(|(k, v)| (k.len() + serde_json::to_vec(v).map_or(0, |b| b.len())) as u64)
                    .sum(),
                _ => 0,
            }
        })
        .sum()
}

/// `null`, `""`, `[]` or `{}`: no output.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The bytes of a delta's tool calls: their names and arguments.
fn tool_bytes(delta: &Value, text: &dyn Fn(Option<&Value>) -> u64) -> u64 {
    delta
        .get("tool_calls")
        .and_then(Value::as_array)
        .map_or(0, |calls| {
            calls
                .iter()
                .map(|call| {
                    text(call.pointer("/function/arguments")) + text(call.pointer("/function/name"))
                })
                .sum()
        })
}

impl Chunk {
    /// The bytes of generated output this chunk delivers (see
    /// [`output_bytes_of`]).
    pub fn output_bytes(&self) -> u64 {
        output_bytes_of(self.json.get("choices"), "delta")
    }

    /// Whether it carries choices (anything for the client besides usage).
    pub fn has_choices(&self) -> bool {
        self.json
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|choices| !choices.is_empty())
    }

    /// Takes the chunk's `usage` out (it is reported once, at the end); the
    /// chunk is then passed on re-serialized.
    pub fn take_usage(&mut self) -> Option<Usage> {
        let usage = Usage::from_json(&self.json)?;
        if let Value::Object(map) = &mut self.json {
            map.remove("usage");
        }
        self.raw = None;
        Some(usage)
    }

    /// The chunk's JSON text: the upstream's bytes when there are some.
    pub fn to_bytes(&self) -> Bytes {
        match &self.raw {
            Some(raw) => raw.clone(),
            None => Bytes::from(serde_json::to_vec(&self.json).unwrap_or_default()),
        }
    }
}

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, UpstreamError>> + Send>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_counts_are_read_from_the_prompt_details() {
        let usage = serde_json::json!({"prompt_tokens": 2006, "completion_tokens": 300,
            "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0}});
        let read = Usage::from_usage(&usage).unwrap();
        assert_eq!(
            read,
            Usage {
                prompt_tokens: 2006,
                completion_tokens: 300,
                cached_tokens: 1920,
                cache_write_tokens: 0,
            }
        );
        assert_eq!(
            read.to_json()["prompt_tokens_details"]["cached_tokens"],
            1920
        );
        let written = serde_json::json!({"prompt_tokens": 10, "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": 4.0, "cache_write_tokens": 6}});
        let read = Usage::from_usage(&written).unwrap();
        assert_eq!((read.cached_tokens, read.cache_write_tokens), (4, 6));
        for details in [
            serde_json::Value::Null,
            serde_json::json!({"cached_tokens": null}),
            serde_json::json!({"cached_tokens": -3}),
        ] {
            let usage = serde_json::json!({"prompt_tokens": 10, "completion_tokens": 1,
                                           "prompt_tokens_details": details});
            let read = Usage::from_usage(&usage).unwrap();
            assert_eq!(
                (read.cached_tokens, read.cache_write_tokens),
                (0, 0),
                "{usage}"
            );
            assert!(read.to_json().get("prompt_tokens_details").is_none());
        }
    }

    #[test]
    fn output_bytes_count_every_delivered_field() {
        let choices = serde_json::json!([
            {"delta": {"role": "assistant", "content": ""}},
            {"delta": {"content": "hello"}},
            {"delta": {"reasoning_content": "think"}},
            {"delta": {"tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}},
            {"delta": {"function_call": {"arguments": "xy"}}},
        ]);
        // 5 + 5 + (1 + 2), and the legacy function_call by its JSON size.
        let legacy = ("function_call".len() + r#"{"arguments":"xy"}"#.len()) as u64;
        assert_eq!(output_bytes_of(Some(&choices), "delta"), 13 + legacy);
        let role_only = serde_json::json!([{"delta": {"role": "assistant", "content": null}}]);
        assert_eq!(output_bytes_of(Some(&role_only), "delta"), 0);
    }

    #[test]
    fn holds_count_the_whole_body_and_media_parts() {
        let upstream = Upstream::Remote(remote::RemoteUpstream {
            client: remote::ClientConfig {
                connect_timeout: std::time::Duration::from_secs(1),
            },
            base_url: "http://127.0.0.1:1/v1".into(),
            upstream_model: "m".into(),
            api_key: None,
            timeout: std::time::Duration::from_secs(1),
            max_tokens_fields: vec!["max_tokens".into()],
            protocol: WireProtocol::OpenAi,
            allow_store: false,
        });
        let Value::Object(body) = serde_json::json!({
            "model": "m",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
            ]}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
        }) else {
            unreachable!()
        };
        let bytes = serde_json::to_vec(&body).unwrap().len() as u64;
        assert_eq!(
            upstream.prompt_tokens_max(Api::Chat, &body),
            bytes + MEDIA_PART_TOKENS_MAX
        );
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("the upstream answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the upstream could not be reached: {0}")]
    Transport(String),
    #[error("the upstream's answer is not valid: {0}")]
    Protocol(String),
}

/// One configured model's upstream.
pub enum Upstream {
    Echo(echo::Echo),
    Remote(remote::RemoteUpstream),
}

impl Upstream {
    /// An upper bound on the prompt's tokens: exact for `echo` (words).
    /// For other models: the UTF-8 bytes of the whole body as JSON (every
    /// field the upstream may bill — messages, tools, schemas — and a token
    /// covers at least one byte), plus [`MEDIA_PART_TOKENS_MAX`] for each
    /// media part (an image or audio part is billed by what it shows, not by
    /// the bytes of its URL).
    pub fn prompt_tokens_max(&self, api: Api, body: &Map<String, Value>) -> u64 {
        match self {
            Upstream::Echo(_) => echo::prompt_words(api, body),
            Upstream::Remote(_) => {
                let bytes = serde_json::to_vec(body).map_or(0, |b| b.len() as u64);
                let media = body.values().map(media_parts).sum::<u64>();
                bytes.saturating_add(media.saturating_mul(MEDIA_PART_TOKENS_MAX))
            }
        }
    }

    pub async fn complete(&self, request: &UpstreamRequest) -> Result<Completion, UpstreamError> {
        match self {
            Upstream::Echo(echo) => Ok(echo.complete(request)),
            Upstream::Remote(upstream) => upstream.complete(request).await,
        }
    }

    pub async fn stream(&self, request: &UpstreamRequest) -> Result<ChunkStream, UpstreamError> {
        match self {
            Upstream::Echo(echo) => Ok(echo.stream(request)),
            Upstream::Remote(upstream) => upstream.stream(request).await,
        }
    }

    /// Anthropic's `count_tokens`: the upstream's count of a Messages
    /// request's input (`echo`: its words). Free: no budget is touched.
    pub async fn count_tokens(&self, request: &UpstreamRequest) -> Result<Value, UpstreamError> {
        match self {
            Upstream::Echo(_) => Ok(serde_json::json!({
                "input_tokens": echo::prompt_words(Api::Messages, &request.body)
            })),
            Upstream::Remote(upstream) => upstream.count_tokens(request).await,
        }
    }

    /// Whether this upstream serves `api` (`echo` serves every one).
    pub fn serves(&self, api: Api) -> bool {
        match self {
            Upstream::Echo(_) => true,
            Upstream::Remote(upstream) => upstream.protocol == api.protocol(),
        }
    }
}

/// What a hold counts for one image, audio or file part: above what the
/// large providers bill for one (a high-detail image is under 2,000 tokens
/// at OpenAI, audio about 10 a second) with room for longer media.
pub const MEDIA_PART_TOKENS_MAX: u64 = 25_000;

/// The content part types that carry media, in every API: chat
/// (`image_url`, `input_audio`, `file`), Responses (`input_image`,
/// `input_file`, `input_audio`) and Messages (`image`, `document`).
const MEDIA_PART_TYPES: [&str; 7] = [
    "image_url",
    "input_audio",
    "file",
    "input_image",
    "input_file",
    "image",
    "document",
];

/// Media parts anywhere in `value`. Bounded by the body's size, which the
/// HTTP layer caps; JSON nesting is capped by the parser.
fn media_parts(value: &Value) -> u64 {
    match value {
        Value::Array(items) => items.iter().map(media_parts).sum(),
        Value::Object(map) => {
            let own = map
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| MEDIA_PART_TYPES.contains(&t));
            u64::from(own) + map.values().map(media_parts).sum::<u64>()
        }
        _ => 0,
    }
}

/// The text of a message's `content`: a string, or the `text` of its parts.
pub fn content_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}
