//! Property: the affordable output is the largest that fits the budget.
#![allow(clippy::unwrap_used)]

use ledger::pricing::Price;
use ledger::Amount;
use proptest::prelude::*;

proptest! {
    #[test]
    fn affordable_output_fits_and_one_more_does_not(
        input_price in 0u64..50_000_000,
        output_price in 1u64..50_000_000,
        fee in 0u64..10_000,
        min_charge in 0u64..10_000,
        input_tokens in 0u64..200_000,
        budget in 0u64..100_000_000,
    ) {
        let price = Price {
            version: "v".into(),
            input_atomic_per_million: input_price,
            output_atomic_per_million: output_price,
            request_fee_atomic: fee,
            min_charge_atomic: min_charge,
        };
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
        output_price in 0u64..50_000_000,
        fee in 0u64..1_000,
        min_charge in 1u64..1_000,
        input_tokens in 0u64..2_000_000,
        output_tokens in 0u64..2_000_000,
        hold_extra in 0u64..1_000_000,
    ) {
        let price = Price {
            version: "v".into(),
            input_atomic_per_million: input_price,
            output_atomic_per_million: output_price,
            request_fee_atomic: fee,
            min_charge_atomic: min_charge,
        };
        // A hold is at least a minimal call's price.
        let hold = price.cost(0, 0).unwrap().atomic() + hold_extra;
        let hold = Amount::from_atomic(hold).unwrap();
        let bill = price.bill(input_tokens, output_tokens, hold);
        prop_assert!(bill.amount <= hold);
        prop_assert_eq!(price.cost(bill.input_tokens, bill.output_tokens).unwrap(), bill.amount);
        prop_assert!(bill.input_tokens <= input_tokens && bill.output_tokens <= output_tokens);
        if price.cost(input_tokens, output_tokens).unwrap() <= hold {
            prop_assert_eq!((bill.input_tokens, bill.output_tokens), (input_tokens, output_tokens));
        }
    }
}
