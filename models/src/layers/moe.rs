//! The sparse mixture-of-experts feed-forward of Qwen2-MoE and Qwen3-MoE.
//!
//! A router scores every expert for each token; the token goes through its top-k experts (each
//! a SwiGLU [`Mlp`]) and their outputs are summed, weighted by the routing probabilities
//! (renormalised over the k when the config says so). Qwen2-MoE adds a shared expert that every
//! token goes through, scaled by a sigmoid gate.
//!
//! Routing is decided on the host (the router's logits are copied back, one small
//! `(tokens, experts)` matrix per layer), so each expert runs one matmul over exactly the rows
//! routed to it. Each token's result depends on its own row alone: on the CPU the kernels
//! compute rows independently, and a token's expert outputs are summed in expert order.

use candle_core::{DType, Tensor};
use qwen_serve_kernels::half_matmul;
type Result<T, E = candle_core::Error> = std::result::Result<T, E>;

use rayon::prelude::*;

use super::mlp::Mlp;
use crate::phase_times::{self, mark, Phase};
use crate::{ModelConfig, ModelError, Weights};

pub struct SparseMoe {
    /// `(experts, hidden)`, kept dense (a near-tie must not flip with the weights' rounding).
    router: Tensor,
    experts: Vec<Mlp>,
    top_k: usize,
    renormalize: bool,
    shared: Option<SharedExpert>,
}

/// Qwen2-MoE's always-on expert: `sigmoid(gate(x)) * mlp(x)`.
struct SharedExpert {
    mlp: Mlp,
    /// `(1, hidden)`.
    gate: Tensor,
}

/// The rows routed to each expert: `tokens[e]` and `weights[e]` list, in token order, the
/// tokens expert `e` takes and the weight its output gets.
#[derive(Debug, Default, PartialEq)]
pub struct Routing {
    pub tokens: Vec<Vec<u32>>,
    pub weights: Vec<Vec<f32>>,
}

/// Routes each row of `logits` `(tokens, experts)` to its `top_k` highest-scoring experts (ties
/// to the lower index), weighted by their softmax probability over all experts, or over the
/// chosen k when `renormalize`.
pub fn route(logits: &[Vec<f32>], num_experts: usize, top_k: usize, renormalize: bool) -> Routing {
    let mut routing = Routing { tokens: vec![Vec::new(); num_experts], weights: vec![Vec::new(); num_experts] };
    let mut order: Vec<usize> = Vec::with_capacity(num_experts);
    for (t, row) in logits.iter().enumerate() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = row.iter().map(|&l| (l - max).exp()).collect();
        order.clear();
        order.extend(0..num_experts);
        // A NaN logit sorts last rather than poisoning the order.
        order.sort_by(|&a, &b| exp[b].partial_cmp(&exp[a]).unwrap_or_else(|| exp[a].is_nan().cmp(&exp[b].is_nan())).then(a.cmp(&b)));
        let chosen = &mut order[..top_k];
        let total: f32 = if renormalize { chosen.iter().map(|&e| exp[e]).sum() } else { exp.iter().sum() };
        // Each expert's rows stay in token order.
        chosen.sort_unstable();
        for &e in chosen.iter() {
            routing.tokens[e].push(t as u32);
            routing.weights[e].push(exp[e] / total);
        }
    }
    routing
}

impl SparseMoe {
    pub fn new(cfg: &ModelConfig, weights: &Weights) -> Result<Self, ModelError> {
        let (h, e) = (cfg.hidden_size, cfg.num_experts);
        let router = weights.tensor("gate.weight", &[e, h])?;
        let experts = (0..e)
            .map(|i| Mlp::new(&weights.pp("experts").pp(i), h, cfg.moe_intermediate_size))
            .collect::<Result<_, ModelError>>()?;
        let shared = if cfg.shared_expert_intermediate_size > 0 {
            Some(SharedExpert {
                mlp: Mlp::new(&weights.pp("shared_expert"), h, cfg.shared_expert_intermediate_size)?,
                gate: weights.tensor("shared_expert_gate.weight", &[1, h])?,
            })
        } else {
            None
        };
        Ok(Self { router, experts, top_k: cfg.num_experts_per_tok, renormalize: cfg.norm_topk_prob, shared })
    }

