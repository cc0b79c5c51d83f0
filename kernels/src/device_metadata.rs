//! A step's [`AttentionMetadata`] together with its copy on the compute device.
//!
//! Built once per forward and passed to every layer, so the host vectors cross to the GPU in
//! one copy per step, not one per layer and op. On the CPU there is nothing to copy: the ops
//! read the host vectors.

use candle_core::{Device, Result, Tensor};

use crate::metadata::AttentionMetadata;

/// Query rows (token, query head of a KV group) one attention thread block handles; must equal
/// `ROWS` in `cuda/paged_attention.cu`.
#[cfg(feature = "cuda")]
pub(crate) const ATTENTION_TILE_ROWS: usize = 16;

pub struct DeviceMetadata {
    host: AttentionMetadata,
    /// `(num_tokens,)` u32 on the device: each new token's position in its sequence.
    positions: Tensor,
    #[cfg(feature = "cuda")]
    cuda: Option<cuda::Packed>,
}

impl DeviceMetadata {
    /// Copies `metadata` to `device` (one host-to-device copy on a GPU).
    pub fn new(metadata: AttentionMetadata, device: &Device) -> Result<Self> {
        let positions = metadata.positions();
        #[cfg(feature = "cuda")]
        if device.is_cuda() {
            let (packed, positions) = cuda::Packed::upload(&metadata, &positions, device)?;
            return Ok(Self { host: metadata, positions, cuda: Some(packed) });
        }
        let positions = Tensor::from_vec(positions, metadata.num_tokens(), device)?;
        Ok(Self {
            host: metadata,
            positions,
            #[cfg(feature = "cuda")]
            cuda: None,
        })
    }

    pub fn host(&self) -> &AttentionMetadata {
        &self.host
    }

    /// Every new token's position, `(num_tokens,)` u32 on the device (for rotary embeddings).
    pub fn positions(&self) -> &Tensor {
        &self.positions
    }

    /// Makes now what paged attention would otherwise make at its first call of the step (the
    /// GPU's work tiles for KV groups of `group` query heads, and the split counters), so that
    /// the layers upload and allocate nothing step-specific (see [`crate::param_cache`]; a
    /// CUDA graph's capture can do neither). Nothing to do on the CPU.
    pub fn prepare_attention(&self, group: usize) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(packed) = &self.cuda {
            packed.tiles(&self.host, group)?;
            packed.split_counters(crate::paged_attention::split_target(self.positions.device())?)?;
        }
        let _ = group;
        Ok(())
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn cuda(&self) -> Option<&cuda::Packed> {
        self.cuda.as_ref()
    }

    /// Metadata for a CUDA graph of decode steps: `num_seqs` sequences of one new token each,
    /// block tables `max_blocks_per_seq` wide, at device addresses that stay fixed while
    /// [`Self::refill`] replaces the values each step. The host side is a template that gives
    /// the kernels' launch shapes: every sequence as long as the tables allow
    /// (`max_blocks_per_seq * block_size` tokens), so attention's key-range split covers any
    /// step. The attention tiles for KV groups of `group` query heads are made now.
    #[cfg(feature = "cuda")]
    pub fn for_graph(num_seqs: usize, max_blocks_per_seq: usize, block_size: usize, group: usize, device: &Device) -> Result<Self> {
        let max_len = (max_blocks_per_seq * block_size) as u32;
        let template = AttentionMetadata {
            query_start_loc: (0..=num_seqs as u32).collect(),
            seq_lens: vec![max_len; num_seqs],
            block_tables: vec![0; num_seqs * max_blocks_per_seq],
            max_blocks_per_seq,
            // Slots that exist in any cache: the host-side checks of the ops see these.
            slot_mapping: vec![0; num_seqs],
        };
        let meta = Self::new(template, device)?;
        meta.prepare_attention(group)?;
        Ok(meta)
    }

