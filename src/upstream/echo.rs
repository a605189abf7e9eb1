//! The built-in `echo` model: deterministic, in process, free of any network.
//!
//! It answers with the last message's words, at most `max_tokens` of them;
//! one word is one token, so `prompt_tokens` is the number of words in all
//! messages and `completion_tokens = min(max_tokens, words)`. Streams send a
//! chunk per word (optionally `word_delay_ms` apart), a closing chunk with
//! the finish reason, and a usage chunk.

use std::time::Duration;

use futures_util::stream;
use serde_json::{json, Map, Value};

use super::{content_text, Chunk, ChunkStream, Completion, UpstreamRequest, Usage};

pub struct Echo {
    pub model: String,
    pub word_delay_ms: u64,
}

/// Words across every message's content: `echo`'s exact prompt token count.
pub fn prompt_words(body: &Map<String, Value>) -> u64 {
    messages(body)
        .iter()
        .map(|m| content_text(m).split_whitespace().count() as u64)
        .sum()
}

fn messages(body: &Map<String, Value>) -> &[Value] {
    body.get("messages")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The answer's words: the last message's, cut at `max_tokens`.
fn answer(request: &UpstreamRequest) -> (Vec<String>, bool) {
    let last = messages(&request.body)
        .last()
        .map(content_text)
        .unwrap_or_default();
    let words: Vec<String> = last.split_whitespace().map(str::to_owned).collect();
    let limit = usize::try_from(request.max_tokens).unwrap_or(usize::MAX);
    let truncated = words.len() > limit;
    (words.into_iter().take(limit).collect(), truncated)
}

fn finish_reason(truncated: bool) -> &'static str {
    if truncated {
        "length"
    } else {
        "stop"
    }
}

impl Echo {
    fn usage(request: &UpstreamRequest, completion_tokens: usize) -> Usage {
        Usage {
            prompt_tokens: prompt_words(&request.body),
            completion_tokens: completion_tokens as u64,
            ..Usage::default()
        }
    }

    pub fn complete(&self, request: &UpstreamRequest) -> Completion {
        let (words, truncated) = answer(request);
        let usage = Echo::usage(request, words.len());
        let body = json!({
            "id": format!("chatcmpl-{}", request.request_id),
            "object": "chat.completion",
            "created": ledger::time::now_ms() / 1000,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": words.join(" ")},
                "logprobs": null,
                "finish_reason": finish_reason(truncated),
            }],
            "usage": usage.to_json(),
        });
        let Value::Object(body) = body else {
            unreachable!("a json! object literal is an object")
        };
        Completion {
            body,
            usage: Some(usage),
        }
    }

    pub fn stream(&self, request: &UpstreamRequest) -> ChunkStream {
        let (words, truncated) = answer(request);
        let usage = Echo::usage(request, words.len());
        let id = format!("chatcmpl-{}", request.request_id);
        let created = ledger::time::now_ms() / 1000;
        let chunk = |delta: Value, finish: Option<&str>| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            })
        };
        let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        for (i, word) in words.iter().enumerate() {
            let text = if i == 0 {
                word.clone()
            } else {
                format!(" {word}")
            };
            chunks.push(chunk(json!({ "content": text }), None));
        }
        chunks.push(chunk(json!({}), Some(finish_reason(truncated))));
        chunks.push(json!({
            "id": id, "object": "chat.completion.chunk", "created": created,
            "model": self.model, "choices": [], "usage": usage.to_json(),
        }));
        let delay = Duration::from_millis(self.word_delay_ms);
        Box::pin(stream::unfold(
            chunks.into_iter(),
            move |mut rest| async move {
                let json = rest.next()?;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((Ok(Chunk { json, raw: None }), rest))
            },
        ))
    }
}
