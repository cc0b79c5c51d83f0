//! The K-quants (Q4_K, Q5_K, Q6_K) in sixteen-row panels, as [`super::panel`] does for the
//! 32-element types: one `vpdpbusd` with four broadcast activation bytes advances sixteen
//! weight rows at once.
//!
//! Arithmetic (the reference is [`scalar`]; every kernel gives its bits): a super-block of 256
//! elements has groups (Q4_K/Q5_K: eight of 32 with a 6-bit scale `sc` and minimum `mn`;
//! Q6_K: sixteen of 16 with a signed 8-bit scale and zero point 32). For activation row `r`
//! and weight row `j`, super-block by super-block in order, with exact `i32` sums
//! `S = sum_g sc_g * sum_{e in g} (q_e - z) a_e` and (Q4_K/Q5_K) `M = sum_g mn_g * sum_{e in g} a_e`:
//! `acc = fma(S, d * da, acc)`, then (Q4_K/Q5_K) `acc = fma(M, -(dmin * da), acc)`, from
//! `acc = 0`; `d`, `dmin` are the weight super-block's f16 scales and `da` the activation
//! super-block's f32 scale ([`super::activations`]).
//!
//! Layout: the tile of panel `p` and super-block `b` (`t = p * nb + b`) holds 16 x 256 values
//! at value index `v = 64 * (e / 4) + 4 * jj + e % 4` (element `e` of the panel's row `jj`):
//! 64 vectors of 64 bytes, vector `i` holding elements `4i .. 4i + 4` of the sixteen rows. The
//! low four bits are nibbles (byte `v % 64` of line `v / 128`, the low nibble when
//! `(v / 64) % 2 == 0`). Q5_K's bit 4 is bit `k` of byte `v % 64` of line `v / 512`, with
//! `k = (v / 64) % 8` (eight vectors share a line); Q6_K's bits 4 and 5 are crumbs (bits
//! `2k, 2k + 1` of byte `v % 64` of line `v / 256`, with `k = (v / 64) % 4`): shifts and a
//! mask give a value vector's high bits in AVX2, one `vptestmb` Q5_K's in AVX-512 (a bit
//! plane, a bit a value in value order, needed a byte shuffle and compare per vector without
//! AVX-512's mask registers). Group scales are `i8` (`sc[(t * groups + g) * 16 + jj]`), Q4_K/Q5_K minimums
//! `i16` pairs (`mins[((t * 4 + i) * 16 + jj) * 2 + h]` = minimum of group `2i + h`), so one
//! `vpdpwssd` with a broadcast pair of activation group sums adds two groups' share of `M`.

mod scalar;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

use super::activations::QuantizedRows;
use super::format::{nibble, Q4KBlock, Q5KBlock, Q6KBlock, QK_K};
use super::panel::{run_tasks, value_index, Line, Out, PANEL, ROW_TILE};
use super::Isa;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KKind {
    Q4K,
    Q5K,
    Q6K,
}

impl KKind {
    /// Groups per super-block.
    pub const fn groups(self) -> usize {
        if matches!(self, KKind::Q6K) { 16 } else { 8 }
    }

    /// Elements per group (the activation partial sums the kernels need).
    pub fn group_len(self) -> usize {
        QK_K / self.groups()
    }

    pub fn zero_point(self) -> i32 {
        if self == KKind::Q6K { 32 } else { 0 }
    }

    fn has_mins(self) -> bool {
        self != KKind::Q6K
    }

    /// Lines per tile of the bits above the nibbles: Q5_K's fifth bits, Q6_K's crumbs.
    fn high_lines(self) -> usize {
        match self {
            KKind::Q4K => 0,
            KKind::Q5K => FIFTH_LINES,
            KKind::Q6K => CRUMB_LINES,
        }
    }
}

impl From<KKind> for GgmlDType {
    fn from(kind: KKind) -> Self {
        match kind {
            KKind::Q4K => GgmlDType::Q4K,
            KKind::Q5K => GgmlDType::Q5K,
            KKind::Q6K => GgmlDType::Q6K,
        }
    }
}

/// One weight super-block as the builder takes it: values `q` (unsigned), group scales and
/// (Q4_K/Q5_K) minimums.
pub(crate) struct KBlockValues {
    pub d: f16,
    pub dmin: f16,
    pub sc: [i8; 16],
    pub mins: [u8; 8],
    pub q: [u8; QK_K],
}

