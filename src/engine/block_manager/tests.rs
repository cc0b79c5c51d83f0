//! Tests of `block_manager.rs`.

use super::*;

/// Everything an operation may change, comparable.
#[derive(Debug, PartialEq)]
struct Snapshot {
    blocks: Vec<Block>,
    free_uncached: Vec<BlockId>,
    evictable: Vec<BlockId>,
    cached: Vec<(u64, BlockId)>,
    num_referenced_blocks: usize,
}

impl BlockManager {
    /// Walks every structure (O(num_blocks)); panics on the first broken invariant.
    fn check_invariants(&self) {
        let n = self.blocks.len();
        let mut num_lists = vec![0usize; n];
        for &b in &self.free_uncached {
            num_lists[b as usize] += 1;
            assert!(self.blocks[b as usize].hash.is_none(), "uncached free block {b} has a hash");
        }
        let lru = self.evictable.to_vec();
        assert_eq!(lru.len(), self.evictable.len);
        let mut backwards = vec![];
        let mut b = self.evictable.tail;
        while b != NIL {
            backwards.push(b);
            b = self.evictable.prev[b as usize];
        }
        backwards.reverse();
        assert_eq!(backwards, lru, "evictable list links disagree");
        for &b in &lru {
            num_lists[b as usize] += 1;
            let hash = self.blocks[b as usize].hash.expect("evictable block without a hash");
            assert_eq!(self.cached.get(&hash), Some(&b), "evictable block {b} is not findable");
        }
        for (b, block) in self.blocks.iter().enumerate() {
            let expected = usize::from(block.ref_count == 0);
            let num = num_lists[b];
            assert_eq!(num, expected, "block {b} (ref count {}) is in {num} free lists", block.ref_count);
            match block.hash {
                Some(hash) => {
                    assert!(self.enable_prefix_caching, "hash recorded with prefix caching off");
                    assert_eq!(block.tokens.len(), self.block_size);
                    assert_eq!((self.hasher)(block.parent_hash, &block.tokens), hash);
                }
                None => assert!(block.tokens.is_empty() && block.parent_hash.is_none()),
            }
        }
        for (&hash, &b) in &self.cached {
            assert_eq!(self.blocks[b as usize].hash, Some(hash), "map entry of block {b} is stale");
        }
        let num_referenced = self.blocks.iter().filter(|b| b.ref_count > 0).count();
        assert_eq!(self.num_referenced_blocks, num_referenced);
        assert_eq!(self.num_free_blocks() + num_referenced, n);
        assert!((0.0..=1.0).contains(&self.usage()));
    }

    fn snapshot(&self) -> Snapshot {
        let mut cached: Vec<_> = self.cached.iter().map(|(&h, &b)| (h, b)).collect();
        cached.sort_unstable();
        Snapshot {
            blocks: self.blocks.clone(),
            free_uncached: self.free_uncached.clone(),
            evictable: self.evictable.to_vec(),
            cached,
            num_referenced_blocks: self.num_referenced_blocks,
        }
    }

    /// Findable by hash (does not touch the eviction order, unlike a lookup).
    fn is_cached(&self, b: BlockId) -> bool {
        self.blocks[b as usize].hash.is_some_and(|h| self.cached.get(&h) == Some(&b))
    }

    fn ref_count(&self, b: BlockId) -> u32 {
        self.blocks[b as usize].ref_count
    }
}

/// Runs one sequence over all of `tokens`: cached prefix, blocks, computed, cached.
/// Returns its block table and how many tokens came from the cache.
fn run_seq(bm: &mut BlockManager, tokens: &[u32]) -> (Vec<BlockId>, usize) {
    let (mut table, num_cached) = bm.acquire_cached_prefix(tokens);
    assert!(bm.allocate(&mut table, tokens.len()), "pool too small for the test");
    bm.cache_blocks(&table, tokens, tokens.len());
    bm.check_invariants();
    (table, num_cached)
}

