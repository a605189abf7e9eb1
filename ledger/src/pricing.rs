//! Pricing: a versioned price per model, and the exact integer arithmetic of
//! the cost formula. The gateway quotes with this code and the ledger pool re-prices
//! with it, so both agree to the atomic unit.
//!
//! A usage is [`Tokens`]: input tokens — some of them read from the
//! upstream's prompt cache (`cached`), some written to it (`cache_write`),
//! the rest plain — and output tokens. It costs
//!
//! `max(ceil((plain × in_price + cached × cached_price + write × write_price) / 10^6)
//! + ceil(out × out_price / 10^6) + fee, min_charge)`,
//!
//! prices in USDC atomic units per million tokens: one ceiling over the
//! input's parts, so a usage without cache tokens costs exactly
//! `ceil(in × in_price / 10^6) + …`, as before the cache prices existed. A
//! hold ([`Price::cost`], [`Price::affordable_output_tokens`]) prices its
//! input bound at the highest of the three input prices, so no split of that
//! input bills more than the hold. No call is free (`min_charge ≥ 1`,
//! checked by the settings), so a key's budget bounds the number of charges
//! it can write; every step is checked and computed in `u128`, so no token
//! count or price can overflow it silently.

use crate::Amount;

/// One million: prices are per million tokens.
const PER_MILLION: u128 = 1_000_000;

/// One model's price under one price version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    /// Recorded with every charge priced by it.
    pub version: String,
    /// Input tokens neither read from nor written to a prompt cache.
    pub input_atomic_per_million: u64,
    /// Input tokens read from the upstream's prompt cache (OpenAI's
    /// `cached_tokens`, Anthropic's `cache_read_input_tokens`).
    pub cached_input_atomic_per_million: u64,
    /// Input tokens written to the upstream's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`).
    pub cache_write_atomic_per_million: u64,
    pub output_atomic_per_million: u64,
    pub request_fee_atomic: u64,
    /// The least a call costs, whatever its tokens.
    pub min_charge_atomic: u64,
}

/// A call's usage: `input` tokens, of which `cached` were read from the
/// upstream's prompt cache and `cache_write` written to it, and `output`
/// tokens. Always `cached + cache_write ≤ input` (the constructor makes it
/// so): the cache counts are parts of the input, never beside it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Tokens {
    input: u64,
    cached: u64,
    cache_write: u64,
    output: u64,
}

impl Tokens {
    /// A usage, its cache counts saturated to fit its input: `cached` at
    /// most `input`, `cache_write` at most what `cached` leaves of it.
    pub fn new(input: u64, cached: u64, cache_write: u64, output: u64) -> Tokens {
        let cached = cached.min(input);
        let cache_write = cache_write.min(input.saturating_sub(cached));
        Tokens {
            input,
            cached,
            cache_write,
            output,
        }
    }

    /// A usage with no cache tokens.
    pub fn uncached(input: u64, output: u64) -> Tokens {
        Tokens::new(input, 0, 0, output)
    }

    /// All input tokens, the cached and cache-written ones included.
    pub fn input(&self) -> u64 {
        self.input
    }

    /// The input tokens read from the upstream's prompt cache.
    pub fn cached(&self) -> u64 {
        self.cached
    }

    /// The input tokens written to the upstream's prompt cache.
    pub fn cache_write(&self) -> u64 {
        self.cache_write
    }

    /// The input tokens neither read from nor written to a cache.
    pub fn plain_input(&self) -> u64 {
        // `cached + cache_write ≤ input` (the constructor).
        self.input
            .saturating_sub(self.cached)
            .saturating_sub(self.cache_write)
    }

    pub fn output(&self) -> u64 {
        self.output
    }

    /// Each of its counts at most `other`'s.
    pub fn within(&self, other: &Tokens) -> bool {
        self.input <= other.input
            && self.cached <= other.cached
            && self.cache_write <= other.cache_write
            && self.plain_input() <= other.plain_input()
            && self.output <= other.output
    }

    /// The same input, `output` output tokens.
    fn with_output(self, output: u64) -> Tokens {
        Tokens { output, ..self }
    }

    /// Its input lowered to `input` tokens (`≤ self.input`) — the plain
    /// ones go first, then the cache writes, then the cached ones — and no
    /// output. Its cost never falls as `input` grows.
    fn input_lowered_to(self, input: u64) -> Tokens {
        let cached = self.cached.min(input);
        let cache_write = self.cache_write.min(input.saturating_sub(cached));
        Tokens::new(input.min(self.input), cached, cache_write, 0)
    }
}

