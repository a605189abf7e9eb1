//! [`PaidCall`]: one paid call's budget, from hold to charge.
//!
//! 1. [`PaidCall::open`] takes a lease on the key's actor, checks the token
//!    against the stored hash, and reserves the call's maximum cost. When
//!    the remaining budget cannot cover it, the hold is what remains and
//!    `max_tokens` is lowered to what that affords; only when not even one
//!    output token fits is the answer 402.
//! 2. The upstream runs.
//! 3. [`PaidCall::finish`] prices the usage (never above the hold), writes
//!    the charge through the gateway's charge sink — which answers once it
//!    is durable — and only then commits the amount in the actor.
//!    Store first, actor second: an actor restarted from the store can never
//!    have forgotten a charge. Both run in a spawned task, so a client that
//!    goes away mid-finish cannot leave one done without the other.
//! 4. A call dropped without finishing (upstream failure, a client gone
//!    before a non-streamed answer) releases its hold: nothing is charged.
//!    A charge the sink could not confirm forfeits its hold instead: the
//!    call answers 503, and since the charge may still land, that budget is
//!    never spent again on this actor (its lease gives it back later).

use std::sync::Arc;

use actors::budget::{BudgetStatus, Committed, ReserveError, Reserved};
use actors::registry::{AcquireError, CallError, KeyState, Lease};
use ledger::model::{ChargeOutcome, NewCharge};
use ledger::pricing::{Billed, Price, Tokens};
use ledger::time::now_ms;
use ledger::{Amount, KeyId, RequestId};
use serde_json::json;
use subtle::ConstantTimeEq;
use workers::sink::{CallContext, ChargeSink, RecordFuture, SinkError};

use super::error::{BudgetView, CallFailure};
use super::leases::TopUpError;
use super::{Gateway, Model};
use crate::auth::token::token_sha256;
use crate::upstream::Usage;

/// Awaits the charge's `write`, extending the call's hold whenever its
/// deadline comes within [`HOLD_EXTEND_MARGIN_MS`]: a slow store (a stall, a
/// busy lock) must not let the hold expire while its charge is on the way
/// (invariant 8).
async fn record_holding(
    write: RecordFuture,
    lease: &Lease,
    request: &RequestId,
    hold_deadline_ms: i64,
) -> Result<ChargeOutcome, SinkError> {
    tokio::pin!(write);
    let mut deadline_ms = hold_deadline_ms;
    loop {
        let wait_ms = deadline_ms
            .saturating_sub(HOLD_EXTEND_MARGIN_MS)
            .saturating_sub(now_ms())
            .max(0);
        let extend_at = tokio::time::Instant::now()
            + std::time::Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0));
        tokio::select! {
            written = &mut write => return written,
            _ = tokio::time::sleep_until(extend_at) => {
                deadline_ms = now_ms().saturating_add(HOLD_EXTEND_BY_MS);
                if let Err(error) = lease.extend(request.clone(), deadline_ms).await {
                    tracing::warn!(%error, "extending a hold under a slow charge failed");
                }
            }
        }
    }
}

/// The longest a call waits for its key's lease to be topped up (a stalled
/// store): past it the call answers 503 and the top-up finishes on its own.
const TOP_UP_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// The top-ups one call takes part in before it holds what there is (when
/// that is at least its minimum; else it goes on while the store gives, for
/// [`TOP_UP_WAIT_MAX`] at most).
const TOP_UP_ROUNDS_MAX: u32 = 4;

/// What a call asks its key's actor to hold.
#[derive(Debug, Clone, Copy)]
struct Hold {
    wanted: Amount,
    minimum: Amount,
    deadline_ms: i64,
}

/// Why a hold was not taken.
enum Refused {
    Call(CallError),
    TopUp(TopUpError),
}

