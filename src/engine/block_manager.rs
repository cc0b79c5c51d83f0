//! Paged KV block allocation with prefix caching: the scheduler's view of the KV cache.
//!
//! A pool of `num_blocks` blocks of `block_size` token slots. Sequences own blocks through
//! their block tables (`Vec<BlockId>`, kept by the sequence, passed in); this module sees block
//! ids and token ids, never tensors. A FULL, computed block is identified by a hash of its
//! tokens chained with its parent block's hash, so equal hashes mean equal whole prefixes and
//! a new sequence can reuse every cached block of its prompt's prefix. A freed cached block
//! stays findable until an allocation needs it; such blocks are evicted least recently freed
//! first, and only once no uncached free block is left.
//!
//! Invariants (checked after every operation by the tests' `check_invariants`):
//! - a block's `ref_count` is the number of entries naming it in live block tables;
//! - a block is free, in exactly one of `free_uncached` and `evictable`, iff its ref count is 0;
//! - `cached[h] == b` implies `blocks[b].hash == Some(h)`, and then `blocks[b].tokens` are the
//!   block's `block_size` computed tokens and `blocks[b].parent_hash` the hash before them;
//! - an unreferenced block is in `evictable` iff it is in `cached`; any other unreferenced
//!   block has no hash and sits in `free_uncached`;
//! - a referenced block may carry a hash without being in `cached` (another block registered
//!   the same content first: an unregistered duplicate);
//! - in every live table, a hashed block at index i is full and computed, and its hash is the
//!   chained hash of the table's first (i + 1) * block_size tokens (blocks are shared only at
//!   the same index under the same prefix). So `cache_blocks` may resume after the last hashed
//!   block; the blocks after it are unhashed. (Hashed blocks form a prefix of the table, except
//!   after `reset_prefix_cache`, when a sequence sharing a later block re-registers first; an
//!   unhashed block skipped that way has an equal block already registered, so nothing is lost.)

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

pub type BlockId = u32;

/// "No block" in the links of [`LruList`]; never a valid id (`new` caps `num_blocks`).
const NIL: BlockId = BlockId::MAX;

/// Hash of a full block's tokens chained with its parent's hash (`None` for a first block).
type BlockHasher = fn(Option<u64>, &[u32]) -> u64;