/// Nibble lines per tile (4096 values).
const Q_LINES: usize = 32;
/// Lines of a tile's fifth bits (Q5_K), and of its two-bit crumbs (Q6_K).
const FIFTH_LINES: usize = 8;
const CRUMB_LINES: usize = 16;

/// One `(n, k)` K-quant matrix in panels (module docs).
pub(crate) struct KPanels {
    pub kind: KKind,
    pub n: usize,
    /// Super-blocks per row.
    pub nb: usize,
    pub d: Vec<f16>,
    pub dmin: Vec<f16>,
    pub qs: Vec<Line>,
    /// The bits above the nibbles, [`KKind::high_lines`] per tile (module docs).
    pub bits: Vec<Line>,
    pub sc: Vec<i8>,
    pub mins: Vec<i16>,
}

impl KPanels {
    pub fn from_q4k(blocks: &[Q4KBlock], n: usize, nb: usize) -> Self {
        Self::build(KKind::Q4K, n, nb, |j, b| {
            let blk = &blocks[j * nb + b];
            let q = std::array::from_fn(|e| nibble(&blk.qs[(e / 128) * 64..], e % 128));
            KBlockValues { d: blk.d, dmin: blk.dmin, sc: scales8(&blk.scales), mins: blk.mins, q }
        })
    }

    pub fn from_q5k(blocks: &[Q5KBlock], n: usize, nb: usize) -> Self {
        Self::build(KKind::Q5K, n, nb, |j, b| {
            let blk = &blocks[j * nb + b];
            let q = std::array::from_fn(|e| nibble(&blk.qs[(e / 128) * 64..], e % 128) | (((blk.qh[e / 8] >> (e % 8)) & 1) << 4));
            KBlockValues { d: blk.d, dmin: blk.dmin, sc: scales8(&blk.scales), mins: blk.mins, q }
        })
    }

    pub fn from_q6k(blocks: &[Q6KBlock], n: usize, nb: usize) -> Self {
        Self::build(KKind::Q6K, n, nb, |j, b| {
            let blk = &blocks[j * nb + b];
            KBlockValues { d: blk.d, dmin: f16::ZERO, sc: blk.scales, mins: [0; 8], q: std::array::from_fn(|e| blk.value(e)) }
        })
    }

    fn build(kind: KKind, n: usize, nb: usize, block: impl Fn(usize, usize) -> KBlockValues + Sync) -> Self {
        let tiles = n.div_ceil(PANEL) * nb;
        let groups = kind.groups();
        let high_lines = kind.high_lines();
        let mut out = Self {
            kind,
            n,
            nb,
            d: vec![f16::ZERO; tiles * PANEL],
            dmin: vec![f16::ZERO; tiles * PANEL],
            qs: vec![Line([0; 64]); tiles * Q_LINES],
            bits: vec![Line([0; 64]); tiles * high_lines],
            sc: vec![0; tiles * groups * PANEL],
            mins: vec![0; if kind.has_mins() { tiles * 4 * PANEL * 2 } else { 0 }],
        };
        let pad = || KBlockValues { d: f16::ZERO, dmin: f16::ZERO, sc: [0; 16], mins: [0; 8], q: [kind.zero_point() as u8; QK_K] };
        let pack = |t: usize, (d, dmin): (&mut [f16], &mut [f16]), qs: &mut [Line], bits: &mut [Line], sc: &mut [i8], mins: &mut [i16]| {
            let (p, b) = (t / nb, t % nb);
            let qs = lines_as_bytes(qs);
            let high = lines_as_bytes(bits);
            for jj in 0..PANEL {
                let j = p * PANEL + jj;
                let blk = if j < n { block(j, b) } else { pad() };
                (d[jj], dmin[jj]) = (blk.d, blk.dmin);
                for g in 0..groups {
                    sc[g * PANEL + jj] = blk.sc[g];
                }
                if kind.has_mins() {
                    for g in 0..8 {
                        mins[((g / 2) * PANEL + jj) * 2 + g % 2] = blk.mins[g] as i16;
                    }
                }
                for (i, q) in blk.q.chunks_exact(4).enumerate() {
                    let v = value_index(jj, 4 * i);
                    let (at, shift) = ((v / 128) * 64 + v % 64, 4 * ((v % 128) / 64));
                    for (o, &q) in q.iter().enumerate() {
                        qs[at + o] |= (q & 0xF) << shift;
                        match kind {
                            KKind::Q4K => {}
                            KKind::Q5K => high[(v / 512) * 64 + v % 64 + o] |= ((q >> 4) & 1) << ((v / 64) % 8),
                            KKind::Q6K => high[(v / 256) * 64 + v % 64 + o] |= (q >> 4) << (2 * ((v / 64) % 4)),
                        }
                    }
                }
            }
        };
        let min_len = if kind.has_mins() { 4 * PANEL * 2 } else { 0 };
        let (bits, mins) = (Shared(out.bits.as_mut_ptr()), Shared(out.mins.as_mut_ptr()));
        out.d
            .par_chunks_mut(PANEL)
            .zip(out.dmin.par_chunks_mut(PANEL))
            .zip(out.qs.par_chunks_mut(Q_LINES))
            .zip(out.sc.par_chunks_mut(groups * PANEL))
            .enumerate()
            .for_each(|(t, (((d, dmin), qs), sc))| {
                // Safety: tile t's high bits and minimums are its own ranges of the buffers (which
                // may be empty, hence not zipped in).
                let bits = unsafe { bits.range(t * high_lines, high_lines) };
                let mins = unsafe { mins.range(t * min_len, min_len) };
                pack(t, (d, dmin), qs, bits, sc, mins);
            });
        out
    }

