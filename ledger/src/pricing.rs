//! Pricing: a versioned price per model, and the exact integer arithmetic of
//! the cost formula. The gateway quotes with this code and the ledger pool re-prices
//! with it, so both agree to the atomic unit.
//!
//! `cost = max(ceil(in × in_price / 10^6) + ceil(out × out_price / 10^6) + fee,
//! min_charge)`, prices in USDC atomic units per million tokens. No call is
//! free (`min_charge ≥ 1`, checked by the settings), so a key's budget bounds
//! the number of charges it can write; every step is checked and
//! computed in `u128`, so no token count or price can overflow it silently.

use crate::Amount;

/// One million: prices are per million tokens.
const PER_MILLION: u128 = 1_000_000;

/// One model's price under one price version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    /// Recorded with every charge priced by it.
    pub version: String,
    pub input_atomic_per_million: u64,
    pub output_atomic_per_million: u64,
    pub request_fee_atomic: u64,
    /// The least a call costs, whatever its tokens.
    pub min_charge_atomic: u64,
}

/// What a call is billed: a usage and its exact price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Billed {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Exactly `cost(input_tokens, output_tokens)`, never above the hold.
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
    /// What a call with these token counts costs.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> Result<Amount, CostOverflow> {
        let total = per_million_ceil(input_tokens, self.input_atomic_per_million)
            + per_million_ceil(output_tokens, self.output_atomic_per_million)
            + u128::from(self.request_fee_atomic);
        let total = total.max(u128::from(self.min_charge_atomic));
        u64::try_from(total)
            .ok()
            .and_then(Amount::from_atomic)
            .ok_or(CostOverflow)
    }

    /// What a call that used `input_tokens` and `output_tokens` is billed
    /// when `hold` is the most it may cost: the usage itself when its price
    /// fits, else the usage lowered to what the hold pays for — output first,
    /// then input — so that the amount is always exactly the billed usage's
    /// price (the ledger row never disagrees with its amount).
    pub fn bill(&self, input_tokens: u64, output_tokens: u64, hold: Amount) -> Billed {
        let billed = |input_tokens, output_tokens| {
            self.cost(input_tokens, output_tokens)
                .ok()
                .filter(|amount| *amount <= hold)
                .map(|amount| Billed {
                    input_tokens,
                    output_tokens,
                    amount,
                })
        };
        if let Some(full) = billed(input_tokens, output_tokens) {
            return full;
        }
        if let Some(output) = self.affordable_output_tokens(hold, input_tokens, output_tokens) {
            if let Some(fits) = billed(input_tokens, output) {
                return fits;
            }
        }
        // Even the input alone costs more than the hold: the most input that
        // fits (the cost is monotonic in it), no output.
        let (mut low, mut high) = (0u64, input_tokens);
        while low < high {
            let middle = low + (high - low).div_ceil(2);
            if billed(middle, 0).is_some() {
                low = middle;
            } else {
                high = middle - 1;
            }
        }
        billed(low, 0).unwrap_or(Billed {
            input_tokens: 0,
            output_tokens: 0,
            amount: hold.min(self.cost(0, 0).unwrap_or(hold)),
        })
    }

    /// The most output tokens a call with `input_tokens` can afford within
    /// `budget`, capped at `cap`; `None` when not even zero output fits.
    pub fn affordable_output_tokens(
        &self,
        budget: Amount,
        input_tokens: u64,
        cap: u64,
    ) -> Option<u64> {
        if budget.atomic() < self.min_charge_atomic {
            return None;
        }
        let fixed = per_million_ceil(input_tokens, self.input_atomic_per_million)
            + u128::from(self.request_fee_atomic);
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
            output_atomic_per_million: 2_000_000,
            request_fee_atomic: 0,
            min_charge_atomic: 0,
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
    fn billing_never_passes_the_hold_and_prices_exactly() {
        let p = echo();
        let hold = Amount::from_atomic(237).unwrap();
        let fits = p.bill(7, 10, hold);
        assert_eq!(
            (fits.input_tokens, fits.output_tokens, fits.amount.atomic()),
            (7, 10, 27)
        );
        let capped = p.bill(1_000_000, 1_000_000, hold);
        assert_eq!((capped.input_tokens, capped.output_tokens), (237, 0));
        assert_eq!(capped.amount, hold);
        let output_capped = p.bill(37, 1_000, hold);
        assert_eq!(
            (output_capped.input_tokens, output_capped.output_tokens),
            (37, 100)
        );
        assert_eq!(output_capped.amount, p.cost(37, 100).unwrap());
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