    /// `x` `(tokens, hidden)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, hidden) = x.dims2()?;
        let dev = x.device();
        if n == 0 {
            return x.zeros_like();
        }
        let logits = project(x, &self.router)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let routing = route(&logits, self.experts.len(), self.top_k, self.renormalize);
        // Every (token, expert) pair as one row, grouped by expert: one gather, one matmul per
        // expert over its slice, then each token's rows weighted and summed.
        let rows: Vec<u32> = routing.tokens.concat();
        let host = dev.is_cpu() && x.dtype() == DType::F32;
        let gathered = if host {
            gather_on_host(x, &rows)?
        } else {
            x.index_select(&Tensor::from_vec(rows.clone(), rows.len(), dev)?, 0)?
        };
        mark(dev, Phase::Route)?;
        let mut work = Vec::new();
        let mut at = 0;
        for (expert, tokens) in self.experts.iter().zip(&routing.tokens) {
            if !tokens.is_empty() {
                work.push((expert, gathered.narrow(0, at, tokens.len())?));
                at += tokens.len();
            }
        }
        // On the CPU the experts run side by side (each also splits its own matmuls): a
        // decode step's experts are small, and one after another each would wait for its
        // slowest task before the next starts. Each output is the same either way.
        let outputs: Vec<Tensor> = if dev.is_cpu() && !phase_times::enabled() {
            work.into_par_iter().map(|(expert, xs)| expert.forward(&xs)).collect::<Result<_>>()?
        } else {
            work.into_iter().map(|(expert, xs)| expert.forward(&xs)).collect::<Result<_>>()?
        };
        let mut out = if host { combine_on_host(&outputs, &routing, n, hidden)? } else { combine(&outputs, &routing, x)? };
        mark(dev, Phase::Route)?;
        if let Some(shared) = &self.shared {
            let y = shared.mlp.forward(x)?;
            let gate = (project(x, &shared.gate)?.neg()?.exp()? + 1.0)?.recip()?;
            out = (out + y.broadcast_mul(&gate)?)?;
            mark(dev, Phase::Route)?;
        }
        Ok(out)
    }
}

/// `x W^T` for the router and the shared-expert gate, on the CPU by a product whose rows do not
/// depend on the batch (candle's f32 matmul picks its kernel by batch size, and a last-bit
/// difference could flip a near-tie between experts).
fn project(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() { half_matmul(x, w) } else { x.matmul(&w.t()?) }
}

/// The weighted sum of each token's expert outputs, `(tokens, hidden)` like `x`: the weighted
/// rows (grouped by expert) gathered token by token into `(tokens, k, hidden)` and summed over
/// the k. (candle's `index_add` on a GPU gives each column one thread that walks every row in
/// turn: slow for long prompts.)
fn combine(outputs: &[Tensor], routing: &Routing, x: &Tensor) -> Result<Tensor> {
    let (n, hidden) = x.dims2()?;
    let rows = routing.tokens.iter().map(Vec::len).sum::<usize>();
    let k = rows / n.max(1);
    // Row of the grouped layout holding each token's j-th expert (ascending expert order).
    let mut order = vec![0u32; rows];
    let mut filled = vec![0usize; n];
    for (at, &t) in routing.tokens.iter().flatten().enumerate() {
        let t = t as usize;
        order[t * k + filled[t]] = at as u32;
        filled[t] += 1;
    }
    let weights = Tensor::from_vec(routing.weights.concat(), (rows, 1), x.device())?.to_dtype(x.dtype())?;
    let weighted = Tensor::cat(outputs, 0)?.broadcast_mul(&weights)?;
    let order = Tensor::from_vec(order, rows, x.device())?;
    weighted.index_select(&order, 0)?.reshape((n, k, hidden))?.sum(1)
}

/// Rows `rows` of `x` (f32 on the CPU), copied whole: candle's `index_select` goes element by
/// element.
fn gather_on_host(x: &Tensor, rows: &[u32]) -> Result<Tensor> {
    let hidden = x.dim(1)?;
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &*storage else {
        candle_core::bail!("gather_on_host: f32 CPU tensors only");
    };
    let (start, end) = layout.contiguous_offsets().expect("made contiguous");
    let data = &data[start..end];
    let mut out = Vec::with_capacity(rows.len() * hidden);
    for &r in rows {
        out.extend_from_slice(&data[r as usize * hidden..][..hidden]);
    }
    Tensor::from_vec(out, (rows.len(), hidden), &candle_core::Device::Cpu)
}

