//! The paid call every endpoint runs, whatever API it speaks:
//! [`Gateway::ask`] turns a parsed request into a protocol-neutral [`Ask`]
//! (the model looked up once, its input and output bounds), and
//! [`Gateway::call`] holds its cost on the [`Payer`]'s key, runs the
//! upstream and charges it — answering whole ([`Outcome::Answer`]) or as a
//! stream of events ([`Outcome::Stream`]) for the endpoint to frame.

use std::sync::Arc;

use ledger::{KeyId, RequestId};

use super::call::{CallAsk, PaidCall};
use super::error::CallFailure;
use super::protocol::{messages, Api, Parsed};
use super::run::{self, Answer, Stream};
use super::{Gateway, Model};
use crate::upstream::UpstreamRequest;

/// Who pays for a call, resolved once from its credential.
#[derive(Debug, Clone)]
pub enum Payer {
    /// A Compose key pays from its own budget; its token is checked
    /// against the key's stored hash.
    ComposeKey { key: KeyId, token: String },
    /// A Studio key pays from its project's budget key (its own credential
    /// was checked already).
    Project { budget_key: KeyId },
}

impl Payer {
    /// The key whose budget pays.
    pub fn key(&self) -> &KeyId {
        match self {
            Payer::ComposeKey { key, .. } => key,
            Payer::Project { budget_key } => budget_key,
        }
    }

    fn token(&self) -> Option<&str> {
        match self {
            Payer::ComposeKey { token, .. } => Some(token),
            Payer::Project { .. } => None,
        }
    }

    /// A refusal in this payer's terms: a project's budget key revoked,
    /// expired or replaced means the project has no budget, not that the
    /// caller's own credential failed.
    pub fn refusal(&self, failure: CallFailure) -> CallFailure {
        match (self, failure) {
            (
                Payer::Project { .. },
                CallFailure::KeyRevoked
                | CallFailure::SessionSuperseded
                | CallFailure::KeyExpired
                | CallFailure::InvalidToken,
            ) => CallFailure::NoProjectBudget,
            (_, failure) => failure,
        }
    }
}

/// The ids a call carries to its log lines, its charge and its event.
#[derive(Debug, Clone)]
pub struct CallIds {
    /// The HTTP request's id: the charge's id too.
    pub request: RequestId,
    /// The caller's own well-formed `x-request-id`.
    pub client_request_id: Option<String>,
}

/// A paid request, ready to run: protocol-neutral.
pub struct Ask {
    pub api: Api,
    pub model: Arc<Model>,
    pub stream: bool,
    /// The input's token bound: what the hold prices the prompt at.
    pub prompt_tokens_max: u64,
    /// The output bound asked for (the model's when the request named none,
    /// never past it; 0 for embeddings).
    pub max_tokens: u64,
    pub wants_usage: bool,
    /// The body for the upstream (its bound is set when the hold is known).
    pub body: serde_json::Map<String, serde_json::Value>,
    pub pass_headers: Vec<(&'static str, String)>,
}

/// A paid call's answer.
pub enum Outcome {
    Answer(Answer),
    Stream(Stream),
}

impl Gateway {
    /// The model `parsed` names, if it exists and serves its API; fields it
    /// does not forward refused. Nothing is held yet.
    pub fn model_for(&self, parsed: &Parsed) -> Result<Arc<Model>, CallFailure> {
        let Some(model) = self.models.get(&parsed.model) else {
            return Err(CallFailure::ModelNotFound(parsed.model.clone()));
        };
        if !model.serves(parsed.api) {
            return Err(CallFailure::WrongApi {
                model: parsed.model.clone(),
                serves: model.apis().iter().map(|api| api.endpoint()).collect(),
            });
        }
        parsed.check_fields(&model.forward_fields)?;
        Ok(model.clone())
    }

    /// `parsed` as an [`Ask`]: its model and bounds.
    pub fn ask(
        &self,
        parsed: Parsed,
        pass_headers: Vec<(&'static str, String)>,
    ) -> Result<Ask, CallFailure> {
        let model = self.model_for(&parsed)?;
        if parsed.api == Api::Messages {
            let betas = pass_headers
                .iter()
                .find(|(name, _)| *name == "anthropic-beta")
                .map(|(_, value)| value.as_str());
            messages::check_betas(betas, &parsed.body, &model.forward_fields)?;
        }
        let max_tokens = parsed
            .max_tokens
            .unwrap_or(model.max_output_tokens)
            .min(model.max_output_tokens);
        let prompt_tokens_max = model.upstream.prompt_tokens_max(parsed.api, &parsed.body);
        Ok(Ask {
            api: parsed.api,
            model,
            stream: parsed.stream,
            prompt_tokens_max,
            max_tokens,
            wants_usage: parsed.wants_usage,
            body: parsed.body,
            pass_headers,
        })
    }

    /// Anthropic's `count_tokens` for `model`: free, within the upstream
    /// timeout.
    pub async fn count_tokens(
        &self,
        model: &Model,
        body: serde_json::Map<String, serde_json::Value>,
        pass_headers: Vec<(&'static str, String)>,
    ) -> Result<serde_json::Value, CallFailure> {
        let request = UpstreamRequest {
            api: Api::Messages,
            body,
            max_tokens: 0,
            request_id: RequestId::generate().to_string(),
            pass_headers,
        };
        let counted = tokio::time::timeout(
            self.timeouts.upstream,
            model.upstream.count_tokens(&request),
        )
        .await
        .unwrap_or(Err(crate::upstream::UpstreamError::Timeout));
        counted.map_err(run::upstream_failure)
    }

    /// Runs `ask`, paid by `payer`: holds its cost (lowering its output
    /// bound to what the budget affords), runs the upstream and charges the
    /// usage — or refuses in the payer's terms, holding nothing.
    pub async fn call(
        &self,
        payer: &Payer,
        ids: CallIds,
        ask: Ask,
    ) -> Result<Outcome, CallFailure> {
        let call_ask = CallAsk {
            request: ids.request,
            client_request_id: ids.client_request_id,
            model: &ask.model,
            prompt_tokens_max: ask.prompt_tokens_max,
            requested_max_tokens: ask.max_tokens,
            stream: ask.stream,
        };
        let call = PaidCall::open(self, payer.key(), payer.token(), call_ask)
            .await
            .map_err(|failure| payer.refusal(failure))?;
        let request = UpstreamRequest {
            api: ask.api,
            body: ask.body,
            max_tokens: call.max_tokens,
            request_id: call.request.to_string(),
            pass_headers: ask.pass_headers,
        };
        if ask.stream {
            let stream = run::stream(self, ask.model, call, request, ask.wants_usage).await?;
            Ok(Outcome::Stream(stream))
        } else {
            Ok(Outcome::Answer(
                run::complete(self, ask.model, call, request).await?,
            ))
        }
    }
}
