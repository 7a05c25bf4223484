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
        // No allocation for a code already in upper case (every line asks).
        let over = if code.bytes().any(|b| b.is_ascii_lowercase()) {
            self.overrides.get(&code.to_ascii_uppercase())
        } else {
            self.overrides.get(code)
        };
        if let Some(d) = over {
            return Some(*d);
        }
        MINOR_UNITS
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(code))
            .map(|(_, d)| *d)
    }
}

/// Rounds half away from zero to `decimals` places.
pub fn round(amount: Decimal, decimals: u32) -> Decimal {
    amount.round_dp_with_strategy(decimals, RoundingStrategy::MidpointAwayFromZero)
}

/// Parses an amount written as text (CSV cells, string measures, JSON number literals a
/// decimal could not take as they were written). Strict: optional sign, digits with at most one
/// decimal point, optional exponent. Thousands separators and currency symbols are refused
/// rather than guessed at, because `1,234` means different things in different locales.
///
/// A well-formed number is never "not a number": it is the decimal it denotes (digits beyond 28
/// decimal places rounded, as `Decimal::from_str` does, so `1e-40` is zero), or
/// [`AmountTextError::OutOfRange`] when its absolute value exceeds the largest decimal
/// (`1e400`, `-1e29`).
pub fn parse_amount_text(text: &str) -> Result<Decimal, AmountTextError> {
    let t = text.trim();
    let Some(shape) = NumberShape::of(t) else {
        return Err(AmountTextError::NotANumber);
    };
    let parsed = if shape.has_exponent {
        Decimal::from_scientific(t).ok()
    } else {
        t.parse::<Decimal>().ok()
    };
    if let Some(d) = parsed {
        return Ok(d);
    }
    // What the decimal parsers refuse: too large, too many digits for `from_scientific`, or
    // so small it rounds to zero. Decide from the shape, then parse the plain form.
    match shape.magnitude {
        _ if shape.digits.is_empty() => Ok(Decimal::ZERO),
        m if m > MAX_MAGNITUDE => Err(AmountTextError::OutOfRange),
        m if m < -(MAX_SCALE + 1) => Ok(Decimal::ZERO),
        _ => shape
            .plain()
            .parse::<Decimal>()
            .map_err(|_| AmountTextError::OutOfRange),
    }
}

/// The decimal exponent of `Decimal::MAX`'s leading digit (7.9e28).
const MAX_MAGNITUDE: i64 = 28;
/// Most decimal places a decimal holds.
const MAX_SCALE: i64 = 28;

/// Why a text amount was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountTextError {
    #[error("is not a number")]
    NotANumber,
    /// A well-formed number whose absolute value exceeds the largest decimal.
    #[error("is out of range: its absolute value exceeds the largest amount a decimal holds ({max})", max = Decimal::MAX)]
    OutOfRange,
}

/// A strictly well-formed number literal, `[+-]digits[.digits][(e|E)[+-]digits]` with at least
/// one mantissa digit, taken apart.
struct NumberShape {
    negative: bool,
    has_exponent: bool,
    /// The mantissa's digits from the first nonzero one on (empty for zero).
    digits: String,
    /// The decimal exponent of the first of `digits` (`123.4` → 2, `0.05` → -2, `5e28` → 28).
    magnitude: i64,
}

impl NumberShape {
    fn of(t: &str) -> Option<NumberShape> {
        let negative = t.starts_with('-');
        let body = t.strip_prefix(['+', '-']).unwrap_or(t);
        let (mantissa, exponent) = match body.split_once(['e', 'E']) {
            Some((m, e)) => {
                let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                // An exponent beyond i64 is still a number: clamp it, only its size matters.
                let e = e.parse::<i64>().unwrap_or(if e.starts_with('-') {
                    i64::MIN / 2
                } else {
                    i64::MAX / 2
                });
                (m, Some(e))
            }
            None => (body, None),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.len() + frac.len() == 0 || !digits_only(int) || !digits_only(frac) {
            return None;
        }
        let all = format!("{int}{frac}");
        let first = all.bytes().position(|b| b != b'0').unwrap_or(all.len());
        // Input lengths are far below i64::MAX.
        let lead = int.len() as i64 - first as i64 - 1;
        Some(NumberShape {
            negative,
            has_exponent: exponent.is_some(),
            digits: all[first..].to_string(),
            magnitude: lead.saturating_add(exponent.unwrap_or(0)),
        })
    }

    /// The number without exponent (`-1.5e3` → `-1500`); for magnitudes near the decimal range
    /// only, or the padding grows with the exponent.
    fn plain(&self) -> String {
        let point = self.magnitude + 1;
        let n = self.digits.len() as i64;
        let mut out = String::with_capacity(self.digits.len() + 32);
        if self.negative {
            out.push('-');
        }
        if point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-point) as usize));
            out.push_str(&self.digits);
        } else if point >= n {
            out.push_str(&self.digits);
            out.extend(std::iter::repeat_n('0', (point - n) as usize));
        } else {
            out.push_str(&self.digits[..point as usize]);
            out.push('.');
            out.push_str(&self.digits[point as usize..]);
        }
        out
    }
}

