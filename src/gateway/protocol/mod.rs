//! The APIs of the paid path, each in one file: what a request may hold,
//! how its upstream reports usage, and the shapes of a paid answer.
//!
//! * [`chat`] — OpenAI chat completions.
//! * [`responses`] — OpenAI's Responses API.
//! * [`messages`] — Anthropic Messages (and `count_tokens`).
//! * [`embeddings`] — OpenAI embeddings.
//!
//! Each turns a body into a [`Parsed`] request (bad input: a 400 naming the
//! field, before any budget is touched); the gateway runs every API alike.
//! A stream's events pass through a [`StreamMeter`], which reads the usage
//! the upstream reports in the API's own events, counts what was delivered
//! (the estimate when no usage comes), and holds back the event that goes
//! last so the call's charge can be added to it.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::call::{Metered, Receipt};
use super::error::CallFailure;
use crate::upstream::{output_bytes_of, Chunk, Usage};

pub use crate::upstream::Api;

pub mod chat;
pub mod embeddings;
pub mod messages;
pub mod responses;

/// A paid request, checked: what the gateway needs of any API.
#[derive(Debug)]
pub struct Parsed {
    pub api: Api,
    pub model: String,
    pub stream: bool,
    /// The output bound the client asked for (`None`: the model's).
    pub max_tokens: Option<u64>,
    /// Chat only: the client asked for a usage chunk.
    pub wants_usage: bool,
    /// The body as received; the upstream gets it with its bound set.
    pub body: Map<String, Value>,
}

impl Parsed {
    /// `body` as a request of `api`.
    pub fn of(api: Api, body: Map<String, Value>) -> Result<Parsed, CallFailure> {
        match api {
            Api::Chat => Ok(chat::ChatRequest::parse(body)?.parsed()),
            Api::Responses => responses::parse(body),
            Api::Messages => messages::parse(body),
            Api::Embeddings => embeddings::parse(body),
        }
    }

    /// Refuses a field the API does not forward and the model's
    /// `forward_fields` does not name (400, naming it), and — in Responses
    /// and Messages — a tool the upstream runs and bills on its own
    /// (`tools[type=web_search]`), unless `forward_fields` names it so.
    pub fn check_fields(&self, model_fields: &[String]) -> Result<(), CallFailure> {
        let (forwarded, priced): (&[&str], &[&str]) = match self.api {
            Api::Chat => (&chat::FORWARDED_FIELDS, &chat::PRICED_FIELDS),
            Api::Responses => (&responses::FORWARDED_FIELDS, &responses::PRICED_FIELDS),
            Api::Messages => (&messages::FORWARDED_FIELDS, &messages::PRICED_FIELDS),
            Api::Embeddings => (&embeddings::FORWARDED_FIELDS, &[]),
        };
        let allowed =
            |field: &str| forwarded.contains(&field) || model_fields.iter().any(|f| f == field);
        if let Some(field) = self.body.keys().find(|field| !allowed(field)) {
            return Err(CallFailure::UnsupportedParameter {
                field: field.clone(),
                priced: priced.contains(&field.as_str()),
            });
        }
        let billed_tool = match self.api {
            Api::Responses => {
                responses::check_model_fields(&self.body, model_fields)?;
                responses::billed_tool
            }
            Api::Messages => messages::billed_tool,
            Api::Chat | Api::Embeddings => return Ok(()),
        };
        let mut tools: Vec<&Value> = self.body.get("tools").into_iter().collect();
        // Tools and the tools a namespace groups; bounded by the body's size.
        while let Some(list) = tools.pop() {
            for tool in list.as_array().into_iter().flatten() {
                let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
                let field = format!("tools[type={kind}]");
                if billed_tool(kind, tool) && !allowed(&field) {
                    return Err(CallFailure::UnsupportedParameter {
                        field,
                        priced: true,
                    });
                }
                tools.extend(tool.get("tools"));
            }
        }
        Ok(())
    }
}

