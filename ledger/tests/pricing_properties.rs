//! Properties of the pricing: the affordable output is the largest that fits
//! the budget; a bill is exactly its usage's price, within its hold and
//! within the usage, part by part; a hold pays for any split of its input
//! bound into plain, cached and cache-written tokens.
#![allow(clippy::unwrap_used)]

use ledger::pricing::{Price, Tokens};
use ledger::Amount;
use proptest::prelude::*;

/// A price from its parts (the version does not price).
fn price_of(input: u64, cached: u64, write: u64, output: u64, fee: u64, min: u64) -> Price {
    Price {
        version: "v".into(),
        input_atomic_per_million: input,
        cached_input_atomic_per_million: cached,
        cache_write_atomic_per_million: write,
        output_atomic_per_million: output,
        request_fee_atomic: fee,
        min_charge_atomic: min,
    }
}

proptest! {
    #[test]
    fn affordable_output_fits_and_one_more_does_not(
        input_price in 0u64..50_000_000,
        cached_price in 0u64..50_000_000,
        write_price in 0u64..50_000_000,
        output_price in 1u64..50_000_000,
        fee in 0u64..10_000,
        min_charge in 0u64..10_000,
        input_tokens in 0u64..200_000,
        budget in 0u64..100_000_000,
    ) {
        let price = price_of(input_price, cached_price, write_price, output_price, fee, min_charge);
        let budget = Amount::from_atomic(budget).unwrap();
        match price.affordable_output_tokens(budget, input_tokens, u64::MAX) {
            Some(out) => {
                prop_assert!(price.cost(input_tokens, out).unwrap() <= budget);
                prop_assert!(price.cost(input_tokens, out + 1).unwrap() > budget);
            }
            None => prop_assert!(price.cost(input_tokens, 0).unwrap() > budget),
        }
    }
}

proptest! {
    #[test]
    fn a_bill_is_exactly_its_usage_price_and_within_the_hold(
        input_price in 0u64..50_000_000,
        cached_price in 0u64..50_000_000,
        write_price in 0u64..50_000_000,
        output_price in 0u64..50_000_000,
        fee in 0u64..1_000,
        min_charge in 1u64..1_000,
        input_tokens in 0u64..2_000_000,
        cached in 0u64..2_000_000,
        cache_write in 0u64..2_000_000,
        output_tokens in 0u64..2_000_000,
        hold_extra in 0u64..1_000_000,
    ) {
        let price = price_of(input_price, cached_price, write_price, output_price, fee, min_charge);
        let used = Tokens::new(input_tokens, cached, cache_write, output_tokens);
        // A hold is at least a minimal call's price.
        let hold = price.cost(0, 0).unwrap().atomic() + hold_extra;
        let hold = Amount::from_atomic(hold).unwrap();
        let bill = price.bill(used, hold);
        prop_assert!(bill.amount <= hold);
        prop_assert_eq!(price.cost_of(bill.tokens).unwrap(), bill.amount);
        prop_assert!(bill.tokens.within(&used), "{:?} billed of {:?}", bill.tokens, used);
        prop_assert!(bill.tokens.cached() + bill.tokens.cache_write() <= bill.tokens.input());
        if price.cost_of(used).unwrap() <= hold {
            prop_assert_eq!(bill.tokens, used);
        }
    }
}

proptest! {
    #[test]
    fn a_hold_pays_for_any_split_of_its_bound(
        input_price in 0u64..50_000_000,
        cached_price in 0u64..50_000_000,
        write_price in 0u64..50_000_000,
        output_price in 0u64..50_000_000,
        fee in 0u64..1_000,
        min_charge in 1u64..1_000,
        prompt_max in 0u64..2_000_000,
        max_tokens in 0u64..2_000_000,
        input_share in 0u64..=1_000,
        cached_share in 0u64..=1_000,
        write_share in 0u64..=1_000,
        output_share in 0u64..=1_000,
    ) {
        let price = price_of(input_price, cached_price, write_price, output_price, fee, min_charge);
        let hold = price.cost(prompt_max, max_tokens).unwrap();
        // Any usage within the hold's bounds, split any way.
        let input = prompt_max * input_share / 1_000;
        let cached = input * cached_share / 1_000;
        let cache_write = (input - cached) * write_share / 1_000;
        let used = Tokens::new(input, cached, cache_write, max_tokens * output_share / 1_000);
        prop_assert!(price.cost_of(used).unwrap() <= hold);
        let bill = price.bill(used, hold);
        prop_assert_eq!(bill.tokens, used, "billed in full");
        prop_assert_eq!(bill.amount, price.cost_of(used).unwrap());
    }
}

proptest! {
    #[test]
    fn with_equal_input_prices_any_split_costs_the_uncached_price(
        input_price in 0u64..50_000_000,
        output_price in 0u64..50_000_000,
        fee in 0u64..1_000,
        min_charge in 0u64..1_000,
        input_tokens in 0u64..2_000_000,
        cached in 0u64..2_000_000,
        cache_write in 0u64..2_000_000,
        output_tokens in 0u64..2_000_000,
        hold_extra in 0u64..1_000_000,
    ) {
        let price = price_of(input_price, input_price, input_price, output_price, fee, min_charge);
        let used = Tokens::new(input_tokens, cached, cache_write, output_tokens);
        let plain = Tokens::uncached(input_tokens, output_tokens);
        prop_assert_eq!(price.cost_of(used), price.cost(input_tokens, output_tokens));
        prop_assert_eq!(price.cost_of(plain), price.cost(input_tokens, output_tokens));
        let hold = Amount::from_atomic(price.cost(0, 0).unwrap().atomic() + hold_extra).unwrap();
        let (split, whole) = (price.bill(used, hold), price.bill(plain, hold));
        prop_assert_eq!(split.amount, whole.amount);
        prop_assert_eq!(
            (split.tokens.input(), split.tokens.output()),
            (whole.tokens.input(), whole.tokens.output())
        );
    }
}