    /// Unsigned value of element `e` of super-block `b` of row `j`.
    pub fn value(&self, j: usize, b: usize, e: usize) -> u8 {
        let (t, v) = ((j / PANEL) * self.nb + b, value_index(j % PANEL, e));
        let line = &self.qs[t * Q_LINES + v / 128].0;
        let q = (line[v % 64] >> (4 * ((v % 128) / 64))) & 0xF;
        let high = &self.bits[t * self.kind.high_lines()..];
        match self.kind {
            KKind::Q4K => q,
            KKind::Q5K => q | (((high[v / 512].0[v % 64] >> ((v / 64) % 8)) & 1) << 4),
            KKind::Q6K => q | (((high[v / 256].0[v % 64] >> (2 * ((v / 64) % 4))) & 3) << 4),
        }
    }

    fn tile_scalars(&self, j: usize, b: usize) -> (usize, usize) {
        ((j / PANEL) * self.nb + b, j % PANEL)
    }

    /// Scale of group `g` of super-block `b` of row `j`.
    pub fn scale(&self, j: usize, b: usize, g: usize) -> i32 {
        let (t, jj) = self.tile_scalars(j, b);
        self.sc[(t * self.kind.groups() + g) * PANEL + jj] as i32
    }

    /// Minimum of group `g` (Q4_K/Q5_K).
    pub fn min(&self, j: usize, b: usize, g: usize) -> i32 {
        let (t, jj) = self.tile_scalars(j, b);
        self.mins[((t * 4 + g / 2) * PANEL + jj) * 2 + g % 2] as i32
    }

    pub fn d_dmin(&self, j: usize, b: usize) -> (f16, f16) {
        let (t, jj) = self.tile_scalars(j, b);
        (self.d[t * PANEL + jj], self.dmin[t * PANEL + jj])
    }