/// `DefaultHasher::new()` has fixed keys, so hashes are stable within a process (its algorithm
/// may change between Rust releases: never persist them).
fn chained_hash(parent_hash: Option<u64>, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent_hash.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Block {
    /// Number of sequence block tables holding this block.
    ref_count: u32,
    /// Chained hash of this block's tokens, set once the block is full and computed.
    hash: Option<u64>,
    /// Valid while `hash` is set: the hash of the block before it in its sequence.
    parent_hash: Option<u64>,
    /// Valid while `hash` is set: the block's tokens, so a 64-bit collision never yields a hit.
    tokens: Vec<u32>,
}

/// Intrusive doubly linked list over block ids: O(1) push_back, pop_front and remove.
#[derive(Debug)]
struct LruList {
    prev: Vec<BlockId>,
    next: Vec<BlockId>,
    head: BlockId,
    tail: BlockId,
    len: usize,
}

impl LruList {
    fn new(num_blocks: usize) -> Self {
        Self { prev: vec![NIL; num_blocks], next: vec![NIL; num_blocks], head: NIL, tail: NIL, len: 0 }
    }

    fn push_back(&mut self, b: BlockId) {
        self.prev[b as usize] = self.tail;
        self.next[b as usize] = NIL;
        match self.tail {
            NIL => self.head = b,
            t => self.next[t as usize] = b,
        }
        self.tail = b;
        self.len += 1;
    }

    /// `b` must be in the list (the caller knows it from the block's state).
    fn remove(&mut self, b: BlockId) {
        let (p, n) = (self.prev[b as usize], self.next[b as usize]);
        match p {
            NIL => self.head = n,
            p => self.next[p as usize] = n,
        }
        match n {
            NIL => self.tail = p,
            n => self.prev[n as usize] = p,
        }
        self.prev[b as usize] = NIL;
        self.next[b as usize] = NIL;
        self.len -= 1;
    }

    fn pop_front(&mut self) -> Option<BlockId> {
        let b = self.head;
        (b != NIL).then(|| {
            self.remove(b);
            b
        })
    }

    #[cfg(test)]
    fn to_vec(&self) -> Vec<BlockId> {
        let mut out = vec![];
        let mut b = self.head;
        while b != NIL {
            out.push(b);
            b = self.next[b as usize];
        }
        out
    }
}

#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    enable_prefix_caching: bool,
    blocks: Vec<Block>,
    /// Unreferenced blocks with no cached content; `allocate` takes these first (LIFO).
    free_uncached: Vec<BlockId>,
    /// Unreferenced cached blocks, least recently freed at the front (evicted first).
    evictable: LruList,
    /// Chained hash -> the one block registered under it.
    cached: HashMap<u64, BlockId>,
    num_referenced_blocks: usize,
    num_cached_prefix_tokens_served: usize,
    num_evicted_blocks: usize,
    hasher: BlockHasher,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize, enable_prefix_caching: bool) -> Self {
        Self::with_hasher(num_blocks, block_size, enable_prefix_caching, chained_hash)
    }

    /// Tests pass a weak hasher to force collisions.
    fn with_hasher(num_blocks: usize, block_size: usize, enable_prefix_caching: bool, hasher: BlockHasher) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        assert!(num_blocks < NIL as usize, "num_blocks ({num_blocks}) must be below {NIL}");
        Self {
            block_size,
            enable_prefix_caching,
            blocks: vec![Block::default(); num_blocks],
            // Reversed so that ids are handed out 0, 1, 2, ... on a fresh pool.
            free_uncached: (0..num_blocks as BlockId).rev().collect(),
            evictable: LruList::new(num_blocks),
            cached: HashMap::new(),
            num_referenced_blocks: 0,
            num_cached_prefix_tokens_served: 0,
            num_evicted_blocks: 0,
            hasher,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks an allocation could take now: never-used, freed, and cached-but-unreferenced ones.
    pub fn num_free_blocks(&self) -> usize {
        self.free_uncached.len() + self.evictable.len
    }

    /// Free blocks that hold no cached prefix: what an allocation takes before evicting one.
    pub fn num_free_uncached_blocks(&self) -> usize {
        self.free_uncached.len()
    }

    /// Fraction of blocks referenced by at least one sequence (for metrics), in [0, 1].
    pub fn usage(&self) -> f32 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        self.num_referenced_blocks as f32 / self.blocks.len() as f32
    }

    /// At admission: the longest prefix of FULL blocks of `tokens` that is cached, capped so at
    /// least one token of `tokens` is left uncomputed (the model must run on >= 1 token to
    /// produce logits). Takes a reference on each returned block (removing it from the
    /// evictable set). Returns (blocks, num_cached_tokens = blocks.len() * block_size).
    /// With prefix caching disabled: (vec![], 0).
    pub fn acquire_cached_prefix(&mut self, tokens: &[u32]) -> (Vec<BlockId>, usize) {
        if !self.enable_prefix_caching || tokens.is_empty() {
            return (vec![], 0);
        }
        let max_num_blocks = (tokens.len() - 1) / self.block_size;
        let mut blocks = vec![];
        let mut parent_hash = None;
        for chunk in tokens.chunks_exact(self.block_size).take(max_num_blocks) {
            let hash = (self.hasher)(parent_hash, chunk);
            let Some(&b) = self.cached.get(&hash) else { break };
            let block = &self.blocks[b as usize];
            // Equal hash is not proof: the tokens and the parent (hence, inductively, the
            // whole prefix) must match too.
            if block.parent_hash != parent_hash || block.tokens != chunk {
                break;
            }
            self.take_ref(b);
            blocks.push(b);
            parent_hash = Some(hash);
        }
        let num_cached_tokens = blocks.len() * self.block_size;
        self.num_cached_prefix_tokens_served += num_cached_tokens;
        (blocks, num_cached_tokens)
    }

    /// Makes `table` hold enough blocks for `num_tokens` slots (ceil(num_tokens/block_size)),
    /// appending fresh blocks (evicting the least recently freed cached block when no
    /// never-used/uncached block is free). All or nothing: returns false and changes nothing
    /// if there are too few free blocks. A no-op returning true if the table is big enough.
    pub fn allocate(&mut self, table: &mut Vec<BlockId>, num_tokens: usize) -> bool {
        let num_needed = num_tokens.div_ceil(self.block_size);
        if table.len() >= num_needed {
            return true;
        }
        let num_new = num_needed - table.len();
        if num_new > self.num_free_blocks() {
            return false;
        }
        table.reserve(num_new);
        for _ in 0..num_new {
            let b = match self.free_uncached.pop() {
                Some(b) => b,
                None => {
                    let b = self.evictable.pop_front().expect("num_free_blocks counted it");
                    self.evict(b);
                    b
                }
            };
            let block = &mut self.blocks[b as usize];
            debug_assert!(block.ref_count == 0 && block.hash.is_none());
            block.ref_count = 1;
            self.num_referenced_blocks += 1;
            table.push(b);
        }
        true
    }

    /// After a step computed KV for `tokens[..num_computed]` of a sequence whose block table is
    /// `table`: registers every FULL block among them under its chained hash so later
    /// sequences can reuse it. Idempotent (already-registered blocks are skipped; if another
    /// block already holds the same hash, keep the existing entry and leave this block
    /// unregistered). No-op with prefix caching disabled.
    pub fn cache_blocks(&mut self, table: &[BlockId], tokens: &[u32], num_computed: usize) {
        if !self.enable_prefix_caching {
            return;
        }
        let bs = self.block_size;
        debug_assert!(num_computed <= tokens.len(), "computed {num_computed} of {} tokens", tokens.len());
        debug_assert!(num_computed.div_ceil(bs) <= table.len(), "computed tokens beyond the block table");
        let num_full = (num_computed.min(tokens.len()) / bs).min(table.len());
        // Resume after the last hashed block (see the invariants): O(1) per decode step rather
        // than rehashing the whole sequence.
        let mut start = num_full;
        while start > 0 && self.blocks[table[start - 1] as usize].hash.is_none() {
            start -= 1;
        }
        let mut parent_hash = start.checked_sub(1).and_then(|i| self.blocks[table[i] as usize].hash);
        for (i, &b) in table.iter().enumerate().take(num_full).skip(start) {
            let chunk = &tokens[i * bs..(i + 1) * bs];
            let hash = (self.hasher)(parent_hash, chunk);
            let block = &mut self.blocks[b as usize];
            debug_assert!(block.ref_count > 0, "caching block {b}, which no table holds");
            block.hash = Some(hash);
            block.parent_hash = parent_hash;
            block.tokens.clear();
            block.tokens.extend_from_slice(chunk);
            // A duplicate keeps its hash (so the scan above can skip it) but stays unregistered.
            self.cached.entry(hash).or_insert(b);
            parent_hash = Some(hash);
        }
    }

    /// Releases one reference on each block of `table` (the caller then clears its table).
    /// Unreferenced blocks become free; cached ones stay findable until evicted. Free them in
    /// reverse table order so that, among one sequence's blocks, the tail is evicted before
    /// the head (its prefix stays cached longest).
    pub fn free(&mut self, table: &[BlockId]) {
        for &b in table.iter().rev() {
            let block = &mut self.blocks[b as usize];
            assert!(block.ref_count > 0, "block {b} freed more often than it was taken");
            block.ref_count -= 1;
            if block.ref_count > 0 {
                continue;
            }
            self.num_referenced_blocks -= 1;
            let Some(hash) = block.hash else {
                self.free_uncached.push(b);
                continue;
            };
            match self.cached.entry(hash) {
                Entry::Occupied(e) if *e.get() == b => self.evictable.push_back(b),
                // The block first registered under this hash is gone: this one takes over.
                Entry::Vacant(e) => {
                    e.insert(b);
                    self.evictable.push_back(b);
                }
                // An unregistered duplicate: nothing can find it, so it is plain free space.
                Entry::Occupied(_) => {
                    Self::clear_hash(block);
                    self.free_uncached.push(b);
                }
            }
        }
    }

    /// Counters for metrics/tests: total tokens served from cache by acquire_cached_prefix.
    pub fn num_cached_prefix_tokens_served(&self) -> usize {
        self.num_cached_prefix_tokens_served
    }

    /// Drops every cached hash (e.g. tests); referenced blocks are unaffected.
    ///
    /// Referenced blocks keep their tables and ref counts but lose their hashes too, so nothing
    /// computed before the reset is found afterwards; a running sequence's `cache_blocks`
    /// registers its blocks again. O(num_blocks).
    pub fn reset_prefix_cache(&mut self) {
        self.cached.clear();
        for block in &mut self.blocks {
            Self::clear_hash(block);
        }
        while let Some(b) = self.evictable.pop_front() {
            self.free_uncached.push(b);
        }
    }

    /// A reference on `b`, which is either referenced already or evictable.
    fn take_ref(&mut self, b: BlockId) {
        let block = &mut self.blocks[b as usize];
        if block.ref_count == 0 {
            self.evictable.remove(b);
            self.num_referenced_blocks += 1;
        }
        block.ref_count += 1;
    }

    /// `b` has just left the evictable list: forget its content.
    fn evict(&mut self, b: BlockId) {
        let block = &mut self.blocks[b as usize];
        let hash = block.hash.expect("evictable blocks are cached");
        let removed = self.cached.remove(&hash);
        debug_assert_eq!(removed, Some(b));
        Self::clear_hash(block);
        self.num_evicted_blocks += 1;
    }

    fn clear_hash(block: &mut Block) {
        block.hash = None;
        block.parent_hash = None;
        block.tokens.clear();
    }
}

#[cfg(test)]
mod tests;