/// Tokens served from the cache for `tokens`, references given back at once.
fn num_hit_tokens(bm: &mut BlockManager, tokens: &[u32]) -> usize {
    let (table, num_cached) = bm.acquire_cached_prefix(tokens);
    bm.free(&table);
    bm.check_invariants();
    num_cached
}

fn cat(parts: &[&[u32]]) -> Vec<u32> {
    parts.concat()
}

#[test]
fn allocate_and_free_round_trip() {
    let mut bm = BlockManager::new(8, 4, true);
    let mut table = vec![];
    assert!(bm.allocate(&mut table, 0));
    assert!(table.is_empty());
    assert!(bm.allocate(&mut table, 1));
    assert_eq!(table.len(), 1);
    assert!(bm.allocate(&mut table, 4), "4 tokens fit the first block");
    assert_eq!(table.len(), 1);
    assert!(bm.allocate(&mut table, 13));
    assert_eq!(table.len(), 4);
    assert!(bm.allocate(&mut table, 2), "shrinking is a no-op");
    assert_eq!(table.len(), 4);
    let mut distinct = table.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 4);
    assert_eq!(bm.num_free_blocks(), 4);
    assert_eq!(bm.usage(), 0.5);
    bm.check_invariants();

    bm.free(&table);
    assert_eq!(bm.num_free_blocks(), 8);
    assert_eq!(bm.usage(), 0.0);
    bm.check_invariants();

    let mut all = vec![];
    assert!(bm.allocate(&mut all, 32));
    all.sort_unstable();
    assert_eq!(all, (0..8).collect::<Vec<_>>());
    assert_eq!((bm.num_free_blocks(), bm.usage()), (0, 1.0));
    bm.check_invariants();
}

#[test]
fn failed_allocate_changes_nothing() {
    let mut bm = BlockManager::new(4, 4, true);
    let a: Vec<u32> = (0..9).collect();
    let (a_table, _) = run_seq(&mut bm, &a);
    bm.free(&a_table);
    let mut b_table = vec![];
    assert!(bm.allocate(&mut b_table, 4));
    assert_eq!(bm.num_free_blocks(), 3, "2 cached + 1 uncached");

    let before = bm.snapshot();
    assert!(!bm.allocate(&mut b_table, 20), "needs 4 more blocks, 3 are free");
    assert_eq!(b_table.len(), 1);
    assert_eq!(bm.snapshot(), before);
    assert_eq!(num_hit_tokens(&mut bm, &a), 8, "a failed allocation evicts nothing");

    assert!(bm.allocate(&mut b_table, 16), "exactly the 3 free blocks");
    assert_eq!(bm.num_free_blocks(), 0);
    assert_eq!(num_hit_tokens(&mut bm, &a), 0, "both cached blocks were evicted");
    bm.check_invariants();
}

#[test]
fn shared_prefix_is_ref_counted_and_hit_while_first_runs() {
    let mut bm = BlockManager::new(16, 4, true);
    let a: Vec<u32> = (0..10).collect();
    let (a_table, _) = run_seq(&mut bm, &a);
    assert_eq!(a_table.len(), 3);

    let b = cat(&[&a[..8], &[100, 101, 102]]);
    let (mut b_table, num_cached) = bm.acquire_cached_prefix(&b);
    assert_eq!((&b_table[..], num_cached), (&a_table[..2], 8));
    assert_eq!((bm.ref_count(a_table[0]), bm.ref_count(a_table[1]), bm.ref_count(a_table[2])), (2, 2, 1));
    assert!(bm.allocate(&mut b_table, b.len()));
    assert_eq!(b_table.len(), 3);
    assert!(!a_table.contains(&b_table[2]), "the partial block is never shared");
    assert_eq!(bm.usage(), 4.0 / 16.0);
    bm.check_invariants();

    bm.free(&a_table);
    assert_eq!((bm.ref_count(a_table[0]), bm.ref_count(a_table[1]), bm.ref_count(a_table[2])), (1, 1, 0));
    assert_eq!(bm.num_free_blocks(), 13);
    bm.check_invariants();
    bm.free(&b_table);
    assert_eq!(bm.num_free_blocks(), 16);
    assert_eq!(bm.num_cached_prefix_tokens_served(), 8);
    bm.check_invariants();
}