    /// Row `j` as f32, bitwise candle's dequantization (its formulas and order: Q4_K/Q5_K
    /// `(d * sc) * q - dmin * mn`, Q6_K `(d * sc) * (q - 32)`).
    pub fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        let group_len = self.kind.group_len();
        for (b, out) in out.chunks_exact_mut(QK_K).enumerate() {
            let (d, dmin) = self.d_dmin(j, b);
            for (e, y) in out.iter_mut().enumerate() {
                let (g, q) = (e / group_len, self.value(j, b, e) as i32);
                let d1 = d.to_f32() * self.scale(j, b, g) as f32;
                *y = if self.kind.has_mins() {
                    d1 * q as f32 - dmin.to_f32() * self.min(j, b, g) as f32
                } else {
                    d1 * (q - 32) as f32
                };
            }
        }
    }

    /// The matrices stacked along rows; `None` unless all have this kind and width (panels
    /// copied when every part but the last fills its last panel, repacked otherwise).
    pub fn concat(parts: &[&KPanels]) -> Option<KPanels> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.kind != first.kind || p.nb != first.nb) {
            return None;
        }
        if parts[..parts.len() - 1].iter().all(|p| p.n.is_multiple_of(PANEL)) {
            let mut out = Self::build(first.kind, 0, first.nb, |_, _| unreachable!("no rows"));
            for p in parts {
                out.n += p.n;
                out.d.extend_from_slice(&p.d);
                out.dmin.extend_from_slice(&p.dmin);
                out.qs.extend_from_slice(&p.qs);
                out.bits.extend_from_slice(&p.bits);
                out.sc.extend_from_slice(&p.sc);
                out.mins.extend_from_slice(&p.mins);
            }
            return Some(out);
        }
        let mut rows = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            rows.extend((0..p.n).map(|j| (i, j)));
        }
        Some(Self::build(first.kind, rows.len(), first.nb, |j, b| {
            let (part, j) = rows[j];
            let p = parts[part];
            let (d, dmin) = p.d_dmin(j, b);
            KBlockValues {
                d,
                dmin,
                sc: std::array::from_fn(|g| if g < p.kind.groups() { p.scale(j, b, g) as i8 } else { 0 }),
                mins: std::array::from_fn(|g| if p.kind.has_mins() { p.min(j, b, g) as u8 } else { 0 }),
                q: std::array::from_fn(|e| p.value(j, b, e)),
            }
        }))
    }

    /// Bytes the kernels stream per panel.
    pub fn panel_bytes(&self) -> usize {
        let groups = self.kind.groups();
        self.nb * (64 * (Q_LINES + self.kind.high_lines()) + 4 * PANEL + groups * PANEL + if self.kind.has_mins() { 128 } else { 0 })
    }
}

/// Q4_K/Q5_K's eight 6-bit scales as the first eight group scales.
fn scales8(scales: &[u8; 8]) -> [i8; 16] {
    std::array::from_fn(|g| if g < 8 { scales[g] as i8 } else { 0 })
}

/// A vector's buffer shared by tasks that each write their own range of it.
struct Shared<T>(*mut T);
// Safety: see `Shared::range`: the ranges handed out are disjoint.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// # Safety
    /// In bounds, and no two live ranges overlap.
    #[allow(clippy::mut_from_ref)]
    unsafe fn range(&self, at: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(at), len)
    }
}

fn lines_as_bytes(lines: &mut [Line]) -> &mut [u8] {
    // Safety: `Line` is 64 plain bytes with no padding.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * 64) }
}

/// Two activation group sums as the i16 pair a `vpdpwssd` (or `madd`) lane multiplies with
/// two group minimums (each sum fits: |sum| <= 32 * 127).
#[inline(always)]
pub(crate) fn sum_pair(sums: &[i32], g: usize) -> i32 {
    (sums[g] as u16 as u32 | ((sums[g + 1] as u32) << 16)) as i32
}

/// `y = x W^T` for `x` `(m, k)` row-major, with `isa`'s kernels (available on this CPU).
pub(crate) fn matmul(w: &KPanels, x: &[f32], isa: Isa) -> Vec<f32> {
    let k = w.nb * QK_K;
    let m = x.len() / k;
    let acts = QuantizedRows::quantize(x, k, QK_K, w.kind.group_len());
    run_tasks((m, w.n), w.panel_bytes(), ROW_TILE, |(r0, r1), ps, out| {
        // Safety: `isa` is available (checked by the caller); the task owns its rectangle.
        unsafe { run_tile(w, &acts, isa, (r0, r1), ps, out) }
    })
}

/// Rows `r0..r1` against panels `ps`, in eights, then four, two, one.
///
/// # Safety
/// `isa` is available; nothing else writes these outputs meanwhile.
unsafe fn run_tile(w: &KPanels, a: &QuantizedRows, isa: Isa, (r0, r1): (usize, usize), ps: std::ops::Range<usize>, out: Out) {
    let mut r = r0;
    macro_rules! rows {
        ($rows:literal) => {
            match isa {
                Isa::Scalar => scalar::rows::<$rows>(w, a, r, ps.clone(), out),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => avx2::rows::<$rows>(w, a, r, ps.clone(), out),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 | Isa::Amx => avx512::rows::<$rows>(w, a, r, ps.clone(), out),
                #[cfg(not(target_arch = "x86_64"))]
                _ => unreachable!("no x86 kernels off x86_64"),
            }
        };
    }
    while r + 8 <= r1 {
        rows!(8);
        r += 8;
    }
    if r + 4 <= r1 {
        rows!(4);
        r += 4;
    }
    if r + 2 <= r1 {
        rows!(2);
        r += 2;
    }
    if r < r1 {
        rows!(1);
    }
}
