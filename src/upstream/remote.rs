//! A remote upstream — OpenAI's API (`{base}/chat/completions`,
//! `/responses`, `/embeddings`) or Anthropic's (`{base}/messages`,
//! `/messages/count_tokens`) — over pooled HTTP clients shared by every
//! model: one per thread, so a connection is driven by the worker thread
//! that uses it and a call never hops threads to reach its socket.
//!
//! The client's body goes through as it came, with these changes: `model`
//! becomes the upstream's name; the output bound becomes what the budget
//! affords (`max_tokens`/`max_completion_tokens` in chat, `max_output_tokens`
//! in Responses, `max_tokens` in Messages); a chat stream asks for
//! `stream_options.include_usage` so its last chunk reports usage; a
//! Responses call is not stored upstream unless the model allows it.
//! Streams are read event by event and handed on as they arrive — never
//! buffered whole.

use std::cell::RefCell;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};

use super::sse::SseReader;
use super::{
    Api, Chunk, ChunkStream, Completion, UpstreamError, UpstreamRequest, Usage, WireProtocol,
};

/// The `anthropic-version` sent when the client sent none.
const ANTHROPIC_VERSION: &str = "2023-06-01";

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

pub struct RemoteUpstream {
    pub client: ClientConfig,
    /// `…/v1`, without a trailing slash.
    pub base_url: String,
    pub upstream_model: String,
    pub api_key: Option<String>,
    /// A whole non-streamed call, or a stream's response headers.
    pub timeout: Duration,
    /// Where a chat call's output bound goes (`max_tokens`,
    /// `max_completion_tokens`).
    pub max_tokens_fields: Vec<String>,
    /// What the upstream speaks.
    pub protocol: WireProtocol,
    /// Responses calls may be stored upstream (`store` as the client sent
    /// it); else `store` is always false.
    pub allow_store: bool,
}

impl RemoteUpstream {
    /// The body sent upstream: the client's checked fields (only known ones
    /// reach here), the upstream's model name and the afforded output bound
    /// in the API's field(s). For a chat stream `include_usage` is always on,
    /// whatever the client sent (`null`, `false`, nothing): the call is
    /// charged by that usage.
    fn body(&self, request: &UpstreamRequest, stream: bool) -> Map<String, Value> {
        let mut body = request.body.clone();
        body.insert("model".into(), json!(self.upstream_model));
        let bound = json!(request.max_tokens);
        match request.api {
            Api::Chat => {
                body.remove("max_tokens");
                body.remove("max_completion_tokens");
                for field in &self.max_tokens_fields {
                    body.insert(field.clone(), bound.clone());
                }
                chat_stream_options(&mut body, stream);
            }
            Api::Responses => {
                body.insert("max_output_tokens".into(), bound);
                if !self.allow_store || !body.contains_key("store") {
                    body.insert("store".into(), json!(false));
                }
            }
            Api::Messages => {
                body.insert("max_tokens".into(), bound);
                lower_thinking_budget(&mut body, request.max_tokens);
            }
            Api::Embeddings => return body,
        }
        body.insert("stream".into(), json!(stream));
        body
    }