#[test]
fn prefix_hit_after_first_sequence_is_freed() {
    let mut bm = BlockManager::new(16, 4, true);
    let a: Vec<u32> = (0..13).collect();
    let (a_table, _) = run_seq(&mut bm, &a);
    bm.free(&a_table);
    assert_eq!((bm.num_free_blocks(), bm.usage()), (16, 0.0), "cached but unreferenced blocks are free");

    let (b_table, num_cached) = bm.acquire_cached_prefix(&a);
    assert_eq!((&b_table[..], num_cached), (&a_table[..3], 12));
    assert_eq!(bm.num_free_blocks(), 13, "cached blocks left the free pool");
    assert_eq!(bm.num_cached_prefix_tokens_served(), 12);
    bm.check_invariants();
}

#[test]
fn prefix_hit_leaves_at_least_one_token_to_compute() {
    let mut bm = BlockManager::new(16, 4, true);
    let a: Vec<u32> = (0..12).collect();
    let (a_table, _) = run_seq(&mut bm, &a);
    bm.free(&a_table);
    assert_eq!(num_hit_tokens(&mut bm, &a), 8, "3 full blocks cached, only 2 reused");
    assert_eq!(num_hit_tokens(&mut bm, &a[..11]), 8);
    assert_eq!(num_hit_tokens(&mut bm, &a[..9]), 8);
    assert_eq!(num_hit_tokens(&mut bm, &a[..8]), 4);
    assert_eq!(num_hit_tokens(&mut bm, &a[..4]), 0);
    assert_eq!(num_hit_tokens(&mut bm, &a[..1]), 0);
    assert_eq!(num_hit_tokens(&mut bm, &[]), 0);
    assert_eq!(num_hit_tokens(&mut bm, &cat(&[&a, &[99]])), 12);
}

#[test]
fn eviction_is_lru_across_sequences_and_tail_first_within_one() {
    let mut bm = BlockManager::new(6, 2, true);
    let (a_table, _) = run_seq(&mut bm, &[1, 2, 3, 4, 5]);
    let (b_table, _) = run_seq(&mut bm, &[11, 12, 13, 14, 15]);
    bm.free(&a_table);
    bm.free(&b_table);
    let ([a0, a1, a2], [b0, b1, b2]) = (a_table[..].try_into().unwrap(), b_table[..].try_into().unwrap());

    let mut taken = vec![];
    assert!(bm.allocate(&mut taken, 4));
    taken.sort_unstable();
    let mut partials = vec![a2, b2];
    partials.sort_unstable();
    assert_eq!(taken, partials, "uncached (partial) blocks go before any cached one");
    assert!([a0, a1, b0, b1].iter().all(|&b| bm.is_cached(b)));
    for expected in [a1, a0, b1, b0] {
        let len = taken.len();
        assert!(bm.allocate(&mut taken, 2 * (len + 1)));
        assert_eq!(taken[len], expected, "evicted out of order");
        assert!(!bm.is_cached(expected));
        bm.check_invariants();
    }
}

#[test]
fn reused_prefix_becomes_most_recently_freed() {
    let mut bm = BlockManager::new(4, 2, true);
    let a = [1, 2, 3];
    let b = [11, 12, 13];
    let (a_table, _) = run_seq(&mut bm, &a);
    let (b_table, _) = run_seq(&mut bm, &b);
    bm.free(&a_table);
    bm.free(&b_table);
    // A was freed first, but using its prefix again puts it behind B.
    assert_eq!(num_hit_tokens(&mut bm, &a), 2);
    let mut taken = vec![];
    assert!(bm.allocate(&mut taken, 6), "2 partial blocks + 1 eviction");
    assert!(taken.contains(&b_table[0]));
    assert_eq!((num_hit_tokens(&mut bm, &a), num_hit_tokens(&mut bm, &b)), (2, 0));
}

