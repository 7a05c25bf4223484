//! Exact money: currency precision and deterministic rounding.
//!
//! Amounts are `rust_decimal::Decimal` end to end. Rounding is half away from zero ("commercial"
//! rounding, what F&O does for amount EDTs), always to the currency's number of decimals.

use std::collections::BTreeMap;

use rust_decimal::{Decimal, RoundingStrategy};

/// ISO 4217 minor units of the currencies a ledger most commonly uses. Anything else must be
/// declared in the instance config (`[currencies]`) so a silent 2-decimal guess never happens.
const MINOR_UNITS: &[(&str, u32)] = &[
    ("AED", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("MYR", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PLN", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TRY", 2),
    ("TWD", 2),
    ("USD", 2),
    ("ZAR", 2),
];

/// Decimal places per currency code: built-in ISO table plus instance overrides.
#[derive(Debug, Clone, Default)]
pub struct CurrencyPrecision {
    overrides: BTreeMap<String, u32>,
}

impl CurrencyPrecision {
    pub fn with_overrides(overrides: BTreeMap<String, u32>) -> Self {
        Self {
            overrides: overrides
                .into_iter()
                .map(|(k, v)| (k.to_ascii_uppercase(), v))
                .collect(),
        }
    }

    /// Decimal places for `code`, or `None` when the currency is unknown.
    pub fn decimals(&self, code: &str) -> Option<u32> {
        let code = code.to_ascii_uppercase();
        if let Some(d) = self.overrides.get(&code) {
            return Some(*d);
        }
        MINOR_UNITS
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| *d)
    }
}

/// Rounds half away from zero to `decimals` places.
pub fn round(amount: Decimal, decimals: u32) -> Decimal {
    amount.round_dp_with_strategy(decimals, RoundingStrategy::MidpointAwayFromZero)
}

/// Parses an amount written as text (CSV cells, string measures). Strict: optional sign, digits,
/// one decimal point, optional exponent. Thousands separators and currency symbols are refused
/// rather than guessed at, because `1,234` means different things in different locales.
pub fn parse_amount_text(text: &str) -> Option<Decimal> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    let ok = t
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'));
    if !ok {
        return None;
    }
    if t.contains(['e', 'E']) {
        Decimal::from_scientific(t).ok()
    } else {
        t.parse::<Decimal>().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn rounds_half_away_from_zero() {
        assert_eq!(round(d("2.345"), 2), d("2.35"));
        assert_eq!(round(d("-2.345"), 2), d("-2.35"));
        assert_eq!(round(d("2.344999"), 2), d("2.34"));
        assert_eq!(round(d("1234.5"), 0), d("1235"));
    }

    #[test]
    fn precision_table_and_overrides() {
        let p = CurrencyPrecision::default();
        assert_eq!(p.decimals("usd"), Some(2));
        assert_eq!(p.decimals("JPY"), Some(0));
        assert_eq!(p.decimals("KWD"), Some(3));
        assert_eq!(p.decimals("XYZ"), None);
        let p = CurrencyPrecision::with_overrides([("xyz".to_string(), 4)].into());
        assert_eq!(p.decimals("XYZ"), Some(4));
    }

    #[test]
    fn text_amounts_are_strict() {
        assert_eq!(parse_amount_text(" 0.1 "), Some(d("0.1")));
        assert_eq!(parse_amount_text("-12.50"), Some(d("-12.50")));
        assert_eq!(parse_amount_text("1.5E3"), Some(d("1500")));
        assert_eq!(parse_amount_text("1,234.00"), None);
        assert_eq!(parse_amount_text("$5"), None);
        assert_eq!(parse_amount_text("abc"), None);
        assert_eq!(parse_amount_text(""), None);
    }
}