/// Holds up to `hold.wanted` on the key's actor. An actor spending from a
/// budget lease whose allowance falls short first takes a chunk from the
/// store — one call per key at a time; the others find it taken — and a
/// hold that leaves the allowance low starts a top-up in the background, so
/// a busy key rarely waits on the store.
async fn reserve_from_lease(
    gateway: &Gateway,
    lease: &Lease,
    key_id: &KeyId,
    request: &RequestId,
    hold: Hold,
) -> Result<Reserved, Refused> {
    let Hold {
        wanted,
        minimum,
        deadline_ms,
    } = hold;
    let hold_what_there_is = || lease.reserve(request.clone(), wanted, minimum, deadline_ms);
    if lease.budget_lease().is_none() {
        return hold_what_there_is().await.map_err(Refused::Call);
    }
    let leases = &gateway.leases;
    leases.check_renewed().map_err(Refused::TopUp)?;
    let low_water = leases.low_water(wanted);
    let reserve =
        || lease.reserve_growing(request.clone(), wanted, minimum, deadline_ms, low_water);
    match reserve().await {
        Ok(reserved) => {
            if reserved.top_up {
                leases.top_up_soon(lease, key_id, leases.chunk_for(wanted, Amount::ZERO));
            }
            return Ok(reserved);
        }
        Err(CallError::Reserve(ReserveError::AllowanceShort { .. })) => {}
        Err(error) => return Err(Refused::Call(error)),
    }
    let asking_since = tokio::time::Instant::now();
    let mut round = 0;
    loop {
        round += 1;
        let topping_up = match tokio::time::timeout(TOP_UP_WAIT_MAX, lease.top_up_lock()).await {
            Ok(guard) => guard,
            Err(_) if round == 1 => return Err(Refused::TopUp(TopUpError::Slow)),
            // It was granted something already: hold what there is.
            Err(_) => break,
        };
        // Another call may have topped up while this one waited.
        let short = match reserve().await {
            Err(CallError::Reserve(ReserveError::AllowanceShort { short })) => short,
            done => return done.map_err(Refused::Call),
        };
        let granted_amount = leases
            .top_up_within(
                lease,
                key_id,
                leases.chunk_for(wanted, short),
                short,
                topping_up,
                TOP_UP_WAIT_MAX,
            )
            .await
            .map_err(Refused::TopUp)?;
        // A grant short of the shortfall: the store gave all it had.
        if granted_amount < short {
            break;
        }
        // A grant goes to the actor, not to this call: calls arriving
        // meanwhile may hold it first (a small key's takes are small). After
        // a few rounds the call settles for what there is — unless that is
        // not even its minimum while the store still gives: then refusing
        // would be a 402 on a key with budget left, so it asks again, for
        // as long as a call waits on a top-up at most.
        if round >= TOP_UP_ROUNDS_MAX {
            match hold_what_there_is().await {
                Err(CallError::Reserve(ReserveError::InsufficientBudget { .. }))
                    if asking_since.elapsed() < TOP_UP_WAIT_MAX => {}
                done => return done.map_err(Refused::Call),
            }
        }
    }
    // Whatever the store had is granted now: hold what there is.
    hold_what_there_is().await.map_err(Refused::Call)
}

/// A call holding budget on its key.
pub struct PaidCall {
    /// `None` once finished or released.
    lease: Option<Lease>,
    pub request: RequestId,
    client_request_id: Option<String>,
    key_id: KeyId,
    model: String,
    price: Price,
    sink: Arc<dyn ChargeSink>,
    pub reserved: Reserved,
    /// The prompt's token bound the hold was computed with.
    pub prompt_tokens_max: u64,
    /// The output bound the hold affords (≤ what the client asked).
    pub max_tokens: u64,
    /// When the call must be over (its hold lasts `hold_slack_ms` longer).
    pub ends_by: tokio::time::Instant,
    /// When the actor would release the hold on its own (ms since epoch).
    hold_deadline_ms: i64,
    started_at_ms: i64,
}

