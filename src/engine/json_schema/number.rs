//! `minimum` / `maximum` / `exclusiveMinimum` / `exclusiveMaximum` and `multipleOf`: a number
//! held to a range and a step.
//!
//! The parse keeps the digits written so far exactly (an integer in units of 10^-[`SCALE`]), and
//! takes a digit only if some number that begins with the text so far is in range (and a
//! multiple of the step): so the number can always be finished. Exponents are not taken under
//! these keywords; a number has at most [`INT_DIGITS`] integer and [`FRAC_DIGITS`] fraction
//! digits, the keywords' values at most 12 decimals and a magnitude under 10^15, which keeps
//! every value exact in an `i128`. A multiple is exact in decimal: 0.3 is a multiple of 0.1.
//! The keywords' values come through serde_json as `f64`: past ~15 significant digits they are
//! already rounded when they get here (a value like 123456789.123456789012 is held as
//! 123456789.12345679), for bounds and steps alike.

use serde_json::{Map, Value};

use crate::engine::json_object::{Number, Step};

/// Values are integers in units of 10^-SCALE.
const SCALE: u32 = 20;
const INT_DIGITS: u8 = 17;
const FRAC_DIGITS: u8 = SCALE as u8;
/// Past any value a number can reach (17 integer digits).
const INF: i128 = i128::MAX;

fn pow10(n: u32) -> i128 {
    10i128.pow(n)
}

/// An interval of values; an end at ±[`INF`] is open. `step`: only its multiples are in it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Range {
    lo: i128,
    lo_open: bool,
    hi: i128,
    hi_open: bool,
    step: Option<i128>,
}

/// Every value.
const EVERYTHING: Range = Range { lo: -INF, lo_open: true, hi: INF, hi_open: true, step: None };

impl Range {
    /// The bounds and step `o` puts on a number (`integer`: on whole numbers, so the bounds are
    /// rounded in to whole numbers and both ends closed); `None` if it has none.
    pub fn from_schema(o: &Map<String, Value>, integer: bool, where_: &str) -> Result<Option<Self>, String> {
        let read = |k: &str| -> Result<Option<i128>, String> {
            match o.get(k) {
                None => Ok(None),
                Some(Value::Number(n)) => parse_decimal(&decimal_text(n))
                    .map(Some)
                    .ok_or_else(|| format!("`{k}` at {where_} must be a number under 10^15 in magnitude with at most 12 decimals")),
                Some(_) => Err(format!("`{k}` at {where_} must be a number")),
            }
        };
        let (min, max, xmin, xmax) = (read("minimum")?, read("maximum")?, read("exclusiveMinimum")?, read("exclusiveMaximum")?);
        let step = read("multipleOf")?;
        if [min, max, xmin, xmax, step].iter().all(Option::is_none) {
            return Ok(None);
        }
        let step = match step {
            Some(s) if s <= 0 => return Err(format!("`multipleOf` at {where_} must be greater than 0")),
            // A whole number's step: the least common multiple with 1.
            Some(s) if integer => {
                let unit = pow10(SCALE);
                let whole = (s / gcd(s, unit)).checked_mul(unit).filter(|&w| w < pow10(15 + SCALE));
                Some(whole.ok_or_else(|| format!("`multipleOf` at {where_} leaves no integer under 10^15 but 0"))?)
            }
            s => s,
        };
        // Of two lower bounds the higher holds (the exclusive one on a tie); of two upper the lower.
        let (lo, lo_open) = match (min, xmin) {
            (Some(m), Some(x)) if x >= m => (x, true),
            (Some(m), _) => (m, false),
            (None, Some(x)) => (x, true),
            (None, None) => (-INF, true),
        };
        let (hi, hi_open) = match (max, xmax) {
            (Some(m), Some(x)) if x <= m => (x, true),
            (Some(m), _) => (m, false),
            (None, Some(x)) => (x, true),
            (None, None) => (INF, true),
        };
        let mut range = Range { lo, lo_open, hi, hi_open, step };
        if integer {
            range = range.whole();
        }
        if !range.admits(&EVERYTHING) {
            return Err(format!("the bounds at {where_} leave no {}", if integer { "integer" } else { "number" }));
        }
        Ok(Some(range))
    }

