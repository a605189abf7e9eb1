//! An OpenAI-compatible upstream (`POST {base}/chat/completions`) over pooled
//! HTTP clients shared by every model: one per thread, so a connection is
//! driven by the worker thread that uses it and a call never hops threads
//! to reach its socket.
//!
//! The client's body goes through as it came, with three changes: `model`
//! becomes the upstream's name, the output bound becomes what the budget
//! affords, and a stream asks for `stream_options.include_usage` so its last
//! chunk reports usage. Streams are read event by event and handed on as
//! they arrive — never buffered whole.

use std::cell::RefCell;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};

use super::sse::SseReader;
use super::{Chunk, ChunkStream, Completion, UpstreamError, UpstreamRequest, Usage};

/// The most bytes of an upstream error body kept for the log and message.
const ERROR_BODY_MAX_BYTES: usize = 512;

/// How upstream clients are built; each thread builds its own once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    pub connect_timeout: Duration,
}

thread_local! {
    static CLIENTS: RefCell<Vec<(ClientConfig, reqwest::Client)>> = const { RefCell::new(Vec::new()) };
}

impl ClientConfig {
    /// This thread's client for this configuration (built on first use).
    pub fn client(&self) -> Result<reqwest::Client, UpstreamError> {
        CLIENTS.with(|clients| {
            let mut clients = clients.borrow_mut();
            if let Some((_, client)) = clients.iter().find(|(config, _)| config == self) {
                return Ok(client.clone());
            }
            let client = reqwest::Client::builder()
                .connect_timeout(self.connect_timeout)
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(256)
                .tcp_nodelay(true)
                .build()
                .map_err(|e| UpstreamError::Transport(e.to_string()))?;
            clients.push((*self, client.clone()));
            Ok(client)
        })
    }
}

pub struct OpenAiUpstream {
    pub client: ClientConfig,
    /// `…/v1`, without a trailing slash.
    pub base_url: String,
    pub upstream_model: String,
    pub api_key: Option<String>,
    /// A whole non-streamed call, or a stream's response headers.
    pub timeout: Duration,
    /// Where the output bound goes (`max_tokens`, `max_completion_tokens`).
    pub max_tokens_fields: Vec<String>,
}

impl OpenAiUpstream {
    /// The body sent upstream: the client's checked fields (only known ones
    /// reach here, `ChatRequest::check_fields`), the upstream's model name,
    /// the afforded output bound in every field the upstream honours, and —
    /// for a stream — `include_usage` always on, whatever the client sent
    /// (`null`, `false`, nothing): the call is charged by that usage.
    fn body(&self, request: &UpstreamRequest, stream: bool) -> Map<String, Value> {
        let mut body = request.body.clone();
        body.insert("model".into(), json!(self.upstream_model));
        body.remove("max_tokens");
        body.remove("max_completion_tokens");
        for field in &self.max_tokens_fields {
            body.insert(field.clone(), json!(request.max_tokens));
        }
        body.insert("stream".into(), json!(stream));
        if stream {
            let mut options = match body.remove("stream_options") {
                Some(Value::Object(options)) => options,
                _ => Map::new(),
            };
            options.insert("include_usage".into(), json!(true));
            body.insert("stream_options".into(), Value::Object(options));
        } else {
            body.remove("stream_options");
        }
        body
    }

    async fn send(
        &self,
        request: &UpstreamRequest,
        stream: bool,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut call = self
            .client
            .client()?
            .post(format!("{}/chat/completions", self.base_url))
            .json(&self.body(request, stream));
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        let response = tokio::time::timeout(self.timeout, call.send())
            .await
            .map_err(|_| UpstreamError::Timeout)?
            .map_err(|error| self.unreachable(error))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        // Only the head of an error body is kept, and only that much is read.
        let mut head = Vec::with_capacity(ERROR_BODY_MAX_BYTES);
        let mut body = response.bytes_stream();
        while head.len() < ERROR_BODY_MAX_BYTES {
            match tokio::time::timeout(self.timeout, body.next()).await {
                Ok(Some(Ok(bytes))) => head.extend_from_slice(&bytes),
                _ => break,
            }
        }
        head.truncate(ERROR_BODY_MAX_BYTES);
        let mut message = String::from_utf8_lossy(&head).into_owned();
        if message.is_empty() {
            message = status.canonical_reason().unwrap_or("error").to_owned();
        }
        Err(UpstreamError::Status {
            status: status.as_u16(),
            message,
        })
    }

    pub async fn complete(&self, request: &UpstreamRequest) -> Result<Completion, UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = self.send(request, false).await?;
        let bytes = tokio::time::timeout_at(deadline, response.bytes())
            .await
            .map_err(|_| UpstreamError::Timeout)?
            .map_err(transport)?;
        completion(&bytes)
    }

    pub async fn stream(&self, request: &UpstreamRequest) -> Result<ChunkStream, UpstreamError> {
        let response = self.send(request, true).await?;
        // A 200 that is not an event stream (a JSON error, say) is not an
        // answer: nothing was generated, nothing is charged.
        let is_sse = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        if !is_sse {
            return Err(UpstreamError::Protocol(
                "a stream was asked for and the answer is not text/event-stream".into(),
            ));
        }
        let reading = Reading {
            bytes: response.bytes_stream(),
            reader: SseReader::default(),
            ready: Vec::new().into_iter(),
            done: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            reading,
            Reading::next_chunk,
        )))
    }
}

