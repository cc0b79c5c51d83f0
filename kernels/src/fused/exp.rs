//! A vectorisable `e^x` for the CPU kernels (the SiLU, the attention's softmax).

/// The clamp on `exp`'s argument.
pub(crate) const EXP_RANGE: (f32, f32) = (-87.0, 88.0);
/// 1.5 * 2^23: adding it rounds to an integer, kept in the low mantissa bits.
pub(crate) const EXP_ROUND: f32 = 12_582_912.0;
/// ln 2 split in two: 355/512 has few enough bits that `n * 355/512` is exact.
pub(crate) const EXP_LN2: (f32, f32) = (355.0 / 512.0, -2.121_944_4e-4);
/// Cephes' polynomial, highest power first.
pub(crate) const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

/// `e^x` within about 2 ulp (Cephes' `expf` polynomial), in plain arithmetic that vectorises,
/// unlike a call to libm. `x` is clamped to [-87, 88], where `2^n` stays a normal float: below
/// -87 it gives about 1.6e-38 rather than less (`1 + e^x` is 1 either way), above 88 about
/// 1.7e38 rather than more (`g / (1 + e^-g)` then differs from 0 by under 1e-36). NaN stays NaN.
/// Hand-written vector copies repeat these operations in this order.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_RANGE.0, EXP_RANGE.1);
    let t = x * std::f32::consts::LOG2_E + EXP_ROUND;
    let n = t - EXP_ROUND;
    // x - n ln2 = e^r, |r| <= ln2 / 2.
    let r = x - n * EXP_LN2.0 - n * EXP_LN2.1;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    let e_r = p * (r * r) + r + 1.0;
    // 2^n from n's bits in t: n in [-126, 127], so the exponent field n + 127 is in [1, 254].
    let n = t.to_bits().wrapping_sub(EXP_ROUND.to_bits());
    e_r * f32::from_bits(n.wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    /// The vectorisable `exp` against libm's, over silu's whole useful range and the clamps.
    #[test]
    fn exp_is_within_a_few_ulp() {
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let (got, want) = (super::exp(x), x.exp());
            assert!((got - want).abs() <= 3.0 * f32::EPSILON * want, "exp({x}) = {got}, not {want}");
        }
        assert!(super::exp(-1000.0) > 0.0 && super::exp(-1000.0) < 1e-37);
        assert!(super::exp(1000.0).is_finite() && super::exp(1000.0) > 1e38);
        assert!(super::exp(f32::NAN).is_nan());
    }
}
