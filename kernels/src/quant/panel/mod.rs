//! The 32-element types (Q4_0, Q5_0, Q8_0) in *panels*: the weights of sixteen output rows
//! side by side, the layout both a one-row AVX-512 dot product and an AMX tile multiply read.
//!
//! Arithmetic (the reference is [`scalar`]; every kernel gives its bits): for activation row
//! `r` and weight row `j`, block by block in order,
//! `acc = fma(S_b, dw_b * da_b, acc)` from `acc = 0`, where `S_b` is the exact `i32` sum of
//! the block's 32 signed weight values times quantized activation values, `dw_b` the weight
//! block's f16 scale and `da_b` the activation block's f32 scale. Kernels find `S_b` however
//! suits them (unsigned weights with the zero point taken off through the activations' block
//! sums, `vpdpbusd`, `maddubs`, an AMX `tdpbssd`): it is an exact integer, and the float steps
//! after it are the same everywhere.
//!
//! Layout: weight rows `16p .. 16p + 16` form panel `p` (the last one padded with zero
//! rows); the *tile* of panel `p` and block `b` (index `t = p * nb + b`) holds their 16 x 32
//! values in VNNI order, value index `v = 64 * (e / 4) + 4 * jj + e % 4` for element `e` of
//! the panel's row `jj`: 64-byte vector `e / 4` holds four neighbouring elements of each of
//! the sixteen rows, which is what `vpdpbusd` with four broadcast activation bytes and AMX's
//! B operand want. Q8_0 stores a signed byte per value (512 bytes a tile); Q4_0/Q5_0 a nibble
//! per value (256 bytes: byte `i` of 64-byte chunk `c` holds value `128c + i` in its low
//! nibble and `128c + 64 + i` in its high one), and Q5_0 the fifth bit of value `v` as bit
//! `v / 64` of byte `v % 64` of the tile's high-bit line (so a vector's fifth bits are one
//! shift and mask away in AVX2, one `vptestmb` in AVX-512). Scales are `d[16t + jj]`.

mod acts;
#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

pub(crate) use acts::Acts;
#[cfg(target_arch = "x86_64")]
pub(crate) use amx::amx_permitted;

use super::Isa;

/// Weight rows per panel (the i32/f32 lanes of a 512-bit vector, and an AMX tile's columns).
pub(crate) const PANEL: usize = 16;
/// Elements per block.
pub(crate) const QK: usize = 32;

/// A 64-byte-aligned cache line of weight data.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Line(pub [u8; 64]);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Q4_0,
    Q5_0,
    Q8_0,
}

impl Kind {
    /// What is subtracted from a stored value to give the signed weight value.
    pub fn zero_point(self) -> i32 {
        match self {
            Kind::Q4_0 => 8,
            Kind::Q5_0 => 16,
            Kind::Q8_0 => 0,
        }
    }

    /// Cache lines of values per tile.
    fn lines(self) -> usize {
        match self {
            Kind::Q8_0 => 8,
            _ => 4,
        }
    }

    /// The zero point `isa`'s one-row kernels take off through the activations' block sums:
    /// theirs for Q4_0/Q5_0; Q8_0's signed values are made unsigned by the AVX-512 kernels
    /// (`vpdpbusd` wants an unsigned operand) and used signed by AVX2's sign trick.
    pub fn kernel_zero_point(self, isa: Isa) -> i32 {
        match (self, isa) {
            (Kind::Q8_0, Isa::Avx512 | Isa::Amx) => 128,
            _ => self.zero_point(),
        }
    }
}

/// One `(n, k)` matrix of a 32-element type in panels (see the module docs).
pub(crate) struct Panels {
    pub kind: Kind,
    /// Rows (without the padding).
    pub n: usize,
    /// Blocks per row.
    pub nb: usize,
    pub d: Vec<f16>,
    /// `kind.lines()` lines per tile.
    pub qs: Vec<Line>,
    /// Q5_0: one line (eight `u64`) per tile; empty otherwise.
    pub qh: Vec<Line>,
}

