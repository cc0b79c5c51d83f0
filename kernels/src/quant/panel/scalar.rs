//! The reference: one weight row times one activation row, block by block (module docs of
//! [`super`]). Every SIMD and AMX kernel must give these bits.

use std::ops::Range;

use super::{Acts, Out, Panels, PANEL, QK};

/// `y[r][j]` for activation row `r` and weight row `j`.
pub(crate) fn dot(w: &Panels, j: usize, a: &Acts, r: usize) -> f32 {
    let mut acc = 0f32;
    for b in 0..w.nb {
        let x = &a.qs[r * a.k + b * QK..][..QK];
        let s: i32 = (0..QK).map(|e| w.signed(j, b, e) * x[e] as i32).sum();
        acc = (s as f32).mul_add(w.scale(j, b).to_f32() * a.scales[r * a.nb + b], acc);
    }
    acc
}

/// Rows `r0..r0 + R` against panels `ps` (padding rows of the last panel give zeros).
pub(crate) fn rows<const R: usize>(w: &Panels, a: &Acts, r0: usize, ps: Range<usize>, out: Out) {
    for p in ps {
        for r in r0..r0 + R {
            let y = std::array::from_fn(|jj| if p * PANEL + jj < w.n { dot(w, p * PANEL + jj, a, r) } else { 0.0 });
            // Safety: the caller owns these rows and panels of the output.
            unsafe { out.write(r, p, &y) };
        }
    }
}