#[test]
fn evicted_block_is_no_longer_found() {
    let mut bm = BlockManager::new(4, 4, true);
    let a: Vec<u32> = (0..9).collect();
    let (a_table, _) = run_seq(&mut bm, &a);
    bm.free(&a_table);
    assert_eq!(num_hit_tokens(&mut bm, &a), 8);

    // X takes the partial block, the never-used one, then evicts A's tail.
    let x: Vec<u32> = (50..67).collect();
    let mut x_table = vec![];
    assert!(bm.allocate(&mut x_table, 12));
    assert!(x_table.contains(&a_table[1]) && !x_table.contains(&a_table[0]));
    assert_eq!(num_hit_tokens(&mut bm, &a), 4);
    // Then A's head, which X fills with other tokens: A must not hit on it.
    assert!(bm.allocate(&mut x_table, 16));
    bm.cache_blocks(&x_table, &x, 16);
    assert_eq!(num_hit_tokens(&mut bm, &a), 0);
    let (hit, num_cached) = bm.acquire_cached_prefix(&x);
    assert_eq!((&hit[..], num_cached), (&x_table[..], 16), "X's own blocks are found");
    bm.check_invariants();
}

#[test]
fn prefix_caching_disabled_never_hits() {
    let mut bm = BlockManager::new(8, 4, false);
    let a: Vec<u32> = (0..13).collect();
    let (a_table, num_cached) = run_seq(&mut bm, &a);
    assert_eq!(num_cached, 0);
    let (b_table, num_cached) = run_seq(&mut bm, &a);
    assert_eq!(num_cached, 0, "not while A runs");
    assert!(b_table.iter().all(|b| !a_table.contains(b)));
    bm.free(&a_table);
    bm.free(&b_table);
    assert_eq!(bm.acquire_cached_prefix(&a), (vec![], 0), "not after A is freed");
    assert_eq!(bm.num_cached_prefix_tokens_served(), 0);
    assert!(bm.cached.is_empty());
    bm.check_invariants();
}

#[test]
fn same_block_after_a_different_prefix_does_not_hit() {
    let mut bm = BlockManager::new(16, 4, true);
    let (p, q, y): (&[u32], &[u32], &[u32]) = (&[1, 2, 3, 4], &[5, 6, 7, 8], &[9, 9, 9, 9]);
    let (a_table, _) = run_seq(&mut bm, &cat(&[p, y, &[0]]));
    assert_eq!(num_hit_tokens(&mut bm, &cat(&[y, y, &[0]])), 0, "Y first is not Y after P");

    // The same Y after Q is a different cache entry, found in its own right.
    let (c_table, num_cached) = run_seq(&mut bm, &cat(&[q, y, &[0]]));
    assert_eq!(num_cached, 0);
    assert!(bm.is_cached(c_table[1]) && bm.is_cached(a_table[1]));
    let (hit, _) = bm.acquire_cached_prefix(&cat(&[q, y, &[7]]));
    assert_eq!(hit, c_table[..2]);
    let (hit, _) = bm.acquire_cached_prefix(&cat(&[p, y, &[7]]));
    assert_eq!(hit, a_table[..2]);
    bm.check_invariants();
}

#[test]
fn hash_collisions_are_caught_by_parent_and_token_checks() {
    // A hasher that ignores the parent: Y at index 0 collides with Y after P.
    let mut bm = BlockManager::with_hasher(16, 4, true, |_, tokens| chained_hash(None, tokens));
    let (p, q, y): (&[u32], &[u32], &[u32]) = (&[1, 2, 3, 4], &[5, 6, 7, 8], &[9, 9, 9, 9]);
    let (a_table, _) = run_seq(&mut bm, &cat(&[p, y, &[0]]));
    assert_eq!(num_hit_tokens(&mut bm, &cat(&[y, &[0]])), 0, "parent hash differs");
    bm.free(&a_table);

    // A hasher where everything collides.
    let mut bm = BlockManager::with_hasher(16, 4, true, |_, _| 0);
    let (a_table, _) = run_seq(&mut bm, &cat(&[p, q, &[0]]));
    assert!(bm.is_cached(a_table[0]) && !bm.is_cached(a_table[1]), "second block collides");
    assert_eq!(num_hit_tokens(&mut bm, &cat(&[q, &[0]])), 0, "tokens differ");
    assert_eq!(num_hit_tokens(&mut bm, &cat(&[p, &[0]])), 4, "a true hit still hits");
    bm.free(&a_table);
    bm.check_invariants();
}