/// The model name: 1 to 256 characters.
pub fn model_name(body: &Map<String, Value>) -> Result<String, CallFailure> {
    match body.get("model") {
        Some(Value::String(m))
            if !m.is_empty() && m.chars().count() <= chat::MODEL_NAME_MAX_CHARS =>
        {
            Ok(m.clone())
        }
        Some(Value::String(_)) => Err(CallFailure::invalid_param(
            "model",
            format!("must be 1 to {} characters", chat::MODEL_NAME_MAX_CHARS),
        )),
        None | Some(Value::Null) => Err(CallFailure::invalid_param("model", "is required")),
        Some(_) => Err(CallFailure::invalid_param("model", "must be a string")),
    }
}

/// An optional boolean (`null`: false).
fn flag(body: &Map<String, Value>, name: &'static str) -> Result<bool, CallFailure> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(CallFailure::invalid_param(name, "must be a boolean")),
    }
}

/// A required array of 1 to `max` entries.
fn entries<'b>(
    body: &'b Map<String, Value>,
    name: &'static str,
    max: usize,
) -> Result<&'b [Value], CallFailure> {
    match body.get(name) {
        None | Some(Value::Null) => Err(CallFailure::invalid_param(name, "is required")),
        Some(Value::Array(items)) if items.is_empty() => {
            Err(CallFailure::invalid_param(name, "must not be empty"))
        }
        Some(Value::Array(items)) if items.len() > max => Err(CallFailure::invalid_param(
            name,
            format!("must hold at most {max} entries"),
        )),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(CallFailure::invalid_param(name, "must be an array")),
    }
}

/// An optional `tools` array of objects, each with a string `type` (when
/// `typed`).
fn check_tools(body: &Map<String, Value>, typed: bool) -> Result<(), CallFailure> {
    match body.get("tools") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(tools)) => {
            for tool in tools {
                let kind = tool.get("type");
                let ok = tool.is_object()
                    && (kind.is_some_and(Value::is_string) || (!typed && kind.is_none()));
                if !ok {
                    return Err(CallFailure::invalid_param(
                        "tools",
                        "must hold objects, each with a string type",
                    ));
                }
            }
            Ok(())
        }
        Some(_) => Err(CallFailure::invalid_param("tools", "must be an array")),
    }
}

/// One stream event for the framer: its JSON text and, in Responses and
/// Messages, its `type` (the SSE `event:` name their SDKs dispatch on),
/// read from the JSON already parsed rather than parsed again.
#[derive(Debug)]
pub struct SseEvent {
    pub kind: Option<Box<str>>,
    pub json: Bytes,
}

/// What a stream's last event needs when the upstream sent none to build
/// on (chat): its id and model.
pub struct StreamMeta {
    pub id: String,
    pub model: String,
}

/// What to do with one upstream event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Hand it to the client now.
    Forward,
    /// Keep it: it goes last, with the call's charge (chat's usage-only
    /// chunk).
    Hold,
    /// It is the stream's last event, kept to go last with the charge; the
    /// stream is over.
    Last,
}

/// Reads one stream's usage and delivered output, in its API's events.
pub struct StreamMeter {
    api: Api,
    wants_usage: bool,
    /// The usage the upstream reported, as far as it did: chat's last usage
    /// (cumulative where sent on every chunk), Messages' `message_start`
    /// input and its last (cumulative) `message_delta` output, Responses'
    /// terminal event's.
    usage: Option<Usage>,
    /// Whether `usage` is the upstream's full report (Messages: a
    /// `message_delta` came; its `message_start` alone counts no output).
    usage_final: bool,
    /// Bytes of generated output handed on: the estimate without usage.
    output_bytes: u64,
    /// The event that goes last (chat's usage chunk, the terminal event).
    held: Option<Chunk>,
    /// The API's terminal event came.
    ended: bool,
    /// Messages: `message_start` reported the input.
    input_seen: bool,
}

impl StreamMeter {
    pub fn new(api: Api, wants_usage: bool) -> StreamMeter {
        StreamMeter {
            api,
            wants_usage,
            usage: None,
            usage_final: false,
            output_bytes: 0,
            held: None,
            ended: false,
            input_seen: false,
        }
    }