/// A charge still being written this close to its hold's deadline gets the
/// hold extended, so no other call can take the budget it is charging.
const HOLD_EXTEND_MARGIN_MS: i64 = 5_000;
/// How much later each extension moves the deadline.
const HOLD_EXTEND_BY_MS: i64 = 30_000;

/// The usage a call is charged for: what the upstream reported, or — when
/// it reported none — the gateway's estimate of what it delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metered {
    pub usage: Usage,
    /// `false`: an estimate (marked so in the ledger).
    pub reported: bool,
}

impl Metered {
    pub fn reported(usage: Usage) -> Metered {
        Metered {
            usage,
            reported: true,
        }
    }

    pub fn estimated(usage: Usage) -> Metered {
        Metered {
            usage,
            reported: false,
        }
    }
}

/// What a finished call was charged and where its key stands.
#[derive(Debug, Clone, Copy)]
pub struct Receipt {
    pub budget: BudgetView,
    /// The usage billed: `finalAmountWei` is exactly its price.
    pub usage: Usage,
    /// The billed usage is an estimate (the upstream reported none).
    pub estimated: bool,
}

impl Receipt {
    /// The `compose` object of a paid answer's body or last chunk.
    pub fn compose_json(&self) -> serde_json::Value {
        let mut compose = json!({
            "finalAmountWei": self.budget.final_amount.unwrap_or(Amount::ZERO),
            "budgetUsed": self.budget.used,
            "budgetRemaining": self.budget.limit.saturating_sub(self.budget.used),
        });
        if self.estimated {
            compose["estimated"] = json!(true);
        }
        compose
    }
}

/// What a paid call asks for: its id, the model, and the most it can cost.
pub struct CallAsk<'a> {
    /// The HTTP request's id (its log lines carry it): the charge's id too.
    pub request: RequestId,
    /// The caller's own well-formed `x-request-id`, carried to its charge.
    pub client_request_id: Option<String>,
    pub model: &'a Model,
    pub prompt_tokens_max: u64,
    pub requested_max_tokens: u64,
    pub stream: bool,
}

impl PaidCall {
    /// Leases `key_id`'s actor, checks `token` against the key's stored hash
    /// (`None`: the caller was authenticated otherwise — a Studio key paying
    /// from its project's budget key) and reserves the call's cost.
    pub async fn open(
        gateway: &Gateway,
        key_id: &KeyId,
        token: Option<&str>,
        ask: CallAsk<'_>,
    ) -> Result<PaidCall, CallFailure> {
        let CallAsk {
            request,
            client_request_id,
            model,
            prompt_tokens_max,
            requested_max_tokens,
            stream,
        } = ask;
        let lease = lease_key(gateway, key_id, token, model, prompt_tokens_max).await?;
        let quote = Quote::of(
            gateway,
            model,
            prompt_tokens_max,
            requested_max_tokens,
            stream,
        )?;
        let reserved = take_hold(gateway, &lease, key_id, &request, quote.hold).await?;
        assert!(
            reserved.held >= quote.hold.minimum && reserved.held <= quote.hold.wanted,
            "minimum ≤ hold ≤ maximum cost broken: held {} outside {}..={}",
            reserved.held,
            quote.hold.minimum,
            quote.hold.wanted
        );
        let max_tokens = model
            .price
            .affordable_output_tokens(reserved.held, prompt_tokens_max, requested_max_tokens)
            .unwrap_or(0);
        assert!(
            model
                .price
                .cost(prompt_tokens_max, max_tokens)
                .is_ok_and(|most| most <= reserved.held),
            "the hold pays for the output bound broken: {max_tokens} tokens past a hold of {}",
            reserved.held
        );
        debug_assert!(
            max_tokens >= requested_max_tokens.min(1),
            "a hold of at least the minimum affords one token"
        );
        Ok(PaidCall {
            lease: Some(lease),
            request,
            client_request_id,
            key_id: key_id.clone(),
            model: model.name.clone(),
            price: model.price.clone(),
            sink: gateway.sink.clone(),
            reserved,
            prompt_tokens_max,
            max_tokens,
            ends_by: quote.ends_by,
            hold_deadline_ms: quote.hold.deadline_ms,
            started_at_ms: now_ms(),
        })
    }