impl Panels {
    /// From raw GGUF blocks (`nb` per row, row-major): `d: f16`, then for Q5_0 `qh: [u8; 4]`
    /// (the fifth bit of element `e` is bit `e`), then `qs` (Q8_0: 32 signed bytes; Q4_0/Q5_0:
    /// element `i < 16` in the low nibble of byte `i`, element `16 + i` in its high nibble).
    pub fn from_gguf(kind: Kind, data: &[u8], n: usize, nb: usize) -> Self {
        let size = match kind {
            Kind::Q4_0 => 18,
            Kind::Q5_0 => 22,
            Kind::Q8_0 => 34,
        };
        Self::build(kind, n, nb, |j, b| {
            let blk = &data[(j * nb + b) * size..][..size];
            let d = f16::from_le_bytes([blk[0], blk[1]]);
            let values = match kind {
                Kind::Q8_0 => std::array::from_fn(|e| blk[2 + e]),
                Kind::Q4_0 => nibble_values(&blk[2..18], [0; 4]),
                Kind::Q5_0 => nibble_values(&blk[6..22], [blk[2], blk[3], blk[4], blk[5]]),
            };
            (d, values)
        })
    }

    /// Packs `n` rows of `nb` blocks, `block(j, b)` giving a block's scale and stored values
    /// (tiles in parallel: this runs for every matrix at load).
    fn build(kind: Kind, n: usize, nb: usize, block: impl Fn(usize, usize) -> (f16, [u8; QK]) + Sync) -> Self {
        let tiles = n.div_ceil(PANEL) * nb;
        let lines = kind.lines();
        let mut out = Self {
            kind,
            n,
            nb,
            d: vec![f16::ZERO; tiles * PANEL],
            qs: vec![Line([0; 64]); tiles * lines],
            qh: vec![Line([0; 64]); if kind == Kind::Q5_0 { tiles } else { 0 }],
        };
        let pad = (f16::ZERO, [kind.zero_point() as u8; QK]);
        let pack = |t: usize, d: &mut [f16], qs: &mut [Line], qh: Option<&mut Line>| {
            let (p, b) = (t / nb, t % nb);
            let qs = bytemuck_lines(qs);
            let mut high = [0u8; 64];
            for (jj, d) in d.iter_mut().enumerate() {
                let j = p * PANEL + jj;
                let (scale, values) = if j < n { block(j, b) } else { pad };
                *d = scale;
                // Four neighbouring elements at a time: vector g takes elements 4g..4g + 4 at
                // `value_index(jj, 4g) = 64g + 4jj`.
                let word = |g: usize| u32::from_le_bytes([values[4 * g], values[4 * g + 1], values[4 * g + 2], values[4 * g + 3]]);
                if kind == Kind::Q8_0 {
                    for g in 0..QK / 4 {
                        qs[64 * g + 4 * jj..][..4].copy_from_slice(&values[4 * g..4 * g + 4]);
                    }
                    continue;
                }
                // Nibbles: vectors 2h (low) and 2h + 1 (high) share line h.
                for h in 0..QK / 8 {
                    let (lo, hi) = (word(2 * h), word(2 * h + 1));
                    let packed = (lo & 0x0F0F_0F0F) | ((hi & 0x0F0F_0F0F) << 4);
                    qs[64 * h + 4 * jj..][..4].copy_from_slice(&packed.to_le_bytes());
                }
                if kind == Kind::Q5_0 {
                    for (e, &value) in values.iter().enumerate() {
                        let v = value_index(jj, e);
                        high[v % 64] |= ((value >> 4) & 1) << (v / 64);
                    }
                }
            }
            if let Some(qh) = qh {
                qh.0 = high;
            }
        };
        let tiles = out.d.par_chunks_mut(PANEL).zip(out.qs.par_chunks_mut(lines)).enumerate();
        if kind == Kind::Q5_0 {
            tiles.zip(out.qh.par_iter_mut()).for_each(|((t, (d, qs)), qh)| pack(t, d, qs, Some(qh)));
        } else {
            tiles.for_each(|(t, (d, qs))| pack(t, d, qs, None));
        }
        out
    }

    /// Stored value of element `e` of block `b` of row `j`.
    pub fn value(&self, j: usize, b: usize, e: usize) -> u8 {
        let (t, v) = ((j / PANEL) * self.nb + b, value_index(j % PANEL, e));
        let lines = self.kind.lines();
        let line = |i: usize| &self.qs[t * lines + i].0;
        match self.kind {
            Kind::Q8_0 => line(v / 64)[v % 64],
            _ => {
                let low = (line(v / 128)[v % 64] >> (4 * ((v % 128) / 64))) & 0xF;
                let high = if self.kind == Kind::Q5_0 { (self.qh[t].0[v % 64] >> (v / 64)) & 1 } else { 0 };
                low | (high << 4)
            }
        }
    }

