//! Host-side description of one forward step over a paged KV cache.

use std::fmt;

/// Where each sequence's tokens live in the flattened batch and in the cache.
///
/// A step runs `num_tokens` new tokens from `num_seqs` sequences, flattened in sequence order.
/// Sequence `s` owns rows `query_start_loc[s]..query_start_loc[s + 1]`; after this step's
/// writes its cache holds `seq_lens[s]` tokens, so its new tokens sit at positions
/// `seq_lens[s] - q_len ..seq_lens[s]` and each attends causally to every earlier position.
/// A prefill, a prefill chunk after a cached prefix, and a decode step are the same thing here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttentionMetadata {
    /// `num_seqs + 1` offsets into the flattened tokens, starting at 0.
    pub query_start_loc: Vec<u32>,
    /// Cached plus new tokens of each sequence, after this step.
    pub seq_lens: Vec<u32>,
    /// Row-major `(num_seqs, max_blocks_per_seq)` block ids; unused tail entries are ignored.
    pub block_tables: Vec<u32>,
    pub max_blocks_per_seq: usize,
    /// Cache slot (`block * block_size + offset`) of every new token.
    pub slot_mapping: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataError(pub String);

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid attention metadata: {}", self.0)
    }
}

impl std::error::Error for MetadataError {}

impl AttentionMetadata {
    /// Metadata for one sequence whose first `seq_len - num_new` tokens are already cached in
    /// `block_table` (a convenience for single-sequence generation and tests).
    pub fn single(block_table: &[u32], block_size: usize, seq_len: usize, num_new: usize) -> Self {
        let slot_mapping = (seq_len - num_new..seq_len)
            .map(|p| block_table[p / block_size] * block_size as u32 + (p % block_size) as u32)
            .collect();
        Self {
            query_start_loc: vec![0, num_new as u32],
            seq_lens: vec![seq_len as u32],
            block_tables: block_table.to_vec(),
            max_blocks_per_seq: block_table.len(),
            slot_mapping,
        }
    }

    pub fn num_seqs(&self) -> usize {
        self.seq_lens.len()
    }

    pub fn num_tokens(&self) -> usize {
        self.slot_mapping.len()
    }

    /// The position of every new token within its sequence, in batch order.
    pub fn positions(&self) -> Vec<u32> {
        let mut positions = Vec::with_capacity(self.num_tokens());
        for s in 0..self.num_seqs() {
            let num_new = self.query_start_loc[s + 1] - self.query_start_loc[s];
            positions.extend(self.seq_lens[s] - num_new..self.seq_lens[s]);
        }
        positions
    }

    /// The block ids of sequence `s`.
    pub fn block_table(&self, s: usize) -> &[u32] {
        &self.block_tables[s * self.max_blocks_per_seq..(s + 1) * self.max_blocks_per_seq]
    }

    /// Checks every index the kernels will follow, so a bad step is an error, never an
    /// out-of-bounds access.
    pub fn validate(&self, num_blocks: usize, block_size: usize) -> Result<(), MetadataError> {
        let err = |m: String| Err(MetadataError(m));
        let num_seqs = self.seq_lens.len();
        if self.query_start_loc.len() != num_seqs + 1 || self.query_start_loc.first() != Some(&0) {
            return err(format!(
                "query_start_loc has {} entries for {num_seqs} sequences",
                self.query_start_loc.len()
            ));
        }
        if self.block_tables.len() != num_seqs * self.max_blocks_per_seq {
            return err("block_tables is not num_seqs * max_blocks_per_seq long".into());
        }
        if *self.query_start_loc.last().unwrap() as usize != self.slot_mapping.len() {
            return err("slot_mapping length differs from the number of new tokens".into());
        }
        for s in 0..num_seqs {
            let (start, end) = (self.query_start_loc[s], self.query_start_loc[s + 1]);
            if end < start || end - start > self.seq_lens[s] {
                return err(format!("sequence {s} has more new tokens than tokens"));
            }
            let num_blocks_needed = (self.seq_lens[s] as usize).div_ceil(block_size);
            if num_blocks_needed > self.max_blocks_per_seq {
                return err(format!("sequence {s} needs {num_blocks_needed} blocks, table has {}", self.max_blocks_per_seq));
            }
            if let Some(b) = self.block_table(s)[..num_blocks_needed].iter().find(|&&b| b as usize >= num_blocks) {
                return err(format!("sequence {s} refers to block {b} of {num_blocks}"));
            }
        }
        if let Some(s) = self.slot_mapping.iter().find(|&&s| s as usize >= num_blocks * block_size) {
            return err(format!("slot {s} is outside the cache"));
        }
        Ok(())
    }
}