    /// The budget headers as the call starts (a stream's opening headers).
    pub fn opening_budget(&self) -> BudgetView {
        BudgetView {
            limit: self.reserved.limit,
            used: self.reserved.spent,
            final_amount: None,
        }
    }

    /// Charges the call for `metered` usage (billed at most its hold, the
    /// billed usage lowered to fit when needed): ledger first, then the
    /// actor. On failure nothing is charged and the hold is released.
    pub async fn finish(mut self, metered: Metered) -> Result<Receipt, CallFailure> {
        // `open` gives the call its lease; `finish`, `release` and `drop`
        // take it, and the first two consume the call.
        let Some(lease) = self.lease.take() else {
            panic!("a call finishes once broken: its hold was already closed");
        };
        let billed = self.bill(metered.usage);
        let amount = billed.amount;
        let charge = self.charge(&lease, &billed, metered);
        let call = CallContext {
            hold: self.reserved.held,
            started_at_ms: self.started_at_ms,
            payer: lease.payer(),
        };
        let finishing = tokio::spawn(record_then_commit(
            self.sink.clone(),
            charge,
            call,
            lease,
            self.hold_deadline_ms,
        ));
        let committed = match finishing.await {
            Ok(Ok(committed)) => committed,
            Ok(Err(Unfinished::NotRecorded(cause))) => {
                return Err(CallFailure::LedgerUnavailable { cause })
            }
            Ok(Err(Unfinished::RecordedNotCommitted(cause))) => {
                self.recorded_not_committed(amount, &cause)
            }
            Err(join) => return Err(CallFailure::internal(join)),
        };
        assert_eq!(
            committed.charged, amount,
            "the actor commits what the ledger charged broken"
        );
        assert!(
            committed.spent <= committed.limit,
            "spent ≤ limit broken: spent {} > limit {}",
            committed.spent,
            committed.limit
        );
        Ok(Receipt {
            budget: BudgetView {
                limit: committed.limit,
                used: committed.spent,
                final_amount: Some(committed.charged),
            },
            usage: Usage::of_tokens(billed.tokens),
            estimated: !metered.reported,
        })
    }

    /// Prices `usage` within the hold: the usage itself when its price fits,
    /// else lowered to what the hold pays for; the amount is exactly the
    /// billed usage's price.
    fn bill(&self, usage: Usage) -> Billed {
        let held = self.reserved.held;
        let most = |n: u64| n.min(u64::from(u32::MAX));
        let used = Tokens::new(
            most(usage.prompt_tokens),
            most(usage.cached_tokens),
            most(usage.cache_write_tokens),
            most(usage.completion_tokens),
        );
        let billed = self.price.bill(used, held);
        assert!(
            billed.amount <= held,
            "charge ≤ hold broken: charged {} > hold {}",
            billed.amount,
            held
        );
        assert!(
            billed.tokens.within(&used),
            "billed ≤ used broken: billed {:?} of {:?}",
            billed.tokens,
            used
        );
        // The hold is at least the price of the prompt bound and one output
        // token, so even billing no tokens is priced exactly (never capped).
        assert_eq!(
            self.price.cost_of(billed.tokens),
            Ok(billed.amount),
            "a charge is exactly its billed usage's price broken"
        );
        billed
    }