    /// Copies `step`'s values into a [`Self::for_graph`] metadata's device buffers (no new
    /// allocation): `step` must be a decode of as many sequences, each needing at most the
    /// template's table width, and valid for the cache (checked by the caller).
    #[cfg(feature = "cuda")]
    pub fn refill(&self, step: &AttentionMetadata, block_size: usize) -> Result<()> {
        let t = &self.host;
        let decode = step.num_seqs() == t.num_seqs() && step.num_tokens() == t.num_seqs() && step.query_start_loc == t.query_start_loc;
        if !decode || step.seq_lens.iter().any(|&l| l as usize > t.max_blocks_per_seq * block_size) {
            candle_core::bail!("refill: the step is not a decode of {} sequences within {} blocks each", t.num_seqs(), t.max_blocks_per_seq);
        }
        let Some(packed) = &self.cuda else { candle_core::bail!("refill: metadata not on a GPU") };
        packed.refill(&pack(step, &step.positions(), t.max_blocks_per_seq).0)
    }
}

/// Offsets of each vector in a packed upload.
#[cfg(any(feature = "cuda", test))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PackedRanges {
    pub query_start_loc: std::ops::Range<usize>,
    pub seq_lens: std::ops::Range<usize>,
    pub block_tables: std::ops::Range<usize>,
    pub slot_mapping: std::ops::Range<usize>,
    pub positions: std::ops::Range<usize>,
}

/// All of a step's u32 vectors in one (one host-to-device copy), block tables re-laid
/// `table_width` wide (at least the widest table a sequence needs; entries past a table's
/// end are 0).
#[cfg(any(feature = "cuda", test))]
pub(crate) fn pack(m: &AttentionMetadata, positions: &[u32], table_width: usize) -> (Vec<u32>, PackedRanges) {
    let mut data = Vec::with_capacity(m.query_start_loc.len() + m.num_seqs() * (1 + table_width) + 2 * m.num_tokens());
    let push = |data: &mut Vec<u32>, v: &[u32]| {
        let start = data.len();
        data.extend_from_slice(v);
        start..data.len()
    };
    let query_start_loc = push(&mut data, &m.query_start_loc);
    let seq_lens = push(&mut data, &m.seq_lens);
    let start = data.len();
    for s in 0..m.num_seqs() {
        let table = m.block_table(s);
        let n = table.len().min(table_width);
        data.extend_from_slice(&table[..n]);
        data.resize(data.len() + table_width - n, 0);
    }
    let block_tables = start..data.len();
    let slot_mapping = push(&mut data, &m.slot_mapping);
    let positions = push(&mut data, positions);
    (data, PackedRanges { query_start_loc, seq_lens, block_tables, slot_mapping, positions })
}

