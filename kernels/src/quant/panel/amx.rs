//! AMX-INT8 panel kernel: sixteen activation rows against a panel's sixteen weight rows per
//! tile multiply, bitwise equal to [`super::scalar`].
//!
//! Per block, one `tdpbssd` takes the block's 16 x 32 signed activation bytes (A, read in
//! place: the rows are `k` bytes apart) and the tile's 512 signed weight values (B: Q8_0's
//! bytes in place, VNNI order already; Q4_0/Q5_0 decoded by the AVX-512 code and shifted by
//! their zero point into a scratch tile) and leaves the sixteen-by-sixteen `S_b` in C, which
//! is stored and finished by the same float steps as every kernel: per activation row one
//! conversion, one multiply of the scales and one fused multiply-add, the sixteen weight rows
//! in one vector. Blocks alternate between two sets of tile registers and buffers so that one
//! block's tile work overlaps the previous block's float work.
//!
//! The instructions are written as inline assembly (Rust's AMX intrinsics are unstable). Linux
//! hands out AMX state only on request: [`amx_permitted`] asks once for the process.
//!
//! Safety (every fn): the caller has checked [`amx_permitted`] and the AVX-512 features.

use std::arch::asm;
use std::arch::x86_64::*;
use std::ops::Range;
use std::sync::OnceLock;

use super::avx512::unsigned_values;
use super::{Acts, Kind, Line, Out, Panels, PANEL, QK};
use crate::quant::simd::prefetch;

/// Whether this CPU has AMX-TILE and AMX-INT8 and the kernel lets this process use them
/// (asked once; the permission holds for every thread of the process).
pub(crate) fn amx_permitted() -> bool {
    static PERMITTED: OnceLock<bool> = OnceLock::new();
    *PERMITTED.get_or_init(|| {
        // CPUID leaf 7: EDX bit 24 is AMX-TILE, bit 25 AMX-INT8.
        #[allow(unused_unsafe)]
        let edx = unsafe { __cpuid_count(7, 0) }.edx;
        if edx & (3 << 24) != 3 << 24 {
            return false;
        }
        request_tile_data()
    })
}

#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // Safety: a plain system call with integer arguments.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

#[repr(C, align(64))]
struct Aligned<T>(T);

/// Palette 1: tmm0 and tmm3 hold C (16 rows of 16 i32), tmm1 and tmm4 A (16 rows of 32
/// bytes), tmm2 and tmm5 B (8 rows of 64 bytes).
fn tile_config() -> Aligned<[u8; 64]> {
    let mut c = [0u8; 64];
    c[0] = 1;
    for (tmm, rows, bytes) in [(0, 16, 64u16), (1, 16, 32), (2, 8, 64), (3, 16, 64), (4, 16, 32), (5, 8, 64)] {
        c[16 + 2 * tmm..18 + 2 * tmm].copy_from_slice(&bytes.to_le_bytes());
        c[48 + tmm] = rows;
    }
    Aligned(c)
}

/// Blocks whose tile products are computed before their float steps run: the tile unit and
/// the vector units then work on independent streams (a block's float steps wait for its
/// product to be stored, which takes far longer than the steps themselves).
const CHUNK: usize = 4;

/// Activation rows `r0..r1` (in sixteens; the last may run into the padding rows) against
/// panels `ps`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn rows(w: &Panels, a: &Acts, (r0, r1): (usize, usize), ps: Range<usize>, out: Out) {
    let config = tile_config();
    asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
    let nb = w.nb;
    let lines = w.kind.lines();
    let zero_point = _mm512_set1_epi8(w.kind.zero_point() as i8);
    // Q4_0/Q5_0: a panel's values decoded to signed bytes once for all row tiles.
    let mut decoded = vec![Line([0; 64]); if w.kind == Kind::Q8_0 { 0 } else { nb * 8 }];
    let mut c = Aligned([[[0i32; 256]; CHUNK]; 2]);
    let decoded_at = decoded.as_mut_ptr();
    for p in ps {
        let tile = |b: usize| -> *const u8 {
            let t = p * nb + b;
            if w.kind == Kind::Q8_0 { w.qs.as_ptr().add(t * lines).cast() } else { decoded_at.add(b * 8).cast_const().cast() }
        };
        if w.kind != Kind::Q8_0 {
            for b in 0..nb {
                let t = p * nb + b;
                prefetch(w.qs.as_ptr().add(t * lines).cast(), lines * 64);
                if w.kind == Kind::Q5_0 {
                    prefetch(w.qh.as_ptr().add(t).cast(), 64);
                }
                let dst = decoded_at.add(b * 8).cast::<__m512i>();
                for (i, v) in unsigned_values(w, t).into_iter().enumerate() {
                    _mm512_store_si512(dst.add(i), _mm512_sub_epi8(v, zero_point));
                }
            }
        }
        for rt in (r0..r1).step_by(PANEL) {
            let x = a.qs.as_ptr().add(rt * a.k);
            let da = a.scales.as_ptr().add(rt * nb);
            let mut acc = [_mm512_setzero_ps(); PANEL];
            // Software pipelined: chunk `ci + 1`'s tile products are issued before chunk `ci`'s
            // float steps, so the tile unit works while the vector units do.
            let chunks = nb.div_ceil(CHUNK);
            let products = |ci: usize, c: &mut [[i32; 256]; CHUNK]| {
                let b0 = ci * CHUNK;
                for i in 0..(nb - b0).min(CHUNK) {
                    let b = b0 + i;
                    if w.kind == Kind::Q8_0 {
                        prefetch(tile(b), lines * 64);
                    }
                    let (wb, xb, cb) = (tile(b), x.add(b * QK), c[i].as_mut_ptr());
                    if i % 2 == 0 {
                        asm!(
                            "tileloadd tmm2, [{w} + {s64}]",
                            "tileloadd tmm1, [{x} + {k}]",
                            "tilezero tmm0",
                            "tdpbssd tmm0, tmm1, tmm2",
                            "tilestored [{c} + {s64}], tmm0",
                            w = in(reg) wb, x = in(reg) xb, k = in(reg) a.k, c = in(reg) cb, s64 = in(reg) 64usize,
                            options(nostack, preserves_flags),
                        );
                    } else {
                        asm!(
                            "tileloadd tmm5, [{w} + {s64}]",
                            "tileloadd tmm4, [{x} + {k}]",
                            "tilezero tmm3",
                            "tdpbssd tmm3, tmm4, tmm5",
                            "tilestored [{c} + {s64}], tmm3",
                            w = in(reg) wb, x = in(reg) xb, k = in(reg) a.k, c = in(reg) cb, s64 = in(reg) 64usize,
                            options(nostack, preserves_flags),
                        );
                    }
                }
            };
            products(0, &mut c.0[0]);
            for ci in 0..chunks {
                if ci + 1 < chunks {
                    products(ci + 1, &mut c.0[(ci + 1) % 2]);
                }
                let b0 = ci * CHUNK;
                for i in 0..(nb - b0).min(CHUNK) {
                    let b = b0 + i;
                    let dw = _mm512_cvtph_ps(_mm256_loadu_si256(w.d.as_ptr().add((p * nb + b) * PANEL).cast()));
                    let cb = c.0[ci % 2][i].as_ptr().cast::<__m512i>();
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let d = _mm512_mul_ps(dw, _mm512_set1_ps(*da.add(r * nb + b)));
                        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(cb.add(r))), d, *acc);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let mut y = [0f32; PANEL];
                _mm512_storeu_ps(y.as_mut_ptr(), *acc);
                out.write(rt + r, p, &y);
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem, preserves_flags));
}
