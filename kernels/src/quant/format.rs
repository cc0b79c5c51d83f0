//! Weight storage: GGUF blocks repacked at load into the layouts the dot kernels read.
//!
//! The values are never changed, only moved: every weight dequantizes to exactly what candle's
//! `QTensor::dequantize` gives for the original bytes. Every type goes into sixteen-row panels
//! ([`super::panel`], [`super::kpanel`]); the K-quant blocks are parsed first into the structs
//! below (6-bit scales and minimums unpacked), at the cost of a copy of the matrix while it is
//! being loaded.

use candle_core::quantized::GgmlDType;
use candle_core::Result;
use half::f16;

use super::kpanel::KPanels;
use super::panel::{Kind, Panels, QK};

/// Elements per K-quant super-block.
pub(crate) const QK_K: usize = 256;

/// One matrix `(n, k)` in sixteen-row panels: the 32-element types ([`Panels`]) or the
/// K-quants ([`KPanels`]).
pub(crate) enum Weights {
    Panels(Panels),
    KPanels(KPanels),
}

/// Q4_K with its 6-bit scales and mins unpacked (value `d * scales[s] * q - dmin * mins[s]` in
/// sub-block `s` = element / 32) and its nibbles laid out by [`pack_nibbles`] per half
/// (elements `128h ..128h + 128` in `qs[64h..64h + 64]`).
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Q4KBlock {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 8],
    pub mins: [u8; 8],
    pub qs: [u8; 128],
}

/// Q5_K: as [`Q4KBlock`] plus a fifth bit, bit `e % 8` of `qh[e / 8]` for element `e` (so
/// little-endian word `w` of 64 bits covers elements `64w ..64w + 64`).
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Q5KBlock {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 8],
    pub mins: [u8; 8],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// Q6_K as stored in GGUF (only the scale moved first): in half `h`, elements `128h + i` and
/// `128h + 64 + i` (`i < 64`) take their low 4 bits from the low and high nibble of
/// `ql[64h + i]` (the [`pack_nibbles`] layout), and element `128h + 32t + l` (`l < 32`) its
/// bits 4..5 from bits `2t..2t+1` of `qh[32h + l]`; value `d * scales[e / 16] * (q - 32)`.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Q6KBlock {
    pub d: f16,
    pub scales: [i8; 16],
    pub ql: [u8; 128],
    pub qh: [u8; 64],
}

/// Packs 128 4-bit values into 64 bytes: byte `i` holds value `i` in its low nibble and value
/// `64 + i` in its high nibble.
pub(crate) fn pack_nibbles(values: &[u8; 128]) -> [u8; 64] {
    std::array::from_fn(|i| values[i] | (values[64 + i] << 4))
}

/// Value `e` (< 128) of a [`pack_nibbles`] group.
#[inline(always)]
pub(crate) fn nibble(packed: &[u8], e: usize) -> u8 {
    if e < 64 { packed[e] & 0xF } else { packed[e - 64] >> 4 }
}

impl Weights {
    /// Repacks `data`, the raw GGUF bytes of an `(n, k)` matrix; `None` for types we have no
    /// kernel for.
    pub fn from_gguf(dtype: GgmlDType, data: &[u8], n: usize, k: usize) -> Result<Option<Self>> {
        let (block, kind) = match dtype {
            GgmlDType::Q4_0 => (QK, Some(Kind::Q4_0)),
            GgmlDType::Q5_0 => (QK, Some(Kind::Q5_0)),
            GgmlDType::Q8_0 => (QK, Some(Kind::Q8_0)),
            GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K => (QK_K, None),
            _ => return Ok(None),
        };
        if !k.is_multiple_of(block) {
            candle_core::bail!("quantized matrix: in_features {k} is not a multiple of {dtype:?}'s block {block}");
        }
        let num_blocks = n * k / block;
        if data.len() != num_blocks * dtype.type_size() {
            candle_core::bail!("quantized matrix: {} bytes for {num_blocks} {dtype:?} blocks", data.len());
        }
        if let Some(kind) = kind {
            return Ok(Some(Self::Panels(Panels::from_gguf(kind, data, n, k / QK))));
        }
        let blocks = data.chunks_exact(dtype.type_size());
        let nb = k / QK_K;
        Ok(Some(Self::KPanels(match dtype {
            GgmlDType::Q4K => KPanels::from_q4k(&blocks.map(Q4KBlock::from_gguf).collect::<Vec<_>>(), n, nb),
            GgmlDType::Q5K => KPanels::from_q5k(&blocks.map(Q5KBlock::from_gguf).collect::<Vec<_>>(), n, nb),
            _ => KPanels::from_q6k(&blocks.map(Q6KBlock::from_gguf).collect::<Vec<_>>(), n, nb),
        })))
    }