    /// Signed weight value of element `e` of block `b` of row `j`.
    pub fn signed(&self, j: usize, b: usize, e: usize) -> i32 {
        match self.kind {
            Kind::Q8_0 => self.value(j, b, e) as i8 as i32,
            kind => self.value(j, b, e) as i32 - kind.zero_point(),
        }
    }

    pub fn scale(&self, j: usize, b: usize) -> f16 {
        self.d[((j / PANEL) * self.nb + b) * PANEL + j % PANEL]
    }

    /// Row `j` as f32, bitwise candle's dequantization of the GGUF row (`q as f32 * d`).
    pub fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        for (i, y) in out.iter_mut().enumerate() {
            let (b, e) = (i / QK, i % QK);
            *y = self.signed(j, b, e) as f32 * self.scale(j, b).to_f32();
        }
    }

    /// The matrices stacked along rows; `None` unless all have this kind and width. Panels are
    /// copied as they are when every part but the last fills its last panel, repacked
    /// otherwise.
    pub fn concat(parts: &[&Panels]) -> Option<Panels> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.kind != first.kind || p.nb != first.nb) {
            return None;
        }
        if parts[..parts.len() - 1].iter().all(|p| p.n.is_multiple_of(PANEL)) {
            let mut out = Panels { kind: first.kind, n: 0, nb: first.nb, d: Vec::new(), qs: Vec::new(), qh: Vec::new() };
            for p in parts {
                out.n += p.n;
                out.d.extend_from_slice(&p.d);
                out.qs.extend_from_slice(&p.qs);
                out.qh.extend_from_slice(&p.qh);
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
            (p.scale(j, b), std::array::from_fn(|e| p.value(j, b, e)))
        }))
    }

    /// Bytes the kernels stream per panel.
    pub fn panel_bytes(&self) -> usize {
        self.nb * (self.kind.lines() * 64 + if self.kind == Kind::Q5_0 { 64 } else { 0 } + 2 * PANEL)
    }
}

/// Where element `e` of a panel's row `jj` sits among a tile's 512 values (module docs).
#[inline(always)]
/// The 32 values of a Q4_0/Q5_0 block, eight at a time: element `i < 16` is the low nibble of
/// `qs[i]`, element `16 + i` its high nibble, plus 16 where bit `e` of `qh` is set (Q5_0).
fn nibble_values(qs: &[u8], qh: [u8; 4]) -> [u8; QK] {
    /// Bit `i` of a byte to `0x10` in byte `i` of a word.
    static FIFTH_BITS: [u64; 256] = {
        let mut table = [0u64; 256];
        let mut b = 0;
        while b < 256 {
            let mut i = 0;
            while i < 8 {
                if (b >> i) & 1 == 1 {
                    table[b] |= 0x10 << (8 * i);
                }
                i += 1;
            }
            b += 1;
        }
        table
    };
    const LOW: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    let half = |i: usize| u64::from_le_bytes(qs[8 * i..8 * i + 8].try_into().expect("eight bytes"));
    let words = [half(0) & LOW, half(1) & LOW, (half(0) >> 4) & LOW, (half(1) >> 4) & LOW];
    let mut values = [0u8; QK];
    for (i, (word, high)) in words.iter().zip(qh).enumerate() {
        values[8 * i..8 * i + 8].copy_from_slice(&(word | FIFTH_BITS[high as usize]).to_le_bytes());
    }
    values
}

pub(crate) fn value_index(jj: usize, e: usize) -> usize {
    64 * (e / 4) + 4 * jj + e % 4
}

fn bytemuck_lines(lines: &mut [Line]) -> &mut [u8] {
    // Safety: `Line` is 64 plain bytes with no padding.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * 64) }
}

impl From<Kind> for GgmlDType {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Q4_0 => GgmlDType::Q4_0,
            Kind::Q5_0 => GgmlDType::Q5_0,
            Kind::Q8_0 => GgmlDType::Q8_0,
        }
    }
}