/// A stream's body as it is read: the bytes still to come, the events
/// parsed so far, the chunks of the last read not yet handed on, and
/// whether the stream is over (`[DONE]`, or an error handed on).
struct Reading<S> {
    bytes: S,
    reader: SseReader,
    ready: std::vec::IntoIter<Chunk>,
    done: bool,
}

impl<S> Reading<S>
where
    S: futures_util::Stream<Item = Result<Bytes, reqwest::Error>> + Send + Unpin + 'static,
{
    /// The next chunk: one already read, else the chunks of the next bytes
    /// to arrive. After the end (or an error) the rest of the body is read
    /// off in the background.
    async fn next_chunk(mut self) -> Option<(Result<Chunk, UpstreamError>, Self)> {
        loop {
            if let Some(chunk) = self.ready.next() {
                return Some((Ok(chunk), self));
            }
            if self.done {
                finish_in_background(self.bytes);
                return None;
            }
            let events = match self.bytes.next().await {
                None => return None,
                Some(Err(e)) => Err(transport(e)),
                Some(Ok(b)) => self
                    .reader
                    .feed(&b)
                    .map_err(|e| UpstreamError::Protocol(e.to_string())),
            };
            match events.and_then(|events| self.chunks(events)) {
                Ok(chunks) => self.ready = chunks.into_iter(),
                // The read's chunks are dropped; the stream ends after this.
                Err(e) => {
                    self.done = true;
                    return Some((Err(e), self));
                }
            }
        }
    }

    /// The chunks of one read's events, up to `[DONE]` (which ends the
    /// stream); an error event or a chunk that is not JSON is an error.
    fn chunks(&mut self, events: Vec<String>) -> Result<Vec<Chunk>, UpstreamError> {
        let mut chunks = Vec::with_capacity(events.len());
        for data in events {
            if data.trim() == "[DONE]" {
                self.done = true;
                break;
            }
            match serde_json::from_str::<Value>(&data) {
                Ok(json) if json.get("error").is_some_and(|e| !e.is_null()) => {
                    let message = json["error"]["message"]
                        .as_str()
                        .unwrap_or("error")
                        .to_owned();
                    return Err(UpstreamError::Status {
                        status: 200,
                        message,
                    });
                }
                Ok(json) => chunks.push(Chunk {
                    json,
                    raw: Some(Bytes::from(data)),
                }),
                Err(e) => return Err(UpstreamError::Protocol(format!("chunk: {e}"))),
            }
        }
        Ok(chunks)
    }
}

/// A non-streamed answer: a chat completion, or an upstream error — also
/// when it came with status 200 (`{"error": …}`, or no `choices`): an answer
/// that is not a completion is not charged.
fn completion(bytes: &[u8]) -> Result<Completion, UpstreamError> {
    let body = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(body)) => body,
        _ => {
            return Err(UpstreamError::Protocol(
                "the body is not a JSON object".into(),
            ))
        }
    };
    if let Some(error) = body.get("error").filter(|e| !e.is_null()) {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("error")
            .chars()
            .take(ERROR_BODY_MAX_BYTES)
            .collect();
        return Err(UpstreamError::Status {
            status: 200,
            message,
        });
    }
    if !body.get("choices").is_some_and(Value::is_array) {
        return Err(UpstreamError::Protocol(
            "the answer has no choices: not a chat completion".into(),
        ));
    }
    let usage = body.get("usage").and_then(Usage::from_usage);
    Ok(Completion { body, usage })
}

/// After `[DONE]`, what is left of a stream's body (the chunked body's end)
/// is read off in the background, bounded in time and size: the call does
/// not wait for it — an upstream that delays its last write (Nagle's
/// algorithm against a delayed ACK) costs nothing — and a body read to its
/// end returns its connection to the pool for the next call.
fn finish_in_background<S>(mut rest: S)
where
    S: futures_util::Stream<Item = Result<Bytes, reqwest::Error>> + Send + Unpin + 'static,
{
    const REST_MAX_BYTES: usize = 64 * 1024;
    const REST_WAIT: Duration = Duration::from_secs(1);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REST_WAIT, async {
            let mut read = 0;
            while let Some(Ok(bytes)) = rest.next().await {
                read += bytes.len();
                if read > REST_MAX_BYTES {
                    break; // not a well-behaved stream: drop the connection
                }
            }
        })
        .await;
    });
}

fn transport(error: reqwest::Error) -> UpstreamError {
    if error.is_timeout() {
        UpstreamError::Timeout
    } else {
        UpstreamError::Transport(with_causes(error))
    }
}

/// The error and each cause its text does not already hold, down to the
/// OS's ("… tcp connect error: Connection refused (os error 111)"). Without
/// the URL: it may carry credentials in some deployments.
fn with_causes(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

impl OpenAiUpstream {
    /// A request that never got an answer: which model, which host (never
    /// the URL's path, query or credentials) and the OS's cause.
    fn unreachable(&self, error: reqwest::Error) -> UpstreamError {
        if error.is_timeout() {
            return UpstreamError::Timeout;
        }
        let host = reqwest::Url::parse(&self.base_url)
            .ok()
            .and_then(|url| {
                Some(format!(
                    "{}:{}",
                    url.host_str()?,
                    url.port_or_known_default()?
                ))
            })
            .unwrap_or_else(|| "?".to_owned());
        UpstreamError::Transport(format!(
            "model {} at {host}: {}",
            self.upstream_model,
            with_causes(error)
        ))
    }
}