#[test]
fn cache_blocks_registers_computed_full_blocks_once() {
    let mut bm = BlockManager::new(16, 4, true);
    let a: Vec<u32> = (0..9).collect();
    let probe = cat(&[&a, &[99]]);
    // Two sequences with the same prompt, admitted before either computed it.
    let (mut a_table, mut b_table) = (vec![], vec![]);
    assert!(bm.allocate(&mut a_table, a.len()) && bm.allocate(&mut b_table, a.len()));
    bm.cache_blocks(&a_table, &a, 3);
    assert_eq!(num_hit_tokens(&mut bm, &probe), 0, "no full block computed yet");
    bm.cache_blocks(&a_table, &a, 6);
    assert_eq!(num_hit_tokens(&mut bm, &probe), 4);
    bm.cache_blocks(&a_table, &a, 9);
    let before = bm.snapshot();
    bm.cache_blocks(&a_table, &a, 9);
    bm.cache_blocks(&a_table, &a, 5);
    assert_eq!(bm.snapshot(), before, "not idempotent");

    bm.cache_blocks(&b_table, &a, 9);
    assert!(!bm.is_cached(b_table[0]) && !bm.is_cached(b_table[1]), "the first registration wins");
    let (hit, _) = bm.acquire_cached_prefix(&probe);
    assert_eq!(hit, a_table[..2]);
    bm.free(&hit);
    bm.check_invariants();

    // A is freed and its blocks evicted; B's duplicates take over when B is freed.
    bm.free(&a_table);
    let mut big = vec![];
    assert!(bm.allocate(&mut big, 4 * bm.num_free_blocks()));
    assert_eq!(num_hit_tokens(&mut bm, &probe), 0);
    bm.free(&big);
    bm.free(&b_table);
    let (hit, _) = bm.acquire_cached_prefix(&probe);
    assert_eq!(hit, b_table[..2]);
    bm.check_invariants();
}

#[test]
fn reset_prefix_cache_forgets_hashes_but_keeps_references() {
    let mut bm = BlockManager::new(16, 4, true);
    let a: Vec<u32> = (0..9).collect();
    let b: Vec<u32> = (100..109).collect();
    let (a_table, _) = run_seq(&mut bm, &a);
    let (b_table, _) = run_seq(&mut bm, &b);
    bm.free(&b_table);
    let num_free = bm.num_free_blocks();
    bm.reset_prefix_cache();
    bm.check_invariants();
    assert_eq!(bm.num_free_blocks(), num_free);
    assert!(a_table.iter().all(|&b| bm.ref_count(b) == 1));
    assert_eq!((num_hit_tokens(&mut bm, &a), num_hit_tokens(&mut bm, &b)), (0, 0));
    // The running sequence registers its blocks again at its next step.
    bm.cache_blocks(&a_table, &a, a.len());
    assert_eq!(num_hit_tokens(&mut bm, &a), 8);
}

#[test]
#[should_panic(expected = "freed more often")]
fn double_free_panics() {
    let mut bm = BlockManager::new(4, 4, true);
    let mut table = vec![];
    assert!(bm.allocate(&mut table, 4));
    bm.free(&table);
    bm.free(&table);
}

/// splitmix64: a tiny deterministic PRNG, so a failure replays from its seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A token from a 3-id vocabulary, so equal blocks recur after different prefixes.
    fn token(&mut self) -> u32 {
        self.below(3) as u32
    }
}

struct SimSeq {
    tokens: Vec<u32>,
    table: Vec<BlockId>,
    num_computed: usize,
}

#[derive(Debug, Default)]
struct RunStats {
    num_admitted: usize,
    num_alloc_failures: usize,
    num_hit_tokens: usize,
    num_evicted: usize,
    num_shared_blocks_seen: usize,
}

