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

    /// Makes now what paged attention would otherwise upload at its first call of the step
    /// (the GPU's work tiles for KV groups of `group` query heads), so that the layers upload
    /// nothing step-specific (see [`crate::param_cache`]). Nothing to do on the CPU.
    pub fn prepare_attention(&self, group: usize) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(packed) = &self.cuda {
            packed.tiles(&self.host, group)?;
        }
        let _ = group;
        Ok(())
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn cuda(&self) -> Option<&cuda::Packed> {
        self.cuda.as_ref()
    }
}

#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    use std::ops::Range;
    use std::sync::OnceLock;

    use candle_core::{Device, Result, Tensor};

    use super::ATTENTION_TILE_ROWS;
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
    }

    impl Packed {
        /// Returns the packed copy and the positions, a view into it.
        pub fn upload(m: &AttentionMetadata, positions: &[u32], device: &Device) -> Result<(Self, Tensor)> {
            let mut data = Vec::new();
            let mut push = |v: &[u32]| {
                let start = data.len();
                data.extend_from_slice(v);
                start..data.len()
            };
            let query_start_loc = push(&m.query_start_loc);
            let seq_lens = push(&m.seq_lens);
            let block_tables = push(&m.block_tables);
            let slot_mapping = push(&m.slot_mapping);
            let pos = push(positions);
            if data.is_empty() {
                data.push(0); // no zero-sized device allocation
            }
            let len = data.len();
            let data = Tensor::from_vec(data, len, device)?;
            let positions = data.narrow(0, pos.start, pos.len())?;
            let packed =
                Self { data, query_start_loc, seq_lens, block_tables, slot_mapping, tiles: OnceLock::new() };
            Ok((packed, positions))
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
