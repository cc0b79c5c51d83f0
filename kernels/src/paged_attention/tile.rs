//! The CPU paged attention kernel for head dimensions 64 and 128: a tile of a few consecutive
//! new tokens of one sequence (a prefill chunk's; one token for a decode), all the query heads
//! of one KV head, over the keys they see. Bitwise equal, token by token, to the generic body in
//! [`super::cpu`] (whose docs give the arithmetic): only the order in which the same operations
//! run changes. The vector pieces are per instruction set ([`Isa`]: [`super::avx512`],
//! [`super::avx2`]).
//!
//! Token by token, every query token of a long prompt would stream all of its sequence's K and
//! V rows from memory again (a 512-token chunk at 4096 keys: ~2 GB a layer with the f32 cache).
//! A tile of `tokens x group` query rows loads each key and value row once:
//! - scores: each block of two vectors' worth of keys is transposed once into a buffer
//!   (`kt[dim][key]`); then a few rows at a time, one FMA with a broadcast query element
//!   advances a vector of scores of a row, two FMAs per broadcast;
//! - the softmax of each row over its own keys (token `i` of the tile sees `first_n + i`);
//! - values: over chunks of 128 keys (in cache while they are used), a few rows and output
//!   dimensions at a time accumulate `p * v` for the keys every row of the tile sees, one value
//!   vector feeding all of the rows; then each row's own last keys. A decode's group of query
//!   heads shares its value rows the same way.

use crate::elem::Elem;

/// Keys per chunk of the value pass: their rows stay in cache while each row block uses them.
const VALUE_KEYS: usize = 128;

/// One instruction set's pieces of the tile kernel. Safety (every fn): the CPU has the
/// instruction set; pointers and rows cover what the docs say is read or written.
pub(super) trait Isa {
    /// Keys per block of the score pass (two vectors).
    const BLOCK_KEYS: usize;
    /// Rows and output dimensions per pass of [`Isa::value_sums`].
    const VALUE_ROWS: usize;
    const VALUE_DIMS: usize;

    /// Keys `j0 .. j0 + BLOCK_KEYS` of `rows` (past the end: the last one again), `d` elements
    /// each, transposed into `kt[dim * BLOCK_KEYS + key]` as f32.
    unsafe fn transpose_keys<T: Elem>(k: &[T], rows: &[usize], j0: usize, d: usize, kt: &mut [f32]);

    /// Scores of all `n` query rows (`q`, `d` apart) against a transposed block: `s[r * stride
    /// + jj]`, each `fma(q[dim], k[dim], s)` over the dimensions in order, times `scale`.
    unsafe fn scores(n: usize, q: *const f32, kt: &[f32], d: usize, scale: f32, s: *mut f32, stride: usize);

    /// The reference softmax of `p[..n]`, writing up to `n` rounded up to 16 floats.
    unsafe fn softmax(p: *mut f32, n: usize);

    /// For `n <= VALUE_ROWS` rows (probabilities `stride` apart, accumulators `d` apart) and
    /// `VALUE_DIMS` dimensions (`v` and `acc` offset to the first): `acc[r][..] = fma(p[r][j],
    /// v[j][..], acc[r][..])` over the keys `rows` (value rows) in order.
    unsafe fn value_sums<T: Elem>(n: usize, p: *const f32, stride: usize, v: *const T, rows: &[usize], acc: *mut f32, d: usize);
}

/// The tile's attention: token `i` (query heads `q_groups[i]`, `group x d`) over the first
/// `first_n + i` keys of `rows` (`first_n + tokens - 1` of them, `first_n >= 1`), into `outs[i]`.
///
/// # Safety
/// The CPU has `I`'s instruction set; every row plus `d` lies inside `k` and `v`; `d` is 64 or 128.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn attend_tile<I: Isa, T: Elem>(q_groups: &[&[T]], k: &[T], v: &[T], rows: &[usize], first_n: usize, d: usize, scale: f32, outs: &mut [&mut [T]]) {
    let group = outs[0].len() / d;
    let num_rows = q_groups.len() * group;
    let n_max = rows.len();
    debug_assert_eq!(n_max, first_n + q_groups.len() - 1);
    // Row r is head r % group of token r / group, which sees this many keys.
    let keys_of = |r: usize| first_n + r / group;
    let stride = n_max.next_multiple_of(I::BLOCK_KEYS);
    let q: Vec<f32> = q_groups.iter().flat_map(|g| g.iter().map(|x| x.to_f32())).collect();
    let mut scores = vec![0f32; num_rows * stride];
    let mut kt = vec![0f32; d * I::BLOCK_KEYS];
    for j0 in (0..n_max).step_by(I::BLOCK_KEYS) {
        I::transpose_keys(k, rows, j0, d, &mut kt);
        I::scores(num_rows, q.as_ptr(), &kt, d, scale, scores.as_mut_ptr().add(j0), stride);
    }
    for r in 0..num_rows {
        I::softmax(scores.as_mut_ptr().add(r * stride), keys_of(r));
    }
    // Values: the keys every row sees (the first token's), then each row's own last ones.
    let mut acc = vec![0f32; num_rows * d];
    for j0 in (0..first_n).step_by(VALUE_KEYS) {
        let keys = j0..(j0 + VALUE_KEYS).min(first_n);
        for r0 in (0..num_rows).step_by(I::VALUE_ROWS) {
            let n = (num_rows - r0).min(I::VALUE_ROWS);
            for d0 in (0..d).step_by(I::VALUE_DIMS) {
                let p = scores.as_ptr().add(r0 * stride + keys.start);
                I::value_sums(n, p, stride, v.as_ptr().add(d0), &rows[keys.clone()], acc.as_mut_ptr().add(r0 * d + d0), d);
            }
        }
    }
    for r in 0..num_rows {
        let keys = first_n..keys_of(r);
        for d0 in (0..d).step_by(I::VALUE_DIMS) {
            let p = scores.as_ptr().add(r * stride + keys.start);
            I::value_sums(1, p, stride, v.as_ptr().add(d0), &rows[keys.clone()], acc.as_mut_ptr().add(r * d + d0), d);
        }
    }
    for (i, out) in outs.iter_mut().enumerate() {
        for (o, a) in out.iter_mut().zip(&acc[i * group * d..][..group * d]) {
            *o = T::from_f32(*a);
        }
    }
}