const BS: usize = 4;
const NUM_BLOCKS: usize = 24;

/// What each slot of each block really holds: the token prefix whose last token's K/V was
/// written there by the model (`None`: nothing since the block was handed out).
type Slots = Vec<Vec<Option<Vec<u32>>>>;

/// Asks for blocks for the next chunk (or a decode token) and "runs the model" on it.
/// On failure, checks that nothing changed and returns false (the caller frees).
fn step(bm: &mut BlockManager, seq: &mut SimSeq, slots: &mut Slots, rng: &mut Rng) -> bool {
    if seq.num_computed == seq.tokens.len() {
        seq.tokens.push(rng.token()); // the token sampled last step
    }
    let num_new = 1 + rng.below((seq.tokens.len() - seq.num_computed).min(2 * BS));
    let target = seq.num_computed + num_new;
    let (before, num_old) = (bm.snapshot(), seq.table.len());
    if !bm.allocate(&mut seq.table, target) {
        assert_eq!(seq.table.len(), num_old);
        assert_eq!(bm.snapshot(), before, "failed allocate changed state");
        return false;
    }
    assert_eq!(seq.table.len(), target.div_ceil(BS).max(num_old));
    for &b in &seq.table[num_old..] {
        slots[b as usize] = vec![None; BS];
    }
    for pos in seq.num_computed..target {
        let slot = &mut slots[seq.table[pos / BS] as usize][pos % BS];
        assert!(slot.is_none(), "slot {pos} written twice: KV someone may share");
        *slot = Some(seq.tokens[..=pos].to_vec());
    }
    seq.num_computed = target;
    bm.cache_blocks(&seq.table, &seq.tokens, seq.num_computed);
    true
}

/// The properties seen from outside: returns the number of blocks held by several tables.
fn check_tables(bm: &BlockManager, seqs: &[SimSeq], slots: &Slots) -> usize {
    let mut num_holders = [0usize; NUM_BLOCKS];
    for s in seqs {
        assert!(s.num_computed <= s.tokens.len() && s.num_computed.div_ceil(BS) <= s.table.len());
        let mut hash = None;
        for (i, &b) in s.table.iter().enumerate() {
            num_holders[b as usize] += 1;
            let block = &bm.blocks[b as usize];
            if (i + 1) * BS <= s.num_computed {
                hash = Some(chained_hash(hash, &s.tokens[i * BS..(i + 1) * BS]));
            }
            if block.hash.is_some() {
                assert!((i + 1) * BS <= s.num_computed, "block {b} hashed before it was computed");
                assert_eq!(block.hash, hash, "block {b} hashed under another prefix");
            }
        }
        // Every computed slot, shared or not, holds this sequence's own prefix.
        for pos in 0..s.num_computed {
            let slot = &slots[s.table[pos / BS] as usize][pos % BS];
            assert_eq!(slot.as_deref(), Some(&s.tokens[..=pos]), "wrong KV at position {pos}");
        }
    }
    let num_entries: usize = seqs.iter().map(|s| s.table.len()).sum();
    assert_eq!(bm.blocks.iter().map(|b| b.ref_count as usize).sum::<usize>(), num_entries);
    let mut num_shared = 0;
    for (b, &n) in num_holders.iter().enumerate() {
        assert_eq!(bm.blocks[b].ref_count as usize, n, "ref count of block {b}");
        num_shared += usize::from(n > 1);
    }
    for s in seqs {
        for (i, &b) in s.table.iter().enumerate() {
            if num_holders[b as usize] > 1 {
                assert!((i + 1) * BS <= s.num_computed, "shared block {b} is not full and computed");
            }
        }
    }
    let num_referenced = num_holders.iter().filter(|&&n| n > 0).count();
    assert_eq!(bm.num_free_blocks() + num_referenced, NUM_BLOCKS);
    num_shared
}