    /// The ledger's row for the billed call (and what the upstream reported,
    /// when it did).
    fn charge(&self, lease: &Lease, billed: &Billed, metered: Metered) -> NewCharge {
        let usage = metered.usage;
        NewCharge {
            request_id: self.request.clone(),
            key_id: self.key_id.clone(),
            model: self.model.clone(),
            price_version: self.price.version.clone(),
            input_tokens: clamp_u32(billed.tokens.input()),
            cached_input_tokens: clamp_u32(billed.tokens.cached()),
            cache_write_tokens: clamp_u32(billed.tokens.cache_write()),
            output_tokens: clamp_u32(billed.tokens.output()),
            amount: billed.amount,
            reported: metered.reported.then(|| {
                (
                    clamp_u32(usage.prompt_tokens),
                    clamp_u32(usage.completion_tokens),
                )
            }),
            reported_cache: metered.reported.then(|| {
                (
                    clamp_u32(usage.cached_tokens),
                    clamp_u32(usage.cache_write_tokens),
                )
            }),
            created_at_ms: now_ms(),
            lease: lease.budget_lease().cloned(),
            client_request_id: self.client_request_id.clone(),
        }
    }

    /// The charge is in the ledger but the actor had lost the hold (past its
    /// deadline): the ledger, whose guard keeps the key within its limit, is
    /// right; the actor reloads from it once evicted. The answer was paid
    /// for, so it is given: the budget it reports is the one the call saw
    /// plus this charge.
    fn recorded_not_committed(&self, amount: Amount, cause: &str) -> Committed {
        tracing::error!(
            request_id = %self.request, %cause,
            "charge recorded but not committed in its actor; the actor reloads"
        );
        let limit = self.reserved.limit;
        Committed {
            charged: amount,
            limit,
            spent: self
                .reserved
                .spent
                .checked_add(amount)
                .unwrap_or(limit)
                .min(limit),
            remaining: Amount::ZERO,
        }
    }
}

/// Writes the charge through the sink — extending the hold while the store
/// is slow — then commits it in the actor; a charge not written releases or
/// forfeits the hold. It runs in a task of its own, so a client that goes
/// away mid-finish cannot leave one done without the other.
async fn record_then_commit(
    sink: Arc<dyn ChargeSink>,
    charge: NewCharge,
    call: CallContext,
    lease: Lease,
    hold_deadline_ms: i64,
) -> Result<Committed, Unfinished> {
    let request = charge.request_id.clone();
    let amount = charge.amount;
    let written = record_holding(
        sink.record(charge, call),
        &lease,
        &request,
        hold_deadline_ms,
    )
    .await;
    match written {
        Ok(ChargeOutcome::Recorded) | Ok(ChargeOutcome::Duplicate) => {
            match lease.commit(request, amount).await {
                Ok(committed) => {
                    hold_closed("committed");
                    Ok(committed)
                }
                Err(error) => {
                    // The ledger has the charge, the actor not (its hold had
                    // expired): the actor counts it as spent, so its
                    // allowance never pays it twice, and is reloaded before
                    // its next call.
                    let _ = lease.absorb(amount).await;
                    lease.mark_stale();
                    Err(Unfinished::RecordedNotCommitted(error.to_string()))
                }
            }
        }
        Ok(other) => {
            // The ledger and the actor disagree on what the key has spent
            // (the ledger's guard refused): reload the actor.
            lease.mark_stale();
            let _ = lease.release(request).await;
            hold_closed("released");
            Err(Unfinished::NotRecorded(format!(
                "the ledger refused the charge: {other:?}"
            )))
        }
        Err(error) => {
            // Whether the charge was recorded is unknown (a publish whose
            // confirm never came may still land, a commit that errored may
            // have committed): the hold is forfeited — never spent again
            // here — rather than released.
            let _ = lease.forfeit(request).await;
            hold_closed("forfeited");
            Err(Unfinished::NotRecorded(error.to_string()))
        }
    }
}

