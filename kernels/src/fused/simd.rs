//! Run-time instruction-set dispatch for the fused ops' and the attention's CPU paths.
//!
//! Each op's inner loop is one generic `#[inline(always)]` body written so that LLVM can
//! vectorise it (independent lanes, no calls); [`multiversion!`] compiles it once per [`Simd`]
//! level and picks the copy at run time. Rust never contracts `a * b + c` into an FMA (a body
//! that wants one writes `mul_add`: one rounding at every level, an instruction where the level
//! has FMA, libm's `fmaf` in the scalar build) and the bodies fix every reduction's order, so
//! all levels give bit-identical results: the scalar build is the reference the others are
//! tested against.

use std::sync::OnceLock;

/// Elements a rayon task should at least get: below it the parallel overhead (waking a pool
/// thread, a few microseconds) costs more than the work. A decode step's norms (16 rows of 896)
/// run on the calling thread.
pub(crate) const MIN_TASK_ELEMS: usize = 1 << 15;

/// Rows per rayon task for `num_rows` rows of `width` elements, or `None` when one task (the
/// calling thread) should do them all. Which rows share a task never changes a row's result.
pub(crate) fn rows_per_task(num_rows: usize, width: usize) -> Option<usize> {
    let min_rows = MIN_TASK_ELEMS.div_ceil(width.max(1));
    let rows = min_rows.max(num_rows.div_ceil(rayon::current_num_threads()));
    (rows < num_rows).then_some(rows)
}

/// Sixteen lane sums added in a fixed tree: lane `i` plus lane `i + 8`, then `i + 4`, `i + 2`,
/// `i + 1` (the order every instruction set reproduces).
#[inline(always)]
pub(crate) fn sum16(lanes: &[f32; 16]) -> f32 {
    let s8: [f32; 8] = std::array::from_fn(|i| lanes[i] + lanes[i + 8]);
    let s4: [f32; 4] = std::array::from_fn(|i| s8[i] + s8[i + 4]);
    let s2: [f32; 2] = std::array::from_fn(|i| s4[i] + s4[i + 2]);
    s2[0] + s2[1]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Simd {
    /// The generic bodies for the target's baseline (SSE2 on x86-64).
    Scalar,
    /// x86-64 AVX2.
    Avx2,
    /// x86-64 AVX-512 F, BW and VL.
    Avx512,
}

impl Simd {
    /// The widest level this CPU supports (detected once), or a narrower one named by
    /// `QWEN_SERVE_CPU_ISA` (`scalar`, `avx2`; `avx512` and `amx` mean AVX-512 here), as for the
    /// quantized kernels ([`crate::Isa::detected`]): for measuring what each level brings.
    pub(crate) fn detected() -> Self {
        static BEST: OnceLock<Simd> = OnceLock::new();
        *BEST.get_or_init(|| {
            let available = Self::available();
            let named = crate::quant::requested_level().and_then(|name| {
                let name = if name.eq_ignore_ascii_case("amx") { "avx512".to_string() } else { name };
                available.iter().copied().find(|simd| format!("{simd:?}").eq_ignore_ascii_case(&name))
            });
            named.or(available.last().copied()).unwrap_or(Self::Scalar)
        })
    }

    /// Every level this CPU supports, narrowest first.
    pub(crate) fn available() -> Vec<Self> {
        [Self::Scalar, Self::Avx2, Self::Avx512].into_iter().filter(|s| s.is_available()).collect()
    }

    fn is_available(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx2 | Self::Avx512 => false,
        }
    }
}

/// `multiversion!(fn name<T: Elem>(args..) => body);` defines `name(simd, args..)`, which runs
/// the generic `#[inline(always)]` function `body(args..)` compiled for `simd`'s instructions.
macro_rules! multiversion {
    ($(#[$doc:meta])* fn $name:ident<$T:ident: Elem>($($arg:ident: $ty:ty),* $(,)?) => $body:path;) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        fn $name<$T: Elem>(simd: $crate::fused::simd::Simd, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            fn avx2<$T: Elem>($($arg: $ty),*) {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
            fn avx512<$T: Elem>($($arg: $ty),*) {
                $body($($arg),*)
            }
            match simd {
                // SAFETY: a level other than Scalar exists only where the CPU supports it
                // (`Simd::available`).
                #[cfg(target_arch = "x86_64")]
                $crate::fused::simd::Simd::Avx2 => unsafe { avx2($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                $crate::fused::simd::Simd::Avx512 => unsafe { avx512($($arg),*) },
                _ => $body($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::{rows_per_task, Simd};

    #[test]
    fn scalar_is_always_available_and_detected_is_the_widest() {
        let available = Simd::available();
        assert_eq!(available[0], Simd::Scalar);
        if crate::quant::requested_level().is_none() {
            assert_eq!(Simd::detected(), *available.last().unwrap());
        }
    }

    #[test]
    fn small_batches_stay_on_the_calling_thread() {
        assert_eq!(rows_per_task(16, 896), None);
        assert_eq!(rows_per_task(1, 1 << 20), None);
        if let Some(rows) = rows_per_task(4096, 896) {
            assert!(rows * 896 >= super::MIN_TASK_ELEMS && rows < 4096);
        }
    }
}