    /// The whole numbers of this range, as a closed range.
    fn whole(self) -> Self {
        let unit = pow10(SCALE);
        let lo = match self.lo {
            lo if lo == -INF => -INF,
            lo => {
                let up = lo.div_euclid(unit) * unit + if lo.rem_euclid(unit) != 0 { unit } else { 0 };
                if self.lo_open && up == lo { up + unit } else { up }
            }
        };
        let hi = match self.hi {
            INF => INF,
            hi => {
                let down = hi.div_euclid(unit) * unit;
                if self.hi_open && down == hi { down - unit } else { down }
            }
        };
        Self { lo, lo_open: lo == -INF, hi, hi_open: hi == INF, step: self.step }
    }

    /// Whether `other` (an interval of values written at 10^-SCALE, no step) has a value in this
    /// range: in both intervals, and a multiple of the step.
    fn admits(&self, other: &Range) -> bool {
        let (lo, lo_open) = match self.lo.cmp(&other.lo) {
            std::cmp::Ordering::Greater => (self.lo, self.lo_open),
            std::cmp::Ordering::Less => (other.lo, other.lo_open),
            std::cmp::Ordering::Equal => (self.lo, self.lo_open || other.lo_open),
        };
        let (hi, hi_open) = match self.hi.cmp(&other.hi) {
            std::cmp::Ordering::Less => (self.hi, self.hi_open),
            std::cmp::Ordering::Greater => (other.hi, other.hi_open),
            std::cmp::Ordering::Equal => (self.hi, self.hi_open || other.hi_open),
        };
        if !(lo < hi || (lo == hi && !lo_open && !hi_open)) {
            return false;
        }
        let Some(step) = self.step else { return true };
        if lo == -INF || hi == INF {
            return true;
        }
        // The closed interval of values one unit of 10^-SCALE apart, and its first multiple.
        let (lo, hi) = (lo + i128::from(lo_open), hi - i128::from(hi_open));
        lo.div_euclid(step) * step + if lo.rem_euclid(step) != 0 { step } else { 0 } <= hi
    }

    fn holds(&self, v: i128) -> bool {
        (v > self.lo || (v == self.lo && !self.lo_open))
            && (v < self.hi || (v == self.hi && !self.hi_open))
            && self.step.is_none_or(|step| v % step == 0)
    }
}