/// What a call is billed: a usage and its exact price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Billed {
    /// The usage billed: each count at most the usage's.
    pub tokens: Tokens,
    /// Exactly `cost_of(tokens)`, never above the hold.
    pub amount: Amount,
}

/// A cost that cannot be represented as an [`Amount`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the call's cost exceeds the largest representable amount")]
pub struct CostOverflow;

fn per_million_ceil(tokens: u64, atomic_per_million: u64) -> u128 {
    (u128::from(tokens) * u128::from(atomic_per_million)).div_ceil(PER_MILLION)
}

impl Price {
    /// The highest of the three input prices: what a hold prices its input
    /// bound at, whatever part of it turns out cached.
    fn highest_input_price(&self) -> u64 {
        self.input_atomic_per_million
            .max(self.cached_input_atomic_per_million)
            .max(self.cache_write_atomic_per_million)
    }

    /// The input's share of a usage's cost: one ceiling over its parts.
    /// No overflow: the parts sum to at most `input < 2^64` tokens, each at
    /// a price `< 2^64`, so the sum stays below `2^128`.
    fn input_part(&self, tokens: &Tokens) -> u128 {
        let part = |tokens: u64, price: u64| u128::from(tokens) * u128::from(price);
        (part(tokens.plain_input(), self.input_atomic_per_million)
            + part(tokens.cached, self.cached_input_atomic_per_million)
            + part(tokens.cache_write, self.cache_write_atomic_per_million))
        .div_ceil(PER_MILLION)
    }

    /// The cost of an input share, `output_tokens`, the fee and the minimum.
    fn total(&self, input_part: u128, output_tokens: u64) -> Result<Amount, CostOverflow> {
        let total = input_part
            + per_million_ceil(output_tokens, self.output_atomic_per_million)
            + u128::from(self.request_fee_atomic);
        let total = total.max(u128::from(self.min_charge_atomic));
        u64::try_from(total)
            .ok()
            .and_then(Amount::from_atomic)
            .ok_or(CostOverflow)
    }

    /// What a usage costs: its exact price, the amount a charge of it is.
    pub fn cost_of(&self, tokens: Tokens) -> Result<Amount, CostOverflow> {
        self.total(self.input_part(&tokens), tokens.output)
    }