/// An amount total that a decimal cannot hold (beyond ±79,228,162,514,264,337,593,543,950,335).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("amount overflow: a total is out of range (beyond ±{max}, the largest amount a decimal holds)", max = Decimal::MAX)]
pub struct Overflow;

/// `a + b`, or [`Overflow`].
pub fn add(a: Decimal, b: Decimal) -> Result<Decimal, Overflow> {
    a.checked_add(b).ok_or(Overflow)
}

/// `a - b`, or [`Overflow`].
pub fn sub(a: Decimal, b: Decimal) -> Result<Decimal, Overflow> {
    a.checked_sub(b).ok_or(Overflow)
}

/// `*total += b`, or [`Overflow`] (leaving `*total` as it was).
pub fn add_to(total: &mut Decimal, b: Decimal) -> Result<(), Overflow> {
    *total = add(*total, b)?;
    Ok(())
}

/// The sum of `amounts`, or [`Overflow`]. Use instead of `Iterator::sum`, which panics.
pub fn sum<I: IntoIterator<Item = Decimal>>(amounts: I) -> Result<Decimal, Overflow> {
    amounts.into_iter().try_fold(Decimal::ZERO, add)
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
        assert_eq!(parse_amount_text(" 0.1 "), Ok(d("0.1")));
        assert_eq!(parse_amount_text("-12.50"), Ok(d("-12.50")));
        assert_eq!(parse_amount_text("1.5E3"), Ok(d("1500")));
        assert_eq!(parse_amount_text("+.5e+1"), Ok(d("5")));
        let nan = Err(AmountTextError::NotANumber);
        for t in [
            "1,234.00", "$5", "abc", "", "-", ".", "1.2.3", "--1", "1e", "1e+", "e5", "1e5.5",
            "1-2", "+-1", "1e--2",
        ] {
            assert_eq!(parse_amount_text(t), nan, "{t:?}");
        }
    }

    #[test]
    fn numbers_a_decimal_cannot_hold_are_out_of_range_not_a_number() {
        for t in [
            "1e400",
            "-1e400",
            "1E+29",
            "79228162514264337593543950336",
            "-100000000000000000000000000000.5",
            "0.0001e33",
            "1e99999999999999999999",
            "7.9228162514264337593543950336e28",
        ] {
            assert_eq!(
                parse_amount_text(t),
                Err(AmountTextError::OutOfRange),
                "{t:?}"
            );
        }
        let msg = format!("amount `1e400` {}", parse_amount_text("1e400").unwrap_err());
        assert!(msg.contains("is out of range"), "{msg}");
        assert!(!msg.contains("not a number"), "{msg}");
        // Up to the largest decimal, numbers are what they say, however they are written
        // (`from_scientific` alone refuses long mantissas and tiny exponents).
        assert_eq!(
            parse_amount_text("79228162514264337593543950335"),
            Ok(Decimal::MAX)
        );
        assert_eq!(
            parse_amount_text("-7.9228162514264337593543950335e28"),
            Ok(Decimal::MIN)
        );
        assert_eq!(
            parse_amount_text("5e28"),
            Ok(d("50000000000000000000000000000"))
        );
        assert_eq!(
            parse_amount_text("123456789012345678901234567890e-5"),
            Ok(d("1234567890123456789012345.6789"))
        );
        assert_eq!(parse_amount_text("-0.000012345e3"), Ok(d("-0.012345")));
        assert_eq!(parse_amount_text("1e-28"), Ok(Decimal::new(1, 28)));
        // Beyond 28 decimal places digits are rounded away, as `Decimal::from_str` does.
        let long = format!("0.{}", "3".repeat(2000));
        assert_eq!(
            parse_amount_text(&long),
            Ok(d("0.3333333333333333333333333333"))
        );
        assert_eq!(parse_amount_text("1e-40"), Ok(Decimal::ZERO));
        assert_eq!(
            parse_amount_text("-5e-99999999999999999999"),
            Ok(Decimal::ZERO)
        );
        assert_eq!(parse_amount_text("0e400"), Ok(Decimal::ZERO));
        assert_eq!(parse_amount_text("-0.000e-400"), Ok(Decimal::ZERO));
    }

    #[test]
    fn checked_sums_report_overflow_instead_of_panicking() {
        let big = d("50000000000000000000000000000");
        assert_eq!(add(big, big), Err(Overflow));
        assert_eq!(sub(-big, big), Err(Overflow));
        assert_eq!(add(big, -big), Ok(Decimal::ZERO));
        assert_eq!(sum([big, -big, big]), Ok(big));
        assert_eq!(sum([big, big, -big]), Err(Overflow));
        let mut total = big;
        assert_eq!(add_to(&mut total, big), Err(Overflow));
        assert_eq!(total, big, "left as it was");
        assert!(Overflow.to_string().contains("out of range"));
    }
}
