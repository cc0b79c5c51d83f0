//! Which instruction set the quantized kernels use, chosen at run time so one binary runs
//! everywhere and uses what the CPU has.

use std::sync::OnceLock;

/// A family of kernels; all give bit-identical results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, the reference.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F, BW, VL and VNNI (Ice Lake, Zen 4 and later), with AVX2 + FMA + F16C.
    Avx512,
    /// AVX-512 plus AMX-TILE and AMX-INT8 (Sapphire Rapids and later) with the OS's permission:
    /// batches of the 32-element types on tile multiplies, everything else as `Avx512`.
    Amx,
}

/// The instruction set `QWEN_SERVE_CPU_ISA` asks the CPU kernels to use (`scalar`, `avx2`,
/// `avx512`, `amx`), if set; each kernel family takes it when the CPU has it.
pub(crate) fn requested_level() -> Option<String> {
    std::env::var("QWEN_SERVE_CPU_ISA").ok()
}

impl Isa {
    /// The fastest kernels this CPU supports (detected once), or the slower ones named by
    /// `QWEN_SERVE_CPU_ISA` (`scalar`, `avx2`, `avx512`, `amx`) if this CPU has them: for
    /// measuring what each brings.
    pub fn detected() -> Self {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let available = Self::available();
            let named = requested_level().and_then(|name| available.iter().copied().find(|isa| format!("{isa:?}").eq_ignore_ascii_case(&name)));
            named.or(available.last().copied()).unwrap_or(Self::Scalar)
        })
    }

    /// Every ISA this CPU supports, slowest first.
    pub fn available() -> Vec<Self> {
        [Self::Scalar, Self::Avx2, Self::Avx512, Self::Amx].into_iter().filter(|isa| isa.is_available()).collect()
    }

    pub fn is_available(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => {
                Self::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Amx => Self::Avx512.is_available() && super::panel::amx_permitted(),
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx2 | Self::Avx512 | Self::Amx => false,
        }
    }
}