    /// Reads `chunk` (taking out what must not pass, such as chat usage
    /// beside content) and says where it goes.
    pub fn observe(&mut self, mut chunk: Chunk) -> (Step, Option<Chunk>) {
        let step = match self.api {
            Api::Chat => self.observe_chat(&mut chunk),
            Api::Responses => self.observe_responses(&chunk),
            Api::Messages => self.observe_messages(&chunk),
            Api::Embeddings => Step::Forward,
        };
        match step {
            Step::Forward => (step, Some(chunk)),
            Step::Hold | Step::Last => {
                self.held = Some(chunk);
                self.ended |= step == Step::Last;
                (step, None)
            }
        }
    }

    fn observe_chat(&mut self, chunk: &mut Chunk) -> Step {
        if let Some(usage) = Usage::from_json(&chunk.json) {
            self.usage = Some(usage);
            self.usage_final = true;
            if !chunk.has_choices() {
                // Usage only: held back, reported once at the end.
                return Step::Hold;
            }
            // Usage beside content: the content goes on, in order.
            chunk.take_usage();
        }
        self.output_bytes = self.output_bytes.saturating_add(chunk.output_bytes());
        Step::Forward
    }

    fn observe_responses(&mut self, chunk: &Chunk) -> Step {
        self.output_bytes = self.output_bytes.saturating_add(delta_bytes(&chunk.json));
        if !Api::Responses.is_terminal(&chunk.json) {
            return Step::Forward;
        }
        if let Some(usage) = chunk
            .json
            .pointer("/response/usage")
            .and_then(Usage::from_responses)
        {
            self.usage = Some(usage);
            self.usage_final = true;
        }
        Step::Last
    }

    fn observe_messages(&mut self, chunk: &Chunk) -> Step {
        let json = &chunk.json;
        match json.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                self.usage = json
                    .pointer("/message/usage")
                    .and_then(Usage::from_messages);
                self.input_seen = self.usage.is_some();
            }
            Some("message_delta") => {
                if let Some(delta) = json.get("usage").filter(|u| messages::reports_output(u)) {
                    self.usage = Some(messages::cumulative(self.usage, delta));
                    // Without `message_start`'s input the report is not
                    // whole: the input is then estimated at its bound.
                    self.usage_final = self.input_seen;
                }
            }
            Some("content_block_delta") => {
                self.output_bytes = self.output_bytes.saturating_add(delta_bytes(json));
            }
            Some("message_stop") => return Step::Last,
            _ => {}
        }
        Step::Forward
    }

    /// `chunk` as an event for the framer, named in the APIs that name them.
    pub fn event(&self, chunk: &Chunk) -> SseEvent {
        SseEvent {
            kind: kind_of(self.api, &chunk.json),
            json: chunk.to_bytes(),
        }
    }

    /// Whether output reached the client or the upstream counted some.
    pub fn delivered(&self) -> bool {
        self.output_bytes > 0 || (self.usage_final && self.usage.is_some())
    }

    /// Whether the stream ended as its API ends one: chat streams may end
    /// without a mark; Responses and Messages streams end with their
    /// terminal event, and one cut before it failed.
    pub fn ended_well(&self) -> bool {
        self.api == Api::Chat || self.ended
    }

    /// What the call is charged: the upstream's report when it gave one in
    /// full, else an estimate of what was delivered — the input the
    /// upstream reported, or the prompt's bound, and the output's bytes (a
    /// token covers at least one byte), never past the output bound.
    pub fn metered(&self, prompt_tokens_max: u64, max_tokens: u64) -> Metered {
        match self.usage {
            Some(usage) if self.usage_final => Metered::reported(usage),
            partial => {
                let reported_output = partial.map_or(0, |u| u.completion_tokens);
                let input = partial.filter(|_| self.input_seen).unwrap_or(Usage::new(
                    prompt_tokens_max,
                    0,
                    0,
                    0,
                ));
                let output = self.output_bytes.max(reported_output).min(max_tokens);
                Metered::estimated(Usage {
                    completion_tokens: output,
                    ..input
                })
            }
        }
    }

    /// The stream's last event, with the billed usage and `compose`.
    pub fn last_event(self, meta: &StreamMeta, receipt: &Receipt) -> SseEvent {
        let mut json = match (self.api, self.held) {
            (_, Some(chunk)) => chunk.json,
            (Api::Chat, None) => chat::last_chunk(meta),
            (Api::Messages, None) => json!({"type": "message_stop"}),
            (_, None) => json!({}),
        };
        if let Value::Object(map) = &mut json {
            match self.api {
                Api::Chat => chat::set_usage(map, self.wants_usage.then_some(receipt.usage)),
                Api::Responses => {
                    if let Some(Value::Object(response)) = map.get_mut("response") {
                        responses::set_usage(response, receipt.usage);
                    }
                }
                Api::Messages | Api::Embeddings => {}
            }
            map.insert("compose".into(), receipt.compose_json());
        }
        SseEvent {
            kind: kind_of(self.api, &json),
            json: Bytes::from(serde_json::to_vec(&json).unwrap_or_default()),
        }
    }
}

