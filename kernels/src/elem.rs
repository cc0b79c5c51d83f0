//! Element types the CPU kernels read and write: the cache may be f32, bf16 or f16; the
//! arithmetic is always f32.

use half::{bf16, f16};

pub(crate) trait Elem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// Dot product with eight independent accumulators so the compiler can vectorise it
/// (a single running sum is a serial dependency chain it may not reorder).
#[inline(always)]
pub(crate) fn dot<A: Elem, B: Elem>(a: &[A], b: &[B]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        let (ac, bc) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for k in 0..8 {
            acc[k] += ac[k].to_f32() * bc[k].to_f32();
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for k in chunks * 8..a.len() {
        sum += a[k].to_f32() * b[k].to_f32();
    }
    sum
}

/// `out += w * v`, elementwise.
#[inline(always)]
pub(crate) fn axpy<B: Elem>(out: &mut [f32], w: f32, v: &[B]) {
    debug_assert_eq!(out.len(), v.len());
    for (o, x) in out.iter_mut().zip(v) {
        *o += w * x.to_f32();
    }
}