/// The weighted sum of each token's expert outputs (f32 on the CPU): [`combine`]'s operations
/// in its order (`w * y` added up over the token's experts in ascending order, from 0), without
/// candle's generic strided loops.
fn combine_on_host(outputs: &[Tensor], routing: &Routing, n: usize, hidden: usize) -> Result<Tensor> {
    let mut out = vec![0f32; n * hidden];
    let used = routing.tokens.iter().zip(&routing.weights).filter(|(tokens, _)| !tokens.is_empty());
    for (y, (tokens, weights)) in outputs.iter().zip(used) {
        let y = y.contiguous()?;
        let (storage, layout) = y.storage_and_layout();
        let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &*storage else {
            candle_core::bail!("combine_on_host: f32 CPU tensors only");
        };
        let (start, end) = layout.contiguous_offsets().expect("made contiguous");
        for ((&t, &w), src) in tokens.iter().zip(weights).zip(data[start..end].chunks_exact(hidden)) {
            for (d, &s) in out[t as usize * hidden..][..hidden].iter_mut().zip(src) {
                *d += w * s;
            }
        }
    }
    Tensor::from_vec(out, (n, hidden), &candle_core::Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn routes_each_token_to_its_top_k_experts() {
        let logits = vec![vec![0.0, 2.0, 1.0, -1.0], vec![3.0, 3.0, 0.0, 5.0]];
        let r = route(&logits, 4, 2, false);
        assert_eq!(r.tokens, vec![vec![1], vec![0], vec![0], vec![1]]);
        // Softmax over all four experts.
        let p = |row: &[f32], e: usize| row[e].exp() / row.iter().map(|l| l.exp()).sum::<f32>();
        assert!((r.weights[1][0] - p(&logits[0], 1)).abs() < 1e-6);
        assert!((r.weights[2][0] - p(&logits[0], 2)).abs() < 1e-6);
        // A tie (experts 0 and 1 of token 1) goes to the lower index.
        assert!((r.weights[0][0] - p(&logits[1], 0)).abs() < 1e-6);
        assert!((r.weights[3][0] - p(&logits[1], 3)).abs() < 1e-6);

        let r = route(&logits, 4, 2, true);
        for t in 0..2 {
            let total: f32 = (0..4).filter_map(|e| r.tokens[e].iter().position(|&x| x == t).map(|i| r.weights[e][i])).sum();
            assert!((total - 1.0).abs() < 1e-6, "renormalised weights of token {t} sum to {total}");
        }
    }

    /// The host paths (f32 on the CPU) give the generic ones' bits.
    #[test]
    fn host_gather_and_combine_match_candles_ops() {
        use candle_core::{Device, Tensor};
        let (n, hidden, experts) = (5, 24, 4);
        let x = Tensor::randn(0f32, 1.0, (n, hidden), &Device::Cpu).unwrap();
        let logits: Vec<Vec<f32>> = (0..n).map(|t| (0..experts).map(|e| ((t * 7 + e * 3) % 5) as f32 * 0.3 - e as f32 * 0.01).collect()).collect();
        let routing = route(&logits, experts, 2, true);
        let rows: Vec<u32> = routing.tokens.concat();
        let index = Tensor::from_vec(rows.clone(), rows.len(), &Device::Cpu).unwrap();
        let gathered = super::gather_on_host(&x, &rows).unwrap();
        assert_eq!(gathered.to_vec2::<f32>().unwrap(), x.index_select(&index, 0).unwrap().to_vec2::<f32>().unwrap());
        // Stand-in expert outputs: each expert's rows scaled by its own factor.
        let mut outputs = Vec::new();
        let mut at = 0;
        for (e, tokens) in routing.tokens.iter().enumerate().filter(|(_, t)| !t.is_empty()) {
            outputs.push((gathered.narrow(0, at, tokens.len()).unwrap() * (1.5 + e as f64)).unwrap());
            at += tokens.len();
        }
        let host = super::combine_on_host(&outputs, &routing, n, hidden).unwrap().to_vec2::<f32>().unwrap();
        let generic = super::combine(&outputs, &routing, &x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(host, generic);
    }

    #[test]
    fn a_nan_logit_is_never_chosen_over_numbers() {
        let r = route(&[vec![f32::NAN, 0.5, 0.1]], 3, 2, true);
        assert_eq!(r.tokens, vec![vec![], vec![0], vec![0]]);
    }
}