    /// The most a call with these token counts can cost, however its input
    /// splits into plain, cached and cache-written tokens: the input priced
    /// at the highest input price. What a hold is; with the three input
    /// prices equal (the default), exactly `cost_of(Tokens::uncached(…))`.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> Result<Amount, CostOverflow> {
        let input_part = per_million_ceil(input_tokens, self.highest_input_price());
        self.total(input_part, output_tokens)
    }

    /// What a call that used `tokens` is billed when `hold` is the most it
    /// may cost: the usage itself when its price fits, else the usage
    /// lowered to what the hold pays for — output first, then input (its
    /// plain tokens first, then cache writes, then cached ones) — so that
    /// the amount is always exactly the billed usage's price (the ledger row
    /// never disagrees with its amount) and each billed count is at most the
    /// usage's. A hold of `cost(input, output)` bills any usage within
    /// `input` and `output`, however split, in full.
    pub fn bill(&self, tokens: Tokens, hold: Amount) -> Billed {
        let billed = |tokens: Tokens| {
            self.cost_of(tokens)
                .ok()
                .filter(|amount| *amount <= hold)
                .map(|amount| Billed { tokens, amount })
        };
        if let Some(full) = billed(tokens) {
            return full;
        }
        let input_part = self.input_part(&tokens);
        if let Some(output) = self.output_within(hold, input_part, tokens.output) {
            if let Some(fits) = billed(tokens.with_output(output)) {
                return fits;
            }
        }
        // Even the input alone costs more than the hold: the most input that
        // fits (the cost is monotonic in it), no output.
        let (mut low, mut high) = (0u64, tokens.input);
        while low < high {
            let middle = low + (high - low).div_ceil(2);
            if billed(tokens.input_lowered_to(middle)).is_some() {
                low = middle;
            } else {
                high = middle - 1;
            }
        }
        billed(tokens.input_lowered_to(low)).unwrap_or(Billed {
            tokens: Tokens::default(),
            amount: hold.min(self.cost_of(Tokens::default()).unwrap_or(hold)),
        })
    }

    /// The most output tokens a call with `input_tokens` can afford within
    /// `budget`, capped at `cap`, its input priced as in [`Price::cost`];
    /// `None` when not even zero output fits.
    pub fn affordable_output_tokens(
        &self,
        budget: Amount,
        input_tokens: u64,
        cap: u64,
    ) -> Option<u64> {
        let input_part = per_million_ceil(input_tokens, self.highest_input_price());
        self.output_within(budget, input_part, cap)
    }

    /// The most output tokens, at most `cap`, that fit `budget` beside an
    /// input share of `input_part`; `None` when not even zero output fits.
    fn output_within(&self, budget: Amount, input_part: u128, cap: u64) -> Option<u64> {
        if budget.atomic() < self.min_charge_atomic {
            return None;
        }
        let fixed = input_part + u128::from(self.request_fee_atomic);
        let left = u128::from(budget.atomic()).checked_sub(fixed)?;
        if self.output_atomic_per_million == 0 {
            return Some(cap);
        }
        // ceil(out × p / 10^6) ≤ left  ⇔  out × p ≤ left × 10^6  (integers).
        let most = left * PER_MILLION / u128::from(self.output_atomic_per_million);
        Some(u64::try_from(most).unwrap_or(u64::MAX).min(cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> Price {
        Price {
            version: "2026-11-01".into(),
            input_atomic_per_million: 1_000_000,
            cached_input_atomic_per_million: 1_000_000,
            cache_write_atomic_per_million: 1_000_000,
            output_atomic_per_million: 2_000_000,
            request_fee_atomic: 0,
            min_charge_atomic: 0,
        }
    }

    /// Plain input 4, cached 1, written 5, output 2 atomic units a token.
    fn cached() -> Price {
        Price {
            input_atomic_per_million: 4_000_000,
            cached_input_atomic_per_million: 1_000_000,
            cache_write_atomic_per_million: 5_000_000,
            ..echo()
        }
    }

    #[test]
    fn cost_rounds_each_side_up() {
        let p = echo();
        assert_eq!(p.cost(0, 0).unwrap(), Amount::ZERO);
        // 1 input token at 1 USDC/M = 1 atomic; 1 output token at 2 USDC/M = 2 atomic.
        assert_eq!(p.cost(1, 1).unwrap().atomic(), 3);
        let odd = Price {
            input_atomic_per_million: 1,
            cached_input_atomic_per_million: 1,
            cache_write_atomic_per_million: 1,
            output_atomic_per_million: 1,
            request_fee_atomic: 5,
            ..echo()
        };
        assert_eq!(
            odd.cost(1, 1).unwrap().atomic(),
            7,
            "each fraction rounds up, then the fee"
        );
        assert_eq!(odd.cost(1_000_000, 0).unwrap().atomic(), 6);
    }

    #[test]
    fn tokens_keep_their_cache_counts_within_the_input() {
        let t = Tokens::new(10, 4, 3, 2);
        assert_eq!(
            (
                t.input(),
                t.cached(),
                t.cache_write(),
                t.plain_input(),
                t.output()
            ),
            (10, 4, 3, 3, 2)
        );
        let over = Tokens::new(10, 8, 5, 0);
        assert_eq!(
            (over.cached(), over.cache_write(), over.plain_input()),
            (8, 2, 0)
        );
        let all = Tokens::new(3, 9, 9, 1);
        assert_eq!(
            (all.cached(), all.cache_write(), all.plain_input()),
            (3, 0, 0)
        );
        assert!(Tokens::new(5, 2, 1, 1).within(&t));
        assert!(!Tokens::new(5, 5, 0, 1).within(&t), "more cached than used");
    }

    #[test]
    fn one_ceiling_over_the_input_parts() {
        let p = Price {
            input_atomic_per_million: 500_000,
            cached_input_atomic_per_million: 500_000,
            cache_write_atomic_per_million: 500_000,
            ..echo()
        };
        // Three half-unit tokens, one of each kind: ceil(1.5) = 2, not 3.
        assert_eq!(p.cost_of(Tokens::new(3, 1, 1, 0)).unwrap().atomic(), 2);
        assert_eq!(p.cost(3, 0), p.cost_of(Tokens::new(3, 1, 1, 0)));
        let c = cached();
        // 3 plain × 4 + 4 cached × 1 + 3 written × 5 + 2 output × 2.
        assert_eq!(c.cost_of(Tokens::new(10, 4, 3, 2)).unwrap().atomic(), 35);
        // The hold prices all input at the highest input price, 5.
        assert_eq!(c.cost(10, 2).unwrap().atomic(), 54);
        assert_eq!(
            c.affordable_output_tokens(Amount::from_atomic(54).unwrap(), 10, 99),
            Some(2)
        );
    }

    #[test]
    fn equal_prices_cost_what_they_always_did() {
        let p = echo();
        for (input, cached, write, output) in [(7, 3, 2, 10), (1_000, 1_000, 0, 1), (5, 0, 5, 0)] {
            assert_eq!(
                p.cost_of(Tokens::new(input, cached, write, output)),
                p.cost(input, output)
            );
        }
    }

    #[test]
    fn billing_never_passes_the_hold_and_prices_exactly() {
        let p = echo();
        let hold = Amount::from_atomic(237).unwrap();
        let fits = p.bill(Tokens::uncached(7, 10), hold);
        assert_eq!(
            (fits.tokens, fits.amount.atomic()),
            (Tokens::uncached(7, 10), 27)
        );
        let capped = p.bill(Tokens::uncached(1_000_000, 1_000_000), hold);
        assert_eq!(capped.tokens, Tokens::uncached(237, 0));
        assert_eq!(capped.amount, hold);
        let output_capped = p.bill(Tokens::uncached(37, 1_000), hold);
        assert_eq!(output_capped.tokens, Tokens::uncached(37, 100));
        assert_eq!(output_capped.amount, p.cost(37, 100).unwrap());
    }

    #[test]
    fn billing_lowers_plain_input_first_then_writes_then_cached() {
        let c = cached();
        // 10 plain (40) + 10 written (50) + 10 cached (10) = 100 of input.
        let used = Tokens::new(30, 10, 10, 5);
        let hold = Amount::from_atomic(60).unwrap();
        let billed = c.bill(used, hold);
        // Plain tokens go first: 10 cached (10) + 10 written (50) = 60.
        assert_eq!(billed.tokens, Tokens::new(20, 10, 10, 0));
        assert_eq!(billed.amount, hold);
        let billed = c.bill(used, Amount::from_atomic(24).unwrap());
        assert_eq!(billed.tokens, Tokens::new(12, 10, 2, 0));
        assert_eq!(billed.amount.atomic(), 20);
        assert!(billed.tokens.within(&used));
        // Output lowered first, the input whole.
        let billed = c.bill(used, Amount::from_atomic(104).unwrap());
        assert_eq!(billed.tokens, Tokens::new(30, 10, 10, 2));
    }

    #[test]
    fn no_call_costs_less_than_the_minimum() {
        let p = Price {
            min_charge_atomic: 4,
            ..echo()
        };
        assert_eq!(p.cost(0, 0).unwrap().atomic(), 4);
        assert_eq!(p.cost(1, 1).unwrap().atomic(), 4);
        assert_eq!(p.cost(2, 1).unwrap().atomic(), 4);
        assert_eq!(p.cost(3, 1).unwrap().atomic(), 5);
        let three = Amount::from_atomic(3).unwrap();
        assert_eq!(p.affordable_output_tokens(three, 0, 10), None);
        let four = Amount::from_atomic(4).unwrap();
        assert_eq!(p.affordable_output_tokens(four, 0, 10), Some(2));
    }

    #[test]
    fn huge_costs_are_refused_not_wrapped() {
        let p = Price {
            input_atomic_per_million: u64::MAX,
            ..echo()
        };
        assert_eq!(p.cost(u64::MAX, 0), Err(CostOverflow));
        let all_max = Price {
            input_atomic_per_million: u64::MAX,
            cached_input_atomic_per_million: u64::MAX,
            cache_write_atomic_per_million: u64::MAX,
            ..echo()
        };
        let tokens = Tokens::new(u64::MAX, u64::MAX / 3, u64::MAX / 3, u64::MAX);
        assert_eq!(all_max.cost_of(tokens), Err(CostOverflow));
    }

    #[test]
    fn affordable_output_is_exact() {
        let p = echo();
        let budget = Amount::from_atomic(10).unwrap();
        // 4 input tokens cost 4; 6 atomic left buys 3 output tokens at 2 each.
        assert_eq!(p.affordable_output_tokens(budget, 4, 1_000), Some(3));
        assert_eq!(p.cost(4, 3).unwrap(), budget);
        assert_eq!(p.affordable_output_tokens(budget, 4, 2), Some(2), "capped");
        assert_eq!(p.affordable_output_tokens(budget, 11, 1_000), None);
        let free_output = Price {
            output_atomic_per_million: 0,
            ..echo()
        };
        assert_eq!(
            free_output.affordable_output_tokens(budget, 4, 77),
            Some(77)
        );
    }
}