#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    use std::ops::Range;
    use std::sync::OnceLock;

    use candle_core::{DType, Device, Result, Tensor};

    use super::{pack, ATTENTION_TILE_ROWS};
    use crate::metadata::AttentionMetadata;

    /// All u32 vectors of a step in one device tensor; each field is a range of it.
    pub(crate) struct Packed {
        pub data: Tensor,
        pub query_start_loc: Range<usize>,
        pub seq_lens: Range<usize>,
        pub block_tables: Range<usize>,
        pub slot_mapping: Range<usize>,
        /// Attention work tiles `(seq, first row)` for one KV group size, made on first use
        /// (every layer of a model has the same group size).
        tiles: OnceLock<(usize, Tensor)>,
        /// Zeroed u32 counters for attention launches that split key ranges (the kernel sets
        /// each back to zero), made on first use.
        counters: OnceLock<Tensor>,
    }

    impl Packed {
        /// Returns the packed copy and the positions, a view into it.
        pub fn upload(m: &AttentionMetadata, positions: &[u32], device: &Device) -> Result<(Self, Tensor)> {
            let (mut data, r) = pack(m, positions, m.max_blocks_per_seq);
            if data.is_empty() {
                data.push(0); // no zero-sized device allocation
            }
            let len = data.len();
            let data = Tensor::from_vec(data, len, device)?;
            let positions = data.narrow(0, r.positions.start, r.positions.len())?;
            let packed = Self {
                data,
                query_start_loc: r.query_start_loc,
                seq_lens: r.seq_lens,
                block_tables: r.block_tables,
                slot_mapping: r.slot_mapping,
                tiles: OnceLock::new(),
                counters: OnceLock::new(),
            };
            Ok((packed, positions))
        }

        /// Overwrites the packed data in place with `values`, packed as at [`Self::upload`].
        pub fn refill(&self, values: &[u32]) -> Result<()> {
            if values.len() != self.data.elem_count() {
                candle_core::bail!("refill: {} values for a buffer of {}", values.len(), self.data.elem_count());
            }
            crate::host_copy::overwrite_u32(&self.data, values)
        }

        /// At least `len` zeroed u32 counters on the device, the same ones for every call.
        pub fn split_counters(&self, len: usize) -> Result<Tensor> {
            if self.counters.get().is_none() {
                let _ = self.counters.set(Tensor::zeros(len, DType::U32, self.data.device())?);
            }
            let counters = self.counters.get().expect("made above");
            if counters.elem_count() < len {
                candle_core::bail!("attention split counters: {} made, {len} wanted", counters.elem_count());
            }
            Ok(counters.clone())
        }

        /// `(num_tiles, 2)` u32 on the device: `(seq, first row)` of every tile of
        /// [`ATTENTION_TILE_ROWS`] query rows, where sequence `s`'s rows are its new tokens
        /// times the `group` query heads that share a KV head (row = token * group + head).
        pub fn tiles(&self, m: &AttentionMetadata, group: usize) -> Result<Tensor> {
            if let Some((g, tiles)) = self.tiles.get() {
                if *g == group {
                    return Ok(tiles.clone());
                }
            }
            let mut tiles = Vec::new();
            for s in 0..m.num_seqs() {
                let num_rows = (m.query_start_loc[s + 1] - m.query_start_loc[s]) as usize * group;
                for row in (0..num_rows).step_by(ATTENTION_TILE_ROWS) {
                    tiles.extend([s as u32, row as u32]);
                }
            }
            let n = tiles.len() / 2;
            let tiles = Tensor::from_vec(tiles, (n, 2), self.data.device())?;
            // A second group size (never the case within one model) is simply not cached.
            let _ = self.tiles.set((group, tiles.clone()));
            Ok(tiles)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pack;
    use crate::AttentionMetadata;

    /// Packed as the kernels read it; a graph's wider tables are padded with zeros.
    #[test]
    fn packs_every_vector_and_relays_the_tables() {
        // Two decoding sequences: 5 tokens in blocks [3, 1], 2 tokens in block [4].
        let m = AttentionMetadata {
            query_start_loc: vec![0, 1, 2],
            seq_lens: vec![5, 2],
            block_tables: vec![3, 1, 4, 0],
            max_blocks_per_seq: 2,
            slot_mapping: vec![4, 17], // position 4 in block 1, position 1 in block 4
        };
        let positions = m.positions();
        assert_eq!(positions, [4, 1]);
        let (data, r) = pack(&m, &positions, 2);
        assert_eq!(data, [0, 1, 2, 5, 2, 3, 1, 4, 0, 4, 17, 4, 1]);
        assert_eq!((r.block_tables, r.positions), (5..9, 11..13));
        let (wide, r) = pack(&m, &positions, 4);
        assert_eq!(wide, [0, 1, 2, 5, 2, 3, 1, 0, 0, 4, 0, 0, 0, 4, 17, 4, 1]);
        assert_eq!((r.query_start_loc, r.seq_lens, r.block_tables, r.slot_mapping, r.positions), (0..3, 3..5, 5..13, 13..15, 15..17));
    }
}