fn random_operations(seed: u64, enable_prefix_caching: bool) -> RunStats {
    const MAX_SEQS: usize = 6;
    const MAX_LEN: usize = 40;
    let mut rng = Rng(seed);
    let mut bm = BlockManager::new(NUM_BLOCKS, BS, enable_prefix_caching);
    let prefixes: Vec<Vec<u32>> = (0..3).map(|_| (0..8 + rng.below(12)).map(|_| rng.token()).collect()).collect();
    let mut slots: Slots = vec![vec![None; BS]; NUM_BLOCKS];
    let mut seqs: Vec<SimSeq> = vec![];
    let mut stats = RunStats::default();
    for _ in 0..3000 {
        let op = rng.below(100);
        if op < 30 && seqs.len() < MAX_SEQS {
            let prefix = &prefixes[rng.below(prefixes.len())];
            let mut tokens = prefix[..rng.below(prefix.len() + 1)].to_vec();
            let num_suffix = 1 + rng.below(10);
            tokens.extend((0..num_suffix).map(|_| rng.token()));
            let (table, num_cached) = bm.acquire_cached_prefix(&tokens);
            assert_eq!(num_cached, table.len() * BS);
            assert!(num_cached < tokens.len(), "nothing left to compute");
            assert!(enable_prefix_caching || num_cached == 0);
            stats.num_hit_tokens += num_cached;
            let mut seq = SimSeq { tokens, table, num_computed: num_cached };
            if step(&mut bm, &mut seq, &mut slots, &mut rng) {
                seqs.push(seq);
                stats.num_admitted += 1;
            } else {
                bm.free(&seq.table);
                stats.num_alloc_failures += 1;
            }
        } else if op < 75 && !seqs.is_empty() {
            let i = rng.below(seqs.len());
            let done = seqs[i].tokens.len() >= MAX_LEN && seqs[i].num_computed == seqs[i].tokens.len();
            if done || !step(&mut bm, &mut seqs[i], &mut slots, &mut rng) {
                // Finished, or preempted for want of blocks.
                stats.num_alloc_failures += usize::from(!done);
                bm.free(&seqs.swap_remove(i).table);
            }
        } else if op < 90 && !seqs.is_empty() {
            let i = rng.below(seqs.len());
            bm.free(&seqs.swap_remove(i).table);
        } else if op < 99 && !seqs.is_empty() {
            let s = &seqs[rng.below(seqs.len())];
            bm.cache_blocks(&s.table, &s.tokens, s.num_computed);
            let before = bm.snapshot();
            bm.cache_blocks(&s.table, &s.tokens, rng.below(s.num_computed + 1));
            bm.cache_blocks(&s.table, &s.tokens, s.num_computed);
            assert_eq!(bm.snapshot(), before, "cache_blocks is not idempotent");
        } else if op == 99 {
            bm.reset_prefix_cache();
        }
        bm.check_invariants();
        stats.num_shared_blocks_seen += check_tables(&bm, &seqs, &slots);
    }
    for s in seqs.drain(..) {
        bm.free(&s.table);
        bm.check_invariants();
    }
    assert_eq!(bm.num_free_blocks(), NUM_BLOCKS, "blocks leaked");
    assert_eq!(bm.usage(), 0.0);
    stats.num_evicted = bm.num_evicted_blocks;
    stats
}

#[test]
fn random_operations_keep_invariants() {
    for seed in 0..12 {
        let stats = random_operations(seed, true);
        // Guard against a generator that stopped exercising the interesting paths.
        assert!(stats.num_admitted > 100, "seed {seed}: {stats:?}");
        assert!(stats.num_alloc_failures > 0, "seed {seed}: {stats:?}");
        assert!(stats.num_hit_tokens > 0, "seed {seed}: {stats:?}");
        assert!(stats.num_evicted > 0, "seed {seed}: {stats:?}");
        assert!(stats.num_shared_blocks_seen > 0, "seed {seed}: {stats:?}");
    }
}

#[test]
fn random_operations_without_prefix_caching() {
    for seed in 100..104 {
        let stats = random_operations(seed, false);
        assert_eq!((stats.num_hit_tokens, stats.num_evicted, stats.num_shared_blocks_seen), (0, 0, 0));
        assert!(stats.num_alloc_failures > 0, "seed {seed}: {stats:?}");
    }
}