/// A bound's text without an exponent: serde_json prints small and large floats with one
/// (`1e-7`), Rust's `f64` display never does.
fn decimal_text(n: &serde_json::Number) -> String {
    match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => i.to_string(),
        (None, Some(f)) => f.to_string(),
        (None, None) => n.to_string(),
    }
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A decimal's text (no exponent) as an integer in units of 10^-SCALE, if it is under 10^15 in
/// magnitude with at most 12 decimals.
fn parse_decimal(text: &str) -> Option<i128> {
    let (neg, text) = text.strip_prefix('-').map_or((false, text), |t| (true, t));
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty() || int.len() > 15 || frac.len() > 12 || !(int.bytes().chain(frac.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: i128 = format!("{int}{frac}").parse().ok()?;
    let v = digits * pow10(SCALE - frac.len() as u32);
    (v < pow10(15 + SCALE)).then_some(if neg { -v } else { v })
}

/// A number under bounds, as far as it is written: its part of the grammar, sign, and digits
/// (integer and fraction ones together, `frac` of them after the point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Bounded {
    part: Number,
    neg: bool,
    digits: i128,
    int_digits: u8,
    frac: u8,
}

impl Bounded {
    /// The number's first byte, if a number in `range` can begin with it.
    pub fn start(b: u8, range: &Range, integer: bool) -> Option<Self> {
        let blank = Self { part: Number::Minus, neg: true, digits: 0, int_digits: 0, frac: 0 };
        let first = match b {
            b'-' => blank,
            b'0'..=b'9' => Self { neg: false, ..blank }.digit(b, if b == b'0' { Number::Zero } else { Number::Int }),
            _ => return None,
        };
        first.reaches(range, integer).then_some(first)
    }

    /// One byte more: a digit or point that keeps the number able to end in range, or the end
    /// of the number (the byte belongs to what follows) if its value is in range.
    pub fn step(self, b: u8, range: &Range, integer: bool) -> Step<Self> {
        use Number::*;
        let next = match (self.part, b) {
            (Minus, b'0') if !integer => Some(self.digit(b, Zero)),
            (Minus, b'1'..=b'9') => Some(self.digit(b, Int)),
            (Int, b'0'..=b'9') if self.int_digits < INT_DIGITS => Some(self.digit(b, Int)),
            (Zero | Int, b'.') if !integer => Some(Self { part: Dot, ..self }),
            (Dot | Frac, b'0'..=b'9') if self.frac < FRAC_DIGITS => Some(Self { frac: self.frac + 1, ..self.digit(b, Frac) }),
            _ => None,
        };
        match next {
            Some(n) if n.reaches(range, integer) => Step::Inside(n),
            Some(_) => Step::Refused,
            None if matches!(self.part, Zero | Int | Frac) && range.holds(self.value()) => Step::Ended,
            None => Step::Refused,
        }
    }

    fn digit(self, b: u8, part: Number) -> Self {
        let int_digits = self.int_digits + u8::from(part != Number::Frac);
        Self { part, digits: self.digits * 10 + i128::from(b - b'0'), int_digits, ..self }
    }

    /// The value written so far, in units of 10^-SCALE.
    fn value(&self) -> i128 {
        let v = self.digits * pow10(SCALE - u32::from(self.frac));
        if self.neg { -v } else { v }
    }

    /// Whether some number that begins with this text is in `range`.
    fn reaches(&self, range: &Range, integer: bool) -> bool {
        let unit = pow10(SCALE);
        let v = self.value().abs();
        // Whether a magnitude in `[lo, hi)` (`[lo, hi]` if `!hi_open`), signed, is in range.
        let within = |lo: i128, hi: i128, hi_open: bool| {
            let signed = if self.neg { Range { lo: -hi, lo_open: hi_open, hi: -lo, hi_open: false, step: None } } else { Range { lo, lo_open: false, hi, hi_open, step: None } };
            range.admits(&signed)
        };
        match self.part {
            // "-": any magnitude (from 1 for an integer: no "-0").
            Number::Minus => within(if integer { unit } else { 0 }, INF, true),
            Number::Zero if integer => within(0, 0, false),
            Number::Zero | Number::Dot => within(v, v + unit, true),
            Number::Int => {
                // These digits then a fraction, or more integer digits (each a power of ten more).
                let (mut scale, mut digits) = (1i128, self.int_digits);
                loop {
                    let lo = v * scale;
                    let reached = if integer { within(lo, lo + (scale - 1) * unit, false) } else { within(lo, lo + scale * unit, true) };
                    if reached {
                        return true;
                    }
                    if digits == INT_DIGITS || lo > range.hi.abs().max(range.lo.abs()) {
                        return false;
                    }
                    scale *= 10;
                    digits += 1;
                }
            }
            // No digit may follow the last one allowed: the value as it is.
            Number::Frac if self.frac == FRAC_DIGITS => within(v, v, false),
            Number::Frac => within(v, v + pow10(SCALE - u32::from(self.frac)), true),
            Number::Exp | Number::ExpSign | Number::ExpDigits => unreachable!("no exponents under bounds"),
        }
    }
}