/// An event's SSE name in the APIs that name them: its `type`.
fn kind_of(api: Api, json: &Value) -> Option<Box<str>> {
    match api {
        Api::Responses | Api::Messages => json.get("type").and_then(Value::as_str).map(Box::from),
        Api::Chat | Api::Embeddings => None,
    }
}

/// The bytes of generated text in a `…delta` event: its `delta` string
/// (Responses) or the strings of its `delta` object but its `type`
/// (Messages: `text`, `partial_json`, `thinking`).
fn delta_bytes(event: &Value) -> u64 {
    let is_delta = event
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.ends_with(".delta") || t == "content_block_delta");
    if !is_delta {
        return 0;
    }
    match event.get("delta") {
        Some(Value::String(text)) => text.len() as u64,
        Some(Value::Object(delta)) => delta
            .iter()
            .filter(|(k, _)| k.as_str() != "type")
            .filter_map(|(_, v)| v.as_str())
            .map(|s| s.len() as u64)
            .sum(),
        _ => 0,
    }
}

/// The output in a non-streamed answer, in bytes (the estimate without
/// usage): chat's message fields, Responses' `output`, Messages' `content`.
pub fn answer_output_bytes(api: Api, body: &Map<String, Value>) -> u64 {
    let json_len =
        |v: Option<&Value>| v.map_or(0, |v| serde_json::to_vec(v).map_or(0, |b| b.len() as u64));
    match api {
        Api::Chat => output_bytes_of(body.get("choices"), "message"),
        Api::Responses => json_len(body.get("output")),
        Api::Messages => json_len(body.get("content")),
        Api::Embeddings => 0,
    }
}

/// A non-streamed answer's body as the client gets it: its usage is what
/// was billed (so body, headers and ledger agree), and `compose` added.
pub fn answer_body(api: Api, body: &mut Map<String, Value>, receipt: &Receipt) {
    match api {
        Api::Chat => chat::set_usage(body, Some(receipt.usage)),
        Api::Responses => responses::set_usage(body, receipt.usage),
        Api::Messages => messages::set_usage(body, receipt.usage),
        Api::Embeddings => embeddings::set_usage(body, receipt.usage),
    }
    body.insert("compose".into(), receipt.compose_json());
}

/// The event that tells a stream's client it failed after it started, in
/// the API's own error shape.
pub fn failure_event(api: Api, code: &str, message: &str) -> Value {
    match api {
        Api::Chat | Api::Embeddings => json!({"error": {
            "code": code, "message": message, "type": "upstream_error", "param": null,
        }}),
        Api::Responses => json!({"type": "error", "code": code, "message": message, "param": null}),
        Api::Messages => {
            json!({"type": "error", "error": {"type": "api_error", "message": message}})
        }
    }
}