/// The `(m, n)` row-major output; each kernel call writes its own rows and panels.
#[derive(Clone, Copy)]
pub(crate) struct Out {
    ptr: *mut f32,
    m: usize,
    n: usize,
}
// Safety: tasks write disjoint elements (see `matmul`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// Writes row `r`'s values of panel `p` (those of padding rows or columns are dropped).
    ///
    /// # Safety
    /// No other thread accesses these elements meanwhile.
    #[inline(always)]
    pub unsafe fn write(self, r: usize, p: usize, y: &[f32; PANEL]) {
        if r >= self.m {
            return;
        }
        let j0 = p * PANEL;
        let len = (self.n - j0).min(PANEL);
        std::ptr::copy_nonoverlapping(y.as_ptr(), self.ptr.add(r * self.n + j0), len);
    }
}

/// Weight bytes one task streams for a tile of activation rows.
const TASK_BYTES: usize = 32 * 1024;
/// Activation rows a task takes on the one-row kernels (in eights, then four, two, one).
pub(crate) const ROW_TILE: usize = 32;
/// Rows from which the AMX kernel (16 rows a pass, padded) beats the one-row kernels.
const AMX_MIN_ROWS: usize = 16;
/// Activation rows an AMX task takes (a multiple of 16): each panel's weights are decoded
/// once for them.
const AMX_ROW_TILE: usize = 64;
/// Below this much work (weight bytes times rows) one thread does it all.
const SEQUENTIAL_BYTES: usize = 128 * 1024;

/// `y = x W^T` for `x` `(m, k)` row-major, with `isa`'s kernels (available on this CPU).
pub(crate) fn matmul(w: &Panels, x: &[f32], isa: Isa) -> Vec<f32> {
    let k = w.nb * QK;
    let m = x.len() / k;
    let amx = isa == Isa::Amx && m >= AMX_MIN_ROWS;
    let acts = Acts::quantize(x, k, w.kind.kernel_zero_point(isa), amx);
    let row_tile = if amx { AMX_ROW_TILE } else { ROW_TILE };
    // Safety: `isa` is available (checked by the caller); `run_tasks` hands out disjoint
    // rectangles of the output.
    run_tasks((m, w.n), w.panel_bytes(), row_tile, |(r0, r1), ps, out| unsafe { run_tile(w, &acts, isa, amx, (r0, r1), ps, out) })
}

/// The `(m, n)` output of a panel matmul, computed by `task((r0, r1), panels, out)` over
/// rectangles of at most `row_tile` rows and ~`TASK_BYTES` of weights (`panel_bytes` a panel),
/// in parallel when there is enough work. Every element is written by exactly one task.
pub(crate) fn run_tasks(
    (m, n): (usize, usize),
    panel_bytes: usize,
    row_tile: usize,
    task: impl Fn((usize, usize), std::ops::Range<usize>, Out) + Sync,
) -> Vec<f32> {
    let mut y = Vec::<f32>::with_capacity(m * n);
    let out = Out { ptr: y.as_mut_ptr(), m, n };
    let panels = n.div_ceil(PANEL);
    let per_task = (TASK_BYTES / panel_bytes).max(1);
    let panel_tasks = panels.div_ceil(per_task);
    let num_tasks = panel_tasks * m.div_ceil(row_tile);
    let run = |t: usize| {
        let (r0, p0) = (t / panel_tasks * row_tile, t % panel_tasks * per_task);
        task((r0, (r0 + row_tile).min(m)), p0..(p0 + per_task).min(panels), out);
    };
    if panel_bytes * panels * m < SEQUENTIAL_BYTES {
        (0..num_tasks).for_each(run);
    } else {
        (0..num_tasks).into_par_iter().for_each(run);
    }
    // Safety: the tasks' rectangles tile the whole `(m, n)` output, each element written.
    unsafe { y.set_len(m * n) };
    y
}

/// Rows `r0..r1` against panels `ps`.
///
/// # Safety
/// `isa` is available; nothing else writes these outputs meanwhile.
unsafe fn run_tile(w: &Panels, a: &Acts, isa: Isa, amx: bool, (r0, r1): (usize, usize), ps: std::ops::Range<usize>, out: Out) {
    #[cfg(target_arch = "x86_64")]
    if amx {
        return amx::rows(w, a, (r0, r1), ps, out);
    }
    let _ = amx;
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
