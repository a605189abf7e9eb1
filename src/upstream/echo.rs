//! The built-in `echo` model: deterministic, in process, free of any network,
//! and serving every [`Api`].
//!
//! It answers with the last message's words, at most `max_tokens` of them;
//! one word is one token, so the prompt's tokens are the words of every
//! message (and of the instructions or system prompt) and the output's are
//! `min(max_tokens, words)`. Streams send an event per word (optionally
//! `word_delay_ms` apart) in the API's own event sequence, and report usage
//! where the API does. Embeddings are a small vector derived from the text.

use std::time::Duration;

use base64::Engine;
use futures_util::stream;
use serde_json::{json, Map, Value};

use super::{content_text, Api, Chunk, ChunkStream, Completion, UpstreamRequest, Usage};

pub struct Echo {
    pub model: String,
    pub word_delay_ms: u64,
}

/// Words in `text`.
fn words_in(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The text of a Responses `input` item or a message: its `content` as a
/// string or parts' `text`.
fn item_text(item: &Value) -> String {
    match item {
        Value::String(text) => text.clone(),
        _ => content_text(item),
    }
}

/// The conversation's messages (chat, Messages) or input items (Responses;
/// a string input is one item).
fn turns(api: Api, body: &Map<String, Value>) -> Vec<Value> {
    let field = match api {
        Api::Responses | Api::Embeddings => "input",
        Api::Chat | Api::Messages => "messages",
    };
    match body.get(field) {
        Some(Value::Array(items)) => items.clone(),
        Some(text @ Value::String(_)) => vec![text.clone()],
        _ => Vec::new(),
    }
}

/// Words across every message's content and the instructions or system
/// prompt: `echo`'s exact prompt token count. Embeddings: the words of
/// every input (a token array counts its tokens).
pub fn prompt_words(api: Api, body: &Map<String, Value>) -> u64 {
    let preamble = match api {
        Api::Responses => body.get("instructions"),
        Api::Messages => body.get("system"),
        Api::Chat | Api::Embeddings => None,
    };
    let preamble = preamble.map_or(0, |p| match p {
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(words_in)
            .sum(),
        other => other.as_str().map_or(0, words_in),
    });
    let turns: u64 = turns(api, body)
        .iter()
        .map(|turn| match turn {
            Value::Array(tokens) => tokens.len() as u64,
            Value::Number(_) => 1,
            other => words_in(&item_text(other)),
        })
        .sum();
    preamble.saturating_add(turns)
}

/// The answer's words: the last message's, cut at `max_tokens`.
fn answer(request: &UpstreamRequest) -> (Vec<String>, bool) {
    let last = turns(request.api, &request.body)
        .last()
        .map(item_text)
        .unwrap_or_default();
    let words: Vec<String> = last.split_whitespace().map(str::to_owned).collect();
    let limit = usize::try_from(request.max_tokens).unwrap_or(usize::MAX);
    let truncated = words.len() > limit;
    (words.into_iter().take(limit).collect(), truncated)
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

impl Echo {
    fn usage(request: &UpstreamRequest, completion_tokens: usize) -> Usage {
        Usage::new(
            prompt_words(request.api, &request.body),
            completion_tokens as u64,
            0,
            0,
        )
    }

    pub fn complete(&self, request: &UpstreamRequest) -> Completion {
        if request.api == Api::Embeddings {
            return self.embeddings(request);
        }
        let (words, truncated) = answer(request);
        let usage = Echo::usage(request, words.len());
        let text = words.join(" ");
        let id = &request.request_id;
        let body = match request.api {
            Api::Chat | Api::Embeddings => self.chat_completion(id, &text, truncated, usage),
            Api::Responses => self.response(id, &text, truncated, Some(usage)),
            Api::Messages => self.message(id, &text, truncated, usage),
        };
        Completion {
            body: object(body),
            usage: Some(usage),
        }
    }

    fn chat_completion(&self, id: &str, text: &str, truncated: bool, usage: Usage) -> Value {
        json!({
            "id": format!("chatcmpl-{id}"),
            "object": "chat.completion",
            "created": ledger::time::now_ms() / 1000,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": if truncated { "length" } else { "stop" },
            }],
            "usage": usage.to_json(),
        })
    }

    /// A Responses `response` object: in progress (no usage yet) or done.
    fn response(&self, id: &str, text: &str, truncated: bool, usage: Option<Usage>) -> Value {
        let done = usage.is_some();
        let status = match (done, truncated) {
            (false, _) => "in_progress",
            (true, false) => "completed",
            (true, true) => "incomplete",
        };
        let output = if done {
            json!([output_message(id, text, "completed")])
        } else {
            json!([])
        };
        json!({
            "id": format!("resp_{id}"),
            "object": "response",
            "created_at": ledger::time::now_ms() / 1000,
            "status": status,
            "error": null,
            "incomplete_details": if done && truncated { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": null,
            "metadata": {},
            "model": self.model,
            "output": output,
            "parallel_tool_calls": true,
            "tool_choice": "auto",
            "tools": [],
            "temperature": 1.0,
            "top_p": 1.0,
            "text": {"format": {"type": "text"}},
            "usage": usage.map(responses_usage),
        })
    }

    /// An Anthropic `message`.
    fn message(&self, id: &str, text: &str, truncated: bool, usage: Usage) -> Value {
        json!({
            "id": format!("msg_{id}"),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": if truncated { "max_tokens" } else { "end_turn" },
            "stop_sequence": null,
            "usage": messages_usage(usage),
        })
    }

    /// One small vector per input, from its bytes: deterministic, and in
    /// base64 (little-endian `f32`s) when the client asked for it.
    fn embeddings(&self, request: &UpstreamRequest) -> Completion {
        let base64 = request.body.get("encoding_format").and_then(Value::as_str) == Some("base64");
        let data: Vec<Value> = turns(Api::Embeddings, &request.body)
            .iter()
            .enumerate()
            .map(|(index, input)| {
                let bytes = serde_json::to_vec(input).unwrap_or_default();
                let sum: u32 = bytes.iter().map(|b| u32::from(*b)).sum();
                let vector = [bytes.len() as f32, (sum % 997) as f32 / 997.0, 0.5, 0.25];
                let embedding = if base64 {
                    let raw: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(raw))
                } else {
                    json!(vector)
                };
                json!({"object": "embedding", "index": index, "embedding": embedding})
            })
            .collect();
        let usage = Echo::usage(request, 0);
        let body = json!({
            "object": "list",
            "data": data,
            "model": self.model,
            "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
        });
        Completion {
            body: object(body),
            usage: Some(usage),
        }
    }

    pub fn stream(&self, request: &UpstreamRequest) -> ChunkStream {
        let (words, truncated) = answer(request);
        let usage = Echo::usage(request, words.len());
        let pieces: Vec<String> = words
            .iter()
            .enumerate()
            .map(|(i, w)| if i == 0 { w.clone() } else { format!(" {w}") })
            .collect();
        let id = &request.request_id;
        let events = match request.api {
            Api::Chat | Api::Embeddings => self.chat_events(id, &pieces, truncated, usage),
            Api::Responses => self.responses_events(id, &pieces, truncated, usage),
            Api::Messages => self.messages_events(id, &pieces, truncated, usage),
        };
        let delay = Duration::from_millis(self.word_delay_ms);
        Box::pin(stream::unfold(
            events.into_iter(),
            move |mut rest| async move {
                let json = rest.next()?;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((Ok(Chunk { json, raw: None }), rest))
            },
        ))
    }

    fn chat_events(
        &self,
        id: &str,
        pieces: &[String],
        truncated: bool,
        usage: Usage,
    ) -> Vec<Value> {
        let id = format!("chatcmpl-{id}");
        let created = ledger::time::now_ms() / 1000;
        let chunk = |delta: Value, finish: Option<&str>| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            })
        };
        let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        chunks.extend(
            pieces
                .iter()
                .map(|text| chunk(json!({ "content": text }), None)),
        );
        chunks.push(chunk(
            json!({}),
            Some(if truncated { "length" } else { "stop" }),
        ));
        chunks.push(json!({
            "id": id, "object": "chat.completion.chunk", "created": created,
            "model": self.model, "choices": [], "usage": usage.to_json(),
        }));
        chunks
    }

    /// The Responses event sequence for one text message.
    fn responses_events(
        &self,
        id: &str,
        pieces: &[String],
        truncated: bool,
        usage: Usage,
    ) -> Vec<Value> {
        let text = pieces.concat();
        let item_id = format!("msg_{id}");
        let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
        let at = |kind: &str, mut fields: Value| {
            fields["type"] = json!(kind);
            fields
        };
        let mut events = vec![
            at(
                "response.created",
                json!({"response": self.response(id, "", false, None)}),
            ),
            at(
                "response.in_progress",
                json!({"response": self.response(id, "", false, None)}),
            ),
            at(
                "response.output_item.added",
                json!({"output_index": 0,
                "item": {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []}}),
            ),
            at(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0,
                "content_index": 0, "part": part("")}),
            ),
        ];
        events.extend(pieces.iter().map(|delta| {
            at(
                "response.output_text.delta",
                json!({"item_id": item_id, "output_index": 0,
                "content_index": 0, "delta": delta, "logprobs": []}),
            )
        }));
        let done = if truncated {
            "response.incomplete"
        } else {
            "response.completed"
        };
        events.extend([
            at(
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": 0,
                "content_index": 0, "text": text, "logprobs": []}),
            ),
            at(
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0,
                "content_index": 0, "part": part(&text)}),
            ),
            at(
                "response.output_item.done",
                json!({"output_index": 0,
                "item": output_message(id, &text, "completed")}),
            ),
            at(
                done,
                json!({"response": self.response(id, &text, truncated, Some(usage))}),
            ),
        ]);
        for (n, event) in events.iter_mut().enumerate() {
            event["sequence_number"] = json!(n);
        }
        events
    }

    /// The Messages event sequence for one text block.
    fn messages_events(
        &self,
        id: &str,
        pieces: &[String],
        truncated: bool,
        usage: Usage,
    ) -> Vec<Value> {
        let mut start = self.message(
            id,
            "",
            false,
            Usage {
                completion_tokens: 0,
                ..usage
            },
        );
        start["content"] = json!([]);
        start["stop_reason"] = Value::Null;
        let mut events = vec![
            json!({"type": "message_start", "message": start}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
        ];
        events.extend(pieces.iter().map(|text| {
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})
        }));
        events.extend([
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta",
                   "delta": {"stop_reason": if truncated { "max_tokens" } else { "end_turn" }, "stop_sequence": null},
                   "usage": {"output_tokens": usage.completion_tokens}}),
            json!({"type": "message_stop"}),
        ]);
        events
    }
}

/// A Responses output message holding `text`.
fn output_message(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message", "id": format!("msg_{id}"), "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

/// Responses' `usage` object.
pub fn responses_usage(usage: Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens.saturating_add(usage.completion_tokens),
    })
}

/// Anthropic's `usage` object: `input_tokens` without the cache parts.
pub fn messages_usage(usage: Usage) -> Value {
    json!({
        "input_tokens": usage
            .prompt_tokens
            .saturating_sub(usage.cached_tokens)
            .saturating_sub(usage.cache_write_tokens),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
    })
}