/// Leases the key's actor for a caller whose token matches (a key that
/// cannot spend is answered from its stored state), unless settlement holds
/// the key's payer back.
async fn lease_key(
    gateway: &Gateway,
    key_id: &KeyId,
    token: Option<&str>,
    model: &Model,
    prompt_tokens_max: u64,
) -> Result<Lease, CallFailure> {
    let lease = match gateway.registry.acquire(key_id).await {
        Ok(lease) => lease,
        Err(AcquireError::CannotSpend(state)) => {
            check_token(&state.token_sha256, token)?;
            return Err(cannot_spend(&state, model, prompt_tokens_max));
        }
        Err(error) => return Err(acquire_error(error)),
    };
    check_token(lease.token_sha256(), token)?;
    if let Some((wallet, chain)) = lease.payer() {
        if let Some(held) = gateway.leases.fences.fenced(&wallet, chain) {
            return Err(CallFailure::PayerHeldBack(Box::new(held)));
        }
    }
    Ok(lease)
}

/// What a call will hold, and when it must be over.
struct Quote {
    hold: Hold,
    ends_by: tokio::time::Instant,
}

impl Quote {
    /// The call's most cost (`requested_max_tokens` of output) and least
    /// (one token; none for a call that asks for no output, such as
    /// embeddings), and its deadlines.
    fn of(
        gateway: &Gateway,
        model: &Model,
        prompt_tokens_max: u64,
        requested_max_tokens: u64,
        stream: bool,
    ) -> Result<Quote, CallFailure> {
        let cost = |output| {
            model.price.cost(prompt_tokens_max, output).map_err(|_| {
                CallFailure::invalid_param("messages", "make the call cost more than any budget")
            })
        };
        let wanted = cost(requested_max_tokens)?;
        let minimum = cost(requested_max_tokens.min(1))?;
        let longest = if stream {
            gateway.timeouts.stream_max
        } else {
            gateway.timeouts.upstream
        };
        // The call must end by `ends_by` (the upstream, or the whole stream);
        // its hold outlives that by the slack, so it never expires under a
        // call still running.
        let ends_by = tokio::time::Instant::now() + longest;
        let deadline_ms = now_ms()
            .saturating_add(i64::try_from(longest.as_millis()).unwrap_or(i64::MAX / 2))
            .saturating_add(gateway.timeouts.hold_slack_ms);
        Ok(Quote {
            hold: Hold {
                wanted,
                minimum,
                deadline_ms,
            },
            ends_by,
        })
    }
}

/// Holds the call's cost on its key's actor (topping the lease up when it
/// must); a refusal is the call's answer.
async fn take_hold(
    gateway: &Gateway,
    lease: &Lease,
    key_id: &KeyId,
    request: &RequestId,
    hold: Hold,
) -> Result<Reserved, CallFailure> {
    match reserve_from_lease(gateway, lease, key_id, request, hold).await {
        Ok(reserved) => {
            metrics::counter!("tollgate_holds_opened_total").increment(1);
            Ok(reserved)
        }
        Err(Refused::Call(error)) => Err(reserve_error(lease, error, hold.minimum).await),
        Err(Refused::TopUp(error)) => Err(CallFailure::LedgerUnavailable {
            cause: error.to_string(),
        }),
    }
}

/// Counts a hold's end (`tollgate_holds_closed_total`; holds that expire in
/// their actor are `tollgate_holds_expired_total`).
fn hold_closed(how: &'static str) {
    metrics::counter!("tollgate_holds_closed_total", "how" => how).increment(1);
}

impl PaidCall {
    /// Frees the hold without charging (the upstream failed), and waits
    /// until the actor has done so.
    pub async fn release(mut self) {
        if let Some(lease) = self.lease.take() {
            hold_closed("released");
            if let Err(error) = lease.release(self.request.clone()).await {
                tracing::warn!(%error, "releasing a hold failed; it expires on its deadline");
            }
        }
    }
}

