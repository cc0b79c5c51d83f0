use candle_core::{DType, Device, Result, Tensor};

use crate::config::RopeScaling;

/// Rotary position embedding in the "rotate half" (GPT-NeoX) layout Qwen uses: dimension `i`
/// pairs with `i + head_dim / 2`.
pub struct Rotary {
    /// `(max_positions, head_dim / 2)`.
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    pub fn new(head_dim: usize, max_positions: usize, theta: f64, scaling: RopeScaling, dtype: DType, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let (inv_freq, attention_factor) = inv_freq(head_dim, theta, scaling);
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let positions = Tensor::arange(0u32, max_positions as u32, device)?.to_dtype(DType::F32)?.reshape((max_positions, 1))?;
        let freqs = positions.broadcast_mul(&inv_freq)?;
        let (mut cos, mut sin) = (freqs.cos()?, freqs.sin()?);
        if attention_factor != 1.0 {
            (cos, sin) = ((cos * attention_factor)?, (sin * attention_factor)?);
        }
        Ok(Self { cos: cos.to_dtype(dtype)?, sin: sin.to_dtype(dtype)? })
    }

    /// The `(max_positions, head_dim / 2)` cos and sin tables, for an op that fuses the rotation.
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// The positions the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }
}

/// Each of the `head_dim / 2` frequencies, and the factor cos and sin are multiplied by (1
/// but for YaRN), computed in f32 as transformers' `ROPE_INIT_FUNCTIONS` compute them.
fn inv_freq(head_dim: usize, theta: f64, scaling: RopeScaling) -> (Vec<f32>, f64) {
    let dim = head_dim as f64;
    // `theta^(2i / head_dim)`, rounded once to f32.
    let pos_freqs = (0..head_dim / 2).map(|i| theta.powf(2.0 * i as f64 / dim) as f32);
    match scaling {
        RopeScaling::None => (pos_freqs.map(|p| 1.0 / p).collect(), 1.0),
        RopeScaling::Linear { factor } => (pos_freqs.map(|p| 1.0 / p / factor as f32).collect(), 1.0),
        RopeScaling::Yarn(y) => {
            // The dimension whose frequency turns `rotations` times over the original context.
            let original = y.original_max_position_embeddings as f64;
            let dim_of = |rotations: f64| dim * (original / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln());
            let (mut low, mut high) = (dim_of(y.beta_fast), dim_of(y.beta_slow));
            if y.truncate {
                (low, high) = (low.floor(), high.ceil());
            }
            let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
            if low == high {
                high += 0.001;
            }
            let freqs = pos_freqs
                .enumerate()
                .map(|(i, p)| {
                    // 1 up to `low` (kept), 0 from `high` (divided by the factor).
                    let keep = 1.0 - ((i as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0);
                    1.0 / (y.factor as f32 * p) * (1.0 - keep) + 1.0 / p * keep
                })
                .collect();
            (freqs, y.attention_factor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::inv_freq;
    use crate::config::{RopeScaling, Yarn};

    /// YaRN keeps the fast frequencies, divides the slow ones by the factor and ramps between.
    #[test]
    fn yarn_keeps_fast_frequencies_and_interpolates_slow_ones() {
        let (base, one) = inv_freq(128, 1e6, RopeScaling::None);
        assert_eq!(one, 1.0);
        let yarn = Yarn { factor: 4.0, original_max_position_embeddings: 32768, attention_factor: 1.1386, beta_fast: 32.0, beta_slow: 1.0, truncate: true };
        let (scaled, attention) = inv_freq(128, 1e6, RopeScaling::Yarn(yarn));
        assert_eq!(attention, 1.1386);
        // Qwen2.5-7B's shape: the first dimensions kept, the last divided by 4, a ramp between.
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 * b;
        let kept = scaled.iter().zip(&base).filter(|(s, b)| s == b).count();
        let divided = scaled.iter().zip(&base).filter(|(s, b)| close(**s, **b / 4.0)).count();
        assert!(scaled[0] == base[0] && close(scaled[63], base[63] / 4.0));
        assert!(kept > 0 && divided > 0 && kept + divided < 64, "{kept} kept, {divided} divided");
        assert!(scaled.iter().zip(&base).all(|(s, b)| *s <= *b && *s >= b / 4.0 * (1.0 - 1e-6)));
        let (linear, _) = inv_freq(128, 1e6, RopeScaling::Linear { factor: 2.0 });
        assert!(linear.iter().zip(&base).all(|(l, b)| close(*l, b / 2.0)));
    }
}
