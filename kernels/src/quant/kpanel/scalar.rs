//! The reference: one weight row times one activation row, super-block by super-block (module
//! docs of [`super`]). Every SIMD kernel must give these bits.

use std::ops::Range;

use super::{KPanels, Out, PANEL};
use crate::quant::activations::{ActRow, QuantizedRows};
use crate::quant::format::QK_K;

/// `y[r][j]` for activation row `a` and weight row `j`.
pub(crate) fn dot(w: &KPanels, j: usize, a: ActRow) -> f32 {
    let (groups, group_len, z) = (w.kind.groups(), w.kind.group_len(), w.kind.zero_point());
    let mut acc = 0f32;
    for b in 0..w.nb {
        let x = &a.qs[b * QK_K..][..QK_K];
        let (mut s, mut mn) = (0i32, 0i32);
        for g in 0..groups {
            let t: i32 = (g * group_len..(g + 1) * group_len).map(|e| (w.value(j, b, e) as i32 - z) * x[e] as i32).sum();
            s += w.scale(j, b, g) * t;
            if w.kind.has_mins() {
                mn += w.min(j, b, g) * a.sums[b * groups + g];
            }
        }
        let (d, dmin) = w.d_dmin(j, b);
        let da = a.scales[b];
        acc = (s as f32).mul_add(d.to_f32() * da, acc);
        if w.kind.has_mins() {
            acc = (mn as f32).mul_add(-(dmin.to_f32() * da), acc);
        }
    }
    acc
}

/// Rows `r0..r0 + R` against panels `ps` (padding rows of the last panel give zeros).
pub(crate) fn rows<const R: usize>(w: &KPanels, a: &QuantizedRows, r0: usize, ps: Range<usize>, out: Out) {
    for p in ps {
        for r in r0..r0 + R {
            let y = std::array::from_fn(|jj| if p * PANEL + jj < w.n { dot(w, p * PANEL + jj, a.row(r)) } else { 0.0 });
            // Safety: the caller owns these rows and panels of the output.
            unsafe { out.write(r, p, &y) };
        }
    }
}