impl Drop for PaidCall {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        // Not finished: the upstream failed or the client left before a
        // non-streamed answer. Nothing is charged; the lease (and so the
        // key's in-flight slot) lives until the release is done.
        let request = self.request.clone();
        hold_closed("released");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = lease.release(request).await {
                    tracing::warn!(%error, "releasing a hold failed; it expires on its deadline");
                }
            });
        }
    }
}

/// How a finish fell short.
enum Unfinished {
    /// Nothing was written; the hold is released.
    NotRecorded(String),
    /// The charge is written; only the actor's commit failed.
    RecordedNotCommitted(String),
}

/// The presented token must hash to the stored hash (`None`: the caller was
/// authenticated otherwise). Constant time.
fn check_token(stored_sha256: &str, token: Option<&str>) -> Result<(), CallFailure> {
    if let Some(token) = token {
        let stored = stored_sha256.as_bytes();
        if !bool::from(stored.ct_eq(token_sha256(token).as_bytes())) {
            return Err(CallFailure::InvalidToken);
        }
    }
    Ok(())
}

/// A key that cannot spend, answered from its stored state (no actor).
fn cannot_spend(state: &KeyState, model: &Model, prompt_tokens_max: u64) -> CallFailure {
    match state.status {
        BudgetStatus::Revoked => return CallFailure::KeyRevoked,
        BudgetStatus::Superseded => return CallFailure::SessionSuperseded,
        BudgetStatus::Active if state.expires_at_ms <= now_ms() => return CallFailure::KeyExpired,
        BudgetStatus::Active => {}
    }
    let minimum = model
        .price
        .cost(prompt_tokens_max, 1)
        .unwrap_or(Amount::MAX);
    let remaining = state.limit.saturating_sub(state.spent);
    CallFailure::InsufficientBudget {
        remaining,
        available: remaining,
        minimum,
        budget: Some(BudgetView {
            limit: state.limit,
            used: state.spent,
            final_amount: Some(Amount::ZERO),
        }),
    }
}

/// A status refusal (revoked, superseded, expired) or another reserve error.
fn reserve_refused(error: ReserveError) -> CallFailure {
    match error {
        ReserveError::Revoked => CallFailure::KeyRevoked,
        ReserveError::Superseded => CallFailure::SessionSuperseded,
        ReserveError::Expired => CallFailure::KeyExpired,
        ReserveError::TooManyHolds => CallFailure::TooManyHolds,
        other => CallFailure::internal(other),
    }
}

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn acquire_error(error: AcquireError) -> CallFailure {
    match error {
        AcquireError::UnknownKey => CallFailure::InvalidToken,
        AcquireError::TooManyInFlight { max } => CallFailure::TooManyInFlight { max },
        AcquireError::Full { .. } => CallFailure::AtCapacity,
        AcquireError::Load(cause) => CallFailure::KeyUnavailable {
            cause: cause.to_string(),
        },
        AcquireError::CannotSpend(_) => {
            CallFailure::internal("a refused key reached acquire_error")
        }
    }
}

async fn reserve_error(lease: &Lease, error: CallError, minimum: Amount) -> CallFailure {
    match error {
        CallError::Reserve(ReserveError::InsufficientBudget { remaining, .. }) => {
            // The reserve's `remaining` is after holds: `available` here.
            let snapshot = lease.snapshot().await.ok();
            CallFailure::InsufficientBudget {
                remaining: snapshot.map_or(remaining, |s| s.limit.saturating_sub(s.spent)),
                available: remaining,
                minimum,
                budget: snapshot.map(|s| BudgetView {
                    limit: s.limit,
                    used: s.spent,
                    final_amount: Some(Amount::ZERO),
                }),
            }
        }
        CallError::Reserve(refusal) => reserve_refused(refusal),
        CallError::Settle(_) => CallFailure::internal(error),
        CallError::Unavailable => CallFailure::KeyUnavailable {
            cause: "the key's actor is gone".into(),
        },
    }
}