    /// The request to `path` with this upstream's credentials and the
    /// client's passed-through headers.
    fn post(
        &self,
        request: &UpstreamRequest,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, UpstreamError> {
        let mut call = self
            .client
            .client()?
            .post(format!("{}{path}", self.base_url));
        match self.protocol {
            WireProtocol::OpenAi => {
                if let Some(key) = &self.api_key {
                    call = call.bearer_auth(key);
                }
            }
            WireProtocol::Anthropic => {
                if let Some(key) = &self.api_key {
                    call = call.header("x-api-key", key);
                }
                if !request
                    .pass_headers
                    .iter()
                    .any(|(name, _)| *name == "anthropic-version")
                {
                    call = call.header("anthropic-version", ANTHROPIC_VERSION);
                }
            }
        }
        for (name, value) in &request.pass_headers {
            call = call.header(*name, value);
        }
        Ok(call)
    }

    async fn send(
        &self,
        request: &UpstreamRequest,
        stream: bool,
    ) -> Result<reqwest::Response, UpstreamError> {
        let call = self
            .post(request, request.api.path())?
            .json(&self.body(request, stream));
        self.answer(call).await
    }

    /// Sends `call`: a success's response, or the upstream's error status
    /// with the head of its body.
    async fn answer(
        &self,
        call: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, UpstreamError> {
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
        completion(request.api, &bytes)
    }

    /// `POST {base}/messages/count_tokens` with the client's body (its
    /// model renamed): the upstream's answer, as it came.
    pub async fn count_tokens(&self, request: &UpstreamRequest) -> Result<Value, UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut body = request.body.clone();
        body.insert("model".into(), json!(self.upstream_model));
        let call = self.post(request, "/messages/count_tokens")?.json(&body);
        let response = self.answer(call).await?;
        let bytes = tokio::time::timeout_at(deadline, response.bytes())
            .await
            .map_err(|_| UpstreamError::Timeout)?
            .map_err(transport)?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(answer) if answer.get("input_tokens").is_some_and(Value::is_u64) => Ok(answer),
            _ => Err(UpstreamError::Protocol(
                "count_tokens answered no input_tokens".into(),
            )),
        }
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
            api: request.api,
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
    api: Api,
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

    /// The chunks of one read's events, up to `[DONE]` or the API's last
    /// event (which end the stream); an error event or a chunk that is not
    /// JSON is an error.
    fn chunks(&mut self, events: Vec<String>) -> Result<Vec<Chunk>, UpstreamError> {
        let mut chunks = Vec::with_capacity(events.len());
        for data in events {
            if data.trim() == "[DONE]" {
                self.done = true;
                break;
            }
            let json = serde_json::from_str::<Value>(&data)
                .map_err(|e| UpstreamError::Protocol(format!("chunk: {e}")))?;
            if let Some(message) = Api::stream_error(&json) {
                return Err(UpstreamError::Status {
                    status: 200,
                    message,
                });
            }
            let last = self.api.is_terminal(&json);
            // The upstream's bytes go on as they came unless they span
            // lines (a multi-line `data:`): framed again as one `data:` line
            // they would end the client's event early.
            let one_line = !data.contains(['\n', '\r']);
            chunks.push(Chunk {
                json,
                raw: one_line.then(|| Bytes::from(data)),
            });
            if last {
                self.done = true;
                break;
            }
        }
        Ok(chunks)
    }
}

/// Extended thinking's `budget_tokens` must stay below `max_tokens`: when
/// the budget lowered `max_tokens` past it, the thinking budget is lowered
/// too (Anthropic refuses the call otherwise).
fn lower_thinking_budget(body: &mut Map<String, Value>, max_tokens: u64) {
    let Some(budget) = body
        .get_mut("thinking")
        .and_then(|t| t.get_mut("budget_tokens"))
    else {
        return;
    };
    if budget.as_u64().is_some_and(|b| b >= max_tokens) {
        *budget = json!(max_tokens.saturating_sub(1));
    }
}

/// A chat stream always asks for usage; a non-streamed call sends no
/// `stream_options`.
fn chat_stream_options(body: &mut Map<String, Value>, stream: bool) {
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
}

/// A non-streamed answer in `api`'s shape, or an upstream error — also
/// when it came with status 200 (`{"error": …}`, or not the API's answer):
/// an answer that is not one is not charged.
fn completion(api: Api, bytes: &[u8]) -> Result<Completion, UpstreamError> {
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
    let (field, what) = match api {
        Api::Chat => ("choices", "a chat completion"),
        Api::Responses => ("output", "a response"),
        Api::Messages => ("content", "a message"),
        Api::Embeddings => ("data", "an embeddings list"),
    };
    if !body.get(field).is_some_and(Value::is_array) {
        return Err(UpstreamError::Protocol(format!(
            "the answer has no {field}: not {what}"
        )));
    }
    let usage = Usage::of_answer(api, &body);
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

impl RemoteUpstream {
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