    /// The GGUF type.
    pub fn dtype(&self) -> GgmlDType {
        match self {
            Self::Panels(p) => p.kind.into(),
            Self::KPanels(p) => p.kind.into(),
        }
    }

    /// Elements per scale block (32 or 256).
    #[cfg(test)]
    pub fn block_len(&self) -> usize {
        match self {
            Self::Panels(_) => QK,
            Self::KPanels(_) => QK_K,
        }
    }

    /// Row-wise concatenation of matrices of one type and width; `None` if the types differ.
    pub fn concat(parts: &[&Weights]) -> Option<Weights> {
        match parts.first()? {
            Self::Panels(_) => {
                Some(Self::Panels(Panels::concat(&parts.iter().map(|p| if let Self::Panels(w) = p { Some(w) } else { None }).collect::<Option<Vec<_>>>()?)?))
            }
            Self::KPanels(_) => {
                Some(Self::KPanels(KPanels::concat(&parts.iter().map(|p| if let Self::KPanels(w) = p { Some(w) } else { None }).collect::<Option<Vec<_>>>()?)?))
            }
        }
    }

    /// Row `j` of the matrix as f32, bitwise what candle's dequantization of the original GGUF
    /// row gives (its formulas, in its order of operations).
    pub fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        match self {
            Self::Panels(w) => w.dequantize_row(j, out),
            Self::KPanels(w) => w.dequantize_row(j, out),
        }
    }
}

fn f16_at(b: &[u8], at: usize) -> f16 {
    f16::from_le_bytes([b[at], b[at + 1]])
}

/// The 6-bit (scale, min) of sub-block `j` from a Q4_K/Q5_K 12-byte packed array: sub-blocks
/// 0..4 keep the low 6 bits of bytes `j` and `j + 4`; 4..8 combine a nibble of byte `j + 4`
/// with the top two bits of bytes `j - 4` (scale) and `j` (min).
fn unpack_scale_min(packed: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        ((packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4), (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4))
    }
}

fn unpack_scales_mins(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut scales, mut mins) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        (scales[j], mins[j]) = unpack_scale_min(packed, j);
    }
    (scales, mins)
}

/// The 256 4-bit values of a GGUF Q4_K/Q5_K `qs`: element `64c + l` (`l < 32`) is the low
/// nibble of byte `32c + l`, element `64c + 32 + l` its high nibble.
fn k_nibbles(qs: &[u8]) -> [u8; 128] {
    let value = |e: usize| {
        let byte = qs[(e / 64) * 32 + e % 32];
        if e % 64 < 32 { byte & 0xF } else { byte >> 4 }
    };
    let halves = [0, 128].map(|h| pack_nibbles(&std::array::from_fn(|i| value(h + i))));
    std::array::from_fn(|i| halves[i / 64][i % 64])
}

impl Q4KBlock {
    /// GGUF: `d, dmin: f16, scales: [u8; 12], qs: [u8; 128]`.
    fn from_gguf(b: &[u8]) -> Self {
        let (scales, mins) = unpack_scales_mins(&b[4..16]);
        Self { d: f16_at(b, 0), dmin: f16_at(b, 2), scales, mins, qs: k_nibbles(&b[16..144]) }
    }
}

impl Q5KBlock {
    /// GGUF: `d, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`, the fifth bit of
    /// element `32s + l` being bit `s` of `qh[l]`.
    fn from_gguf(b: &[u8]) -> Self {
        let (scales, mins) = unpack_scales_mins(&b[4..16]);
        let qh = &b[16..48];
        let mut masks = [0u8; 32];
        for e in 0..256 {
            masks[e / 8] |= ((qh[e % 32] >> (e / 32)) & 1) << (e % 8);
        }
        Self { d: f16_at(b, 0), dmin: f16_at(b, 2), scales, mins, qh: masks, qs: k_nibbles(&b[48..176]) }
    }
}

impl Q6KBlock {
    /// Element `e`'s unsigned 6-bit value.
    pub fn value(&self, e: usize) -> u8 {
        let (h, i) = (e / 128, e % 128);
        let high = (self.qh[32 * h + i % 32] >> (2 * (i / 32))) & 3;
        nibble(&self.ql[64 * h..], i) | (high << 4)
    }

    /// GGUF: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`.
    fn from_gguf(b: &[u8]) -> Self {
        Self {
            d: f16_at(b, 208),
            scales: std::array::from_fn(|i| b[192 + i] as i8),
            ql: b[0..128].try_into().unwrap(),
            qh: b[128..192].try_into().unwrap(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibbles_pack_low_then_high() {
        let values: [u8; 128] = std::array::from_fn(|i| (i % 16) as u8);
        let packed = pack_nibbles(&values);
        assert!((0..128).all(|i| nibble(&packed, i) == values[i]));
        assert_eq!(packed[3], 3 | (3 << 4));
    }
}
