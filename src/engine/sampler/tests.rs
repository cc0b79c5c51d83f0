//! Tests of `sampler.rs`.

use super::*;

fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    let mut p = SamplingParams::default();
    f(&mut p);
    p
}

fn greedy(logits: &[f32], p: &SamplingParams, prompt: &[u32], output: &[u32], suppressed: &[u32]) -> u32 {
    assert_eq!(p.temperature, 0.0);
    Sampler::new(Some(0)).sample(logits, p, prompt, output, suppressed).token
}

/// `n` draws from one seeded sampler, no penalties' history.
fn draws(logits: &[f32], p: &SamplingParams, seed: u64, n: usize) -> Vec<u32> {
    let mut s = Sampler::new(Some(seed));
    (0..n).map(|_| s.sample(logits, p, &[], &[], &[]).token).collect()
}

/// Reproducible logits in [-4, 4).
fn random_logits(vocab: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..vocab).map(|_| rng.random_range(-4.0..4.0)).collect()
}

/// Steps 1-3 only.
fn processed(logits: &[f32], p: &SamplingParams, prompt: &[u32], output: &[u32], suppressed: &[u32]) -> Vec<f32> {
    let mut s = Sampler::new(Some(0));
    s.process(logits, p, prompt, output, suppressed, None);
    s.logits.clone()
}

/// A whole row as (id, logit) pairs.
fn indexed(row: &[f32]) -> impl Iterator<Item = (u32, f32)> + '_ {
    row.iter().enumerate().map(|(i, &l)| (i as u32, l))
}

/// Token ids by decreasing logit.
fn ranked(logits: &[f32]) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    ids.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    ids
}

#[test]
fn greedy_picks_the_largest_logit_lowest_id_among_ties() {
    let p = SamplingParams::default();
    assert_eq!(greedy(&[0.1, 2.0, -1.0, 2.0], &p, &[], &[], &[]), 1);
    assert_eq!(greedy(&[0.1, -2.0, 3.0], &p, &[], &[], &[]), 2);
    assert_eq!(argmax(&[-1.0, -1.0]), 0);
}

#[test]
fn argmax_is_the_first_strictly_larger_scan() {
    let naive = |l: &[f32]| {
        let mut best = 0;
        for (i, &x) in l.iter().enumerate() {
            if x > l[best] {
                best = i;
            }
        }
        best as u32
    };
    let mut rng = StdRng::seed_from_u64(7);
    for len in [0, 1, 5, 16, 17, 33, 1000, 151_936] {
        for case in 0..6 {
            // Few distinct values, so ties land in different chunks; NaN and -inf mixed in.
            let mut l: Vec<f32> = (0..len).map(|_| (rng.random::<u32>() % 7) as f32).collect();
            if case >= 2 && len > 0 {
                let i = rng.random::<u32>() as usize % len;
                l[i] = if case % 2 == 0 { f32::NAN } else { f32::NEG_INFINITY };
            }
            if case == 5 && len > 0 {
                l[0] = f32::NAN;
            }
            if case == 4 {
                l.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
            }
            assert_eq!(argmax(&l), naive(&l), "len {len}, case {case}");
        }
    }
}

#[test]
fn low_temperature_concentrates_high_temperature_spreads() {
    let logits = [1.0, 0.5, 0.0];
    let count_top = |temperature| {
        draws(&logits, &params(|p| p.temperature = temperature), 3, 1000).iter().filter(|&&t| t == 0).count()
    };
    // p(token 0) is ~1.0, ~0.51 and ~0.37.
    let (cold, warm, hot) = (count_top(0.05), count_top(1.0), count_top(5.0));
    assert!(cold > 990, "{cold}");
    assert!((450..570).contains(&warm), "{warm}");
    assert!(hot < 430, "{hot}");
}

#[test]
fn top_k_1_is_greedy() {
    for seed in 0..10 {
        let mut logits = random_logits(500, seed);
        // A tie for the top: the lower id wins, as in argmax.
        logits[300] = 5.0;
        logits[17 + seed as usize] = 5.0;
        let p = params(|p| {
            p.temperature = 1.5;
            p.top_k = 1;
        });
        assert!(draws(&logits, &p, seed, 50).iter().all(|&t| t == 17 + seed as u32));
        let unrestricted = params(|p| p.temperature = 1.5);
        assert!(draws(&logits, &unrestricted, seed, 50).iter().any(|&t| t != 17 + seed as u32));
    }
}

#[test]
fn top_k_never_samples_outside_the_top_k() {
    let logits = random_logits(1000, 1);
    let top5 = &ranked(&logits)[..5];
    let p = params(|p| {
        p.temperature = 5.0;
        p.top_k = 5;
    });
    let d = draws(&logits, &p, 2, 2000);
    assert!(d.iter().all(|t| top5.contains(t)));
    assert!(top5.iter().all(|t| d.contains(t)), "each of the top 5 is drawn");
}

#[test]
fn top_p_keeps_only_the_nucleus() {
    // Probabilities ~0.64, 0.24, 0.09, 0.03: top_p 0.8 keeps the first two.
    let logits = [3.0, 2.0, 1.0, 0.0];
    let p = params(|p| {
        p.temperature = 1.0;
        p.top_p = 0.8;
    });
    let d = draws(&logits, &p, 1, 1000);
    assert!(d.iter().all(|&t| t < 2));
    assert!(d.contains(&1), "the second token is still drawn sometimes");
    assert!(draws(&logits, &params(|p| p.temperature = 1.0), 1, 1000).contains(&2));
}

#[test]
fn nucleus_matches_a_full_sort() {
    // One chunk, several chunks, nearly everything.
    for (vocab, top_p, seed) in
        [(10, 0.5, 0), (1000, 0.9, 1), (20_000, 0.5, 2), (20_000, 0.999, 3), (5000, 0.05, 4)]
    {
        let weights: Vec<(u32, f32)> =
            random_logits(vocab, seed).iter().enumerate().map(|(i, l)| (i as u32, l.exp())).collect();
        let total: f64 = weights.iter().map(|c| f64::from(c.1)).sum();
        let mut naive = weights.clone();
        naive.sort_by(by_value_desc);
        let mut mass = 0.0;
        let expected = naive
            .iter()
            .position(|c| {
                mass += f64::from(c.1);
                mass >= f64::from(top_p) * total
            })
            .map_or(vocab, |i| i + 1);
        let mut candidates = weights.clone();
        let kept = nucleus_len(&mut candidates, top_p, None);
        assert_eq!(kept, expected, "vocab {vocab}, top_p {top_p}");
        assert_eq!(candidates[..kept], naive[..expected]);
    }
}

#[test]
fn top_p_over_a_full_size_vocab_draws_from_the_nucleus() {
    let logits: Vec<f32> = random_logits(152_000, 10).iter().map(|l| l * 3.0).collect();
    let p = params(|p| {
        p.temperature = 1.0;
        p.top_p = 0.3;
    });
    let ids = ranked(&logits);
    let max = logits[ids[0] as usize];
    let total: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let mut mass = 0.0;
    let size = 1 + ids
        .iter()
        .position(|&i| {
            mass += f64::from(logits[i as usize] - max).exp();
            mass >= 0.3 * total
        })
        .unwrap();
    let nucleus = &ids[..size];
    assert!(size > 64 && size < 150_000, "{size}: the test should need several chunks");
    assert!(draws(&logits, &p, 10, 200).iter().all(|t| nucleus.contains(t)));
}

#[test]
fn min_p_drops_tokens_below_the_fraction_of_the_top() {
    // Relative to the top: 1, e^-1 ~ 0.37, e^-3 ~ 0.05 (p ~ 0.04 of 2000 draws).
    let logits = [0.0, -1.0, -3.0];
    assert!(draws(&logits, &params(|p| p.temperature = 1.0), 4, 2000).contains(&2));
    // Both the whole-vocab path and the candidate path (top_p < 1) apply it.
    for top_p in [1.0, 0.999] {
        let p = params(|p| {
            p.temperature = 1.0;
            p.min_p = 0.1;
            p.top_p = top_p;
        });
        let d = draws(&logits, &p, 4, 2000);
        assert!(!d.contains(&2), "top_p {top_p}");
        assert!(d.contains(&1), "top_p {top_p}");
    }
}

#[test]
fn repetition_penalty_flips_a_preference_for_positive_and_negative_logits() {
    let p = params(|p| p.repetition_penalty = 2.0);
    let off = SamplingParams::default();
    // Positive: 2.0 / 2 = 1.0 < 1.5.
    assert_eq!(greedy(&[2.0, 1.5], &off, &[], &[0], &[]), 0);
    assert_eq!(greedy(&[2.0, 1.5], &p, &[], &[0], &[]), 1);
    // Negative: -1.0 * 2 = -2.0 < -1.5.
    assert_eq!(greedy(&[-1.0, -1.5], &p, &[], &[], &[]), 0);
    assert_eq!(greedy(&[-1.0, -1.5], &p, &[], &[0], &[]), 1);
    // Prompt tokens count too.
    assert_eq!(greedy(&[2.0, 1.5], &p, &[0], &[], &[]), 1);
    // Once per distinct token, however often it occurs; below 1 it rewards.
    assert_eq!(processed(&[2.0, -1.0, 3.0], &p, &[0, 1, 0], &[0, 1], &[]), [1.0, -2.0, 3.0]);
    let reward = params(|p| p.repetition_penalty = 0.5);
    assert_eq!(processed(&[2.0, -1.0, 3.0], &reward, &[0, 1], &[], &[]), [4.0, -0.5, 3.0]);
}

#[test]
fn presence_counts_once_frequency_counts_every_occurrence() {
    let logits = [1.0; 4];
    // Prompt tokens are not penalised by either.
    let (prompt, output) = ([2], [0, 0, 0, 1]);
    let presence = params(|p| p.presence_penalty = 0.5);
    let frequency = params(|p| p.frequency_penalty = 0.5);
    let both = params(|p| {
        p.presence_penalty = 0.5;
        p.frequency_penalty = 0.5;
    });
    assert_eq!(processed(&logits, &presence, &prompt, &output, &[]), [0.5, 0.5, 1.0, 1.0]);
    assert_eq!(processed(&logits, &frequency, &prompt, &output, &[]), [-0.5, 0.5, 1.0, 1.0]);
    assert_eq!(processed(&logits, &both, &prompt, &output, &[]), [-1.0, 0.0, 1.0, 1.0]);
    // Token 0, seen three times, keeps its lead under presence and loses it under frequency.
    assert_eq!(greedy(&[1.2, 1.0], &presence, &[], &output, &[]), 0);
    assert_eq!(greedy(&[1.2, 1.0], &frequency, &[], &output, &[]), 1);
}

#[test]
fn truncating_first_cuts_at_temperature_1_then_shapes_the_rest() {
    // p = 0.6 / 0.3 / 0.1 at temperature 1; at 2 the weights are their square roots.
    let logits = [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
    let count = |d: &[u32], t: u32| d.iter().filter(|&&x| x == t).count();
    // Top-p 0.5: token 0 alone at temperature 1; tokens 0 and 1 once 2 flattens the row first.
    for (first, kept) in [(true, 1), (false, 2)] {
        let p = params(|p| {
            p.temperature = 2.0;
            p.top_p = 0.5;
            p.truncate_first = first;
        });
        let d = draws(&logits, &p, 3, 2000);
        assert_eq!((0..3).filter(|&t| count(&d, t) > 0).count(), kept, "truncate_first {first}");
    }
    // Min-p 0.2: token 2 weighs 0.17 of the top at temperature 1 (cut), 0.41 at 2 (kept); on the
    // whole-row path and the candidates' (top-k).
    for top_k in [0, 3] {
        for (first, has_2) in [(true, false), (false, true)] {
            let p = params(|p| {
                p.temperature = 2.0;
                p.min_p = 0.2;
                p.top_k = top_k;
                p.truncate_first = first;
            });
            assert_eq!(draws(&logits, &p, 3, 2000).contains(&2), has_2, "top_k {top_k}, truncate_first {first}");
        }
    }
    // What survives is drawn at the temperature: top-k 2 at 2 gives token 0 1 / (1 + 0.5^0.5).
    let p = params(|p| {
        p.temperature = 2.0;
        p.top_k = 2;
        p.truncate_first = true;
    });
    let share = count(&draws(&logits, &p, 3, 4000), 0) as f64 / 4000.0;
    assert!((share - 1.0 / (1.0 + 0.5f64.sqrt())).abs() < 0.03, "{share}");
}

#[test]
fn a_penalty_window_counts_the_last_tokens_of_prompt_and_output() {
    let logits = [1.0; 5];
    let (prompt, output) = ([0, 1, 2], [3, 3]);
    let window = |n, f: fn(&mut SamplingParams)| {
        processed(&logits, &params(|p| {
            p.penalty_last_n = Some(n);
            f(p)
        }), &prompt, &output, &[])
    };
    // The last 3 tokens: 2, 3, 3; presence and frequency count prompt tokens in it too.
    assert_eq!(window(3, |p| p.presence_penalty = 0.5), [1.0, 1.0, 0.5, 0.5, 1.0]);
    assert_eq!(window(3, |p| p.frequency_penalty = 0.5), [1.0, 1.0, 0.5, 0.0, 1.0]);
    assert_eq!(window(3, |p| p.repetition_penalty = 2.0), [1.0, 1.0, 0.5, 0.5, 1.0]);
    // Longer than the sequence: all of it; 0: nothing.
    assert_eq!(window(100, |p| p.presence_penalty = 0.5), [0.5, 0.5, 0.5, 0.5, 1.0]);
    assert_eq!(window(0, |p| p.presence_penalty = 0.5), [1.0; 5]);
}

#[test]
fn a_ban_is_minus_infinity_and_valid() {
    let p = params(|p| {
        p.temperature = 1.0;
        p.logit_bias = vec![(0, f32::NEG_INFINITY)];
    });
    assert_eq!(p.validate(), Ok(()));
    assert!(!draws(&[5.0, 0.0, 0.0], &p, 1, 500).contains(&0));
    assert!(params(|p| p.logit_bias = vec![(0, f32::INFINITY)]).validate().is_err());
}

#[test]
fn logit_bias_forces_and_bans() {
    let logits = random_logits(100, 5);
    let top = argmax(&logits);
    let force = params(|p| p.logit_bias = vec![(7, 100.0), (1000, 100.0)]);
    assert_eq!(greedy(&logits, &force, &[], &[], &[]), 7);
    let force = SamplingParams { temperature: 1.0, ..force };
    assert!(draws(&logits, &force, 5, 500).iter().all(|&t| t == 7));

    let ban = params(|p| p.logit_bias = vec![(top, -100.0)]);
    assert_ne!(greedy(&logits, &ban, &[], &[], &[]), top);
    let ban = SamplingParams { temperature: 1.0, ..ban };
    assert!(!draws(&logits, &ban, 5, 2000).contains(&top));
    assert!(draws(&logits, &params(|p| p.temperature = 1.0), 5, 2000).contains(&top));
}

#[test]
fn suppressed_ids_are_never_sampled_even_as_the_argmax() {
    let mut logits = random_logits(50, 6);
    logits[3] = 20.0;
    logits[9] = 19.0;
    let suppressed = [3, 9, 77];
    let off = SamplingParams::default();
    assert_eq!(greedy(&logits, &off, &[], &[], &[]), 3);
    assert_eq!(greedy(&logits, &off, &[], &[], &suppressed), ranked(&logits)[2]);
    // Bias comes first, so it cannot lift a suppressed token.
    let bias = params(|p| p.logit_bias = vec![(3, 100.0)]);
    assert_eq!(greedy(&logits, &bias, &[], &[], &suppressed), ranked(&logits)[2]);
    let variants = [
        params(|p| p.temperature = 1.0),
        params(|p| {
            p.temperature = 1.0;
            p.top_k = 2;
        }),
        params(|p| {
            p.temperature = 1.0;
            p.top_p = 0.9;
        }),
    ];
    for p in &variants {
        let mut s = Sampler::new(Some(6));
        assert_eq!(s.sample(&logits, p, &[], &[], &[]).token, 3);
        for _ in 0..500 {
            let token = s.sample(&logits, p, &[], &[], &suppressed).token;
            assert!(!suppressed.contains(&token), "{p:?}: {token}");
        }
    }
}

#[test]
fn same_seed_same_tokens_whatever_else_runs() {
    let rows: Vec<Vec<f32>> = (0..30).map(|i| random_logits(200, i)).collect();
    let variants = [
        params(|p| p.temperature = 1.0),
        params(|p| {
            p.temperature = 0.7;
            p.top_k = 20;
        }),
        params(|p| {
            p.temperature = 1.0;
            p.top_p = 0.8;
            p.min_p = 0.05;
        }),
    ];
    for p in &variants {
        let run = |seed, interleave: bool| {
            let mut s = Sampler::new(Some(seed));
            let mut other = Sampler::new(None);
            let tokens: Vec<u32> = rows
                .iter()
                .map(|row| {
                    if interleave {
                        other.sample(row, p, &[], &[], &[]);
                    }
                    s.sample(row, p, &[], &[], &[]).token
                })
                .collect();
            tokens
        };
        assert_eq!(run(7, false), run(7, false));
        assert_eq!(run(7, false), run(7, true));
        assert_ne!(run(7, false), run(8, false));
    }
    // Seedless samplers draw from OS entropy: 20 draws from 1000 equal tokens differ.
    let flat = [0.0; 1000];
    let p = params(|p| p.temperature = 1.0);
    let mut a = Sampler::new(None);
    let mut b = Sampler::new(None);
    let da: Vec<u32> = (0..20).map(|_| a.sample(&flat, &p, &[], &[], &[]).token).collect();
    let db: Vec<u32> = (0..20).map(|_| b.sample(&flat, &p, &[], &[], &[]).token).collect();
    assert_ne!(da, db);
}

/// log-softmax in f64, the textbook way.
fn naive_log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().map(|&l| f64::from(l)).fold(f64::NEG_INFINITY, f64::max);
    let log_z = max + logits.iter().map(|&l| (f64::from(l) - max).exp()).sum::<f64>().ln();
    logits.iter().map(|&l| f64::from(l) - log_z).collect()
}

#[test]
fn logprobs_of_matches_a_naive_log_softmax() {
    for offset in [0.0, 1000.0] {
        let logits: Vec<f32> = random_logits(1000, 8).iter().map(|l| l * 5.0 + offset).collect();
        let naive = naive_log_softmax(&logits);
        let tol = if offset == 0.0 { 1e-5 } else { 1e-3 };
        for token in [0u32, 17, 999] {
            let lp = logprobs_of(&logits, token, 5);
            assert!((f64::from(lp.token_logprob) - naive[token as usize]).abs() < tol, "{offset} {token}");
            let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
            assert_eq!(ids, ranked(&logits)[..5]);
            for (id, l) in lp.top {
                assert!((f64::from(l) - naive[id as usize]).abs() < tol);
            }
        }
        // The whole vocab as alternatives: a distribution.
        let all = logprobs_of(&logits, 0, 1000);
        assert_eq!(all.top.len(), 1000);
        let sum: f64 = all.top.iter().map(|t| f64::from(t.1).exp()).sum();
        assert!((sum - 1.0).abs() < 1e-4, "{sum}");
    }
    // Sorted by logprob, lower id first among ties; k = 0 gives no alternatives.
    let tied = logprobs_of(&[1.0, 3.0, 3.0, 2.0, 3.0], 0, 4);
    assert_eq!(tied.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 4, 3]);
    assert!(tied.top.windows(2).all(|w| w[0].1 >= w[1].1));
    let none = logprobs_of(&[1.0, 3.0], 0, 0);
    assert!(none.top.is_empty());
    assert!((f64::from(none.token_logprob) - naive_log_softmax(&[1.0, 3.0])[0]).abs() < 1e-6);
}

#[test]
fn sampled_logprobs_are_the_processed_logits_before_temperature() {
    let logits = random_logits(300, 9);
    let (prompt, output) = ([7], [5, 5, 6]);
    let suppressed = [argmax(&logits)];
    let base = params(|p| {
        p.repetition_penalty = 1.3;
        p.frequency_penalty = 0.4;
        p.logit_bias = vec![(11, 2.0)];
        p.logprobs = Some(5);
    });
    let row = processed(&logits, &base, &prompt, &output, &suppressed);

    let s = Sampler::new(Some(0)).sample(&logits, &base, &prompt, &output, &suppressed);
    let lp = s.logprobs.unwrap();
    // Greedy: the token is the first alternative.
    assert_eq!(lp.top[0], (s.token, lp.token_logprob));
    assert_eq!(lp, logprobs_of(&row, s.token, 5));
    assert_ne!(lp, logprobs_of(&logits, s.token, 5), "processing must show");

    for temperature in [0.3, 1.0, 3.0] {
        let p = SamplingParams { temperature, top_k: 50, ..base.clone() };
        let mut sampler = Sampler::new(Some(1));
        for _ in 0..20 {
            let s = sampler.sample(&logits, &p, &prompt, &output, &suppressed);
            assert_eq!(s.logprobs.unwrap(), logprobs_of(&row, s.token, 5));
        }
    }
    let plain = Sampler::new(Some(0)).sample(&logits, &SamplingParams::default(), &[], &[], &[]);
    assert_eq!(plain.logprobs, None);
}

#[test]
fn validate_names_the_field_and_its_range() {
    assert_eq!(SamplingParams::default().validate(), Ok(()));
    let cases = [
        (params(|p| p.n = 0), "`n` must be at least 1"),
        (params(|p| p.temperature = -0.1), "`temperature` must be a finite number >= 0"),
        (params(|p| p.temperature = f32::INFINITY), "`temperature` must be a finite number >= 0"),
        (params(|p| p.temperature = f32::NAN), "`temperature` must be a finite number >= 0"),
        (params(|p| p.top_p = 0.0), "`top_p` must be in (0, 1]"),
        (params(|p| p.top_p = 1.01), "`top_p` must be in (0, 1]"),
        (params(|p| p.min_p = -0.01), "`min_p` must be in [0, 1]"),
        (params(|p| p.min_p = f32::NAN), "`min_p` must be in [0, 1]"),
        (params(|p| p.repetition_penalty = 0.0), "`repetition_penalty` must be a finite number > 0"),
        (params(|p| p.presence_penalty = 2.5), "`presence_penalty` must be in [-2, 2]"),
        (params(|p| p.frequency_penalty = -2.5), "`frequency_penalty` must be in [-2, 2]"),
        (
            params(|p| p.logit_bias = vec![(1, 0.0), (3, 101.0)]),
            "`logit_bias` values must be in [-100, 100] or -inf (token 3)",
        ),
        (params(|p| p.max_tokens = 0), "`max_tokens` must be at least 1"),
        (
            params(|p| {
                p.max_tokens = 4;
                p.min_tokens = 5;
            }),
            "`min_tokens` must be in [0, max_tokens = 4]",
        ),
        (params(|p| p.logprobs = Some(21)), "`logprobs` must be in [0, 20]"),
        (params(|p| p.prompt_logprobs = Some(21)), "`prompt_logprobs` must be in [0, 20]"),
    ];
    for (p, message) in cases {
        assert_eq!(p.validate().unwrap_err(), message, "{p:?}");
    }
    let edges = params(|p| {
        p.top_p = 1.0;
        p.min_p = 1.0;
        p.repetition_penalty = 0.01;
        p.presence_penalty = -2.0;
        p.frequency_penalty = 2.0;
        p.logit_bias = vec![(0, -100.0), (1, 100.0)];
        p.min_tokens = 256;
        p.logprobs = Some(20);
        p.prompt_logprobs = Some(0);
    });
    assert_eq!(edges.validate(), Ok(()));
}

/// The one-pass top-k gives what sorting the whole row gives (ties to the lower id, -inf and NaN
/// never chosen), whatever order the row's values come in.
#[test]
fn top_k_selection_is_a_full_sort_cut_short() {
    let mut rows = vec![random_logits(5000, 3), (0..5000).map(|i| i as f32).collect(), (0..5000).map(|i| -(i as f32)).collect()];
    // Few distinct values (bf16-like ties), with -inf and NaN among them.
    let mut ties: Vec<f32> = (0..5000).map(|i| ((i * 7919) % 13) as f32).collect();
    ties[10] = f32::NAN;
    ties[11] = f32::NEG_INFINITY;
    ties[12] = f32::INFINITY;
    rows.push(ties);
    rows.push(vec![f32::NEG_INFINITY; 100]);
    for row in &rows {
        let mut all: Vec<(u32, f32)> = row.iter().enumerate().filter(|(_, &l)| l > f32::NEG_INFINITY).map(|(i, &l)| (i as u32, l)).collect();
        all.sort_by(by_value_desc);
        for k in [1, 2, 20, 31, 33, 64, 1000, 4999, 5000, 6000] {
            let mut got = vec![];
            top_k_sorted(indexed(row), k, &mut got);
            let want: Vec<(u32, f32)> = all.iter().take(k).copied().collect();
            assert_eq!(got.len(), want.len(), "k {k}");
            assert!(got.iter().zip(&want).all(|(a, b)| a.0 == b.0 && a.1.to_bits() == b.1.to_bits()), "k {k}: {got:?}");
        }
    }
}

/// A seeded top-k draw depends only on the top-k tokens' values: the same row with everything
/// outside a larger set of the most likely tokens at -inf draws the same tokens (what lets a
/// GPU send only its rows' best candidates to the host).
#[test]
fn top_k_draws_need_only_the_best_candidates() {
    let variants = [
        params(|p| {
            p.temperature = 0.7;
            p.top_k = 20;
            p.top_p = 0.8;
        }),
        params(|p| {
            p.temperature = 1.3;
            p.top_k = 50;
            p.min_p = 0.02;
        }),
        params(|p| {
            p.temperature = 1.0;
            p.top_k = 3;
        }),
    ];
    for (i, p) in variants.iter().enumerate() {
        let rows: Vec<Vec<f32>> = (0..40).map(|r| random_logits(3000, 100 + r)).collect();
        let draw = |rows: &[Vec<f32>]| -> Vec<u32> {
            let mut s = Sampler::new(Some(i as u64));
            rows.iter().map(|row| s.sample(row, p, &[], &[], &[]).token).collect()
        };
        let sparse: Vec<Vec<f32>> = rows
            .iter()
            .map(|row| {
                let mut best = vec![];
                top_k_sorted(indexed(row), p.top_k + 7, &mut best);
                let mut out = vec![f32::NEG_INFINITY; row.len()];
                for (id, l) in best {
                    out[id as usize] = l;
                }
                out
            })
            .collect();
        let full = draw(&rows);
        assert_eq!(full, draw(&sparse), "{p:?}");
        assert!(full.iter().collect::<std::collections::HashSet<_>>().len() > 5, "the draws vary: {full:?}");
    }
}

/// What a GPU sends for a row (see `runner::Want`): every logit at least the (k + t)-th largest
/// and the t touched ids, sorted by id; drawing from it gives the whole row's tokens, for
/// greedy after penalties and for top-k sampling with every processing step.
#[test]
fn candidates_draw_what_the_row_draws() {
    let prompt: Vec<u32> = (0..60).map(|i| (i * 37) % 3000).collect();
    let output: Vec<u32> = vec![5, 9, 9, 1200, 7, 9, 2999];
    let suppressed = [4u32, 8, 15];
    let variants = [
        params(|p| p.repetition_penalty = 1.3),
        params(|p| {
            p.logit_bias = vec![(17, 5.0), (2500, -3.0), (3, 100.0)];
            p.presence_penalty = 1.5;
        }),
        params(|p| {
            p.temperature = 0.8;
            p.top_k = 20;
            p.top_p = 0.9;
            p.repetition_penalty = 0.7;
            p.frequency_penalty = -1.0;
        }),
        params(|p| {
            p.temperature = 1.2;
            p.top_k = 40;
            p.min_p = 0.05;
            p.logit_bias = vec![(11, 4.0), (12, -100.0)];
            p.presence_penalty = -2.0;
        }),
        params(|p| {
            p.temperature = 1.0;
            p.top_k = 1;
        }),
    ];
    for (v, p) in variants.iter().enumerate() {
        let mut touched: Vec<u32> = p.logit_bias.iter().map(|b| b.0).chain(suppressed).collect();
        if p.repetition_penalty != 1.0 {
            touched.extend(&prompt);
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            touched.extend(&output);
        }
        touched.sort_unstable();
        touched.dedup();
        let k = p.top_k.max(1) + touched.len();
        let (mut full, mut sparse) = (Sampler::new(Some(v as u64)), Sampler::new(Some(v as u64)));
        for r in 0..60 {
            // Half the rows with bf16-like ties.
            let row: Vec<f32> = random_logits(3000, 500 + r).into_iter().map(|l| if r % 2 == 1 { (l * 8.0).round() / 8.0 } else { l }).collect();
            let mut sorted = row.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[k - 1];
            let mut candidates: Vec<(u32, f32)> = indexed(&row).filter(|&(i, l)| l >= kth || touched.binary_search(&i).is_ok()).collect();
            candidates.sort_unstable_by_key(|c| c.0);
            assert!(candidates.len() < 1000, "a handful, not the row");
            let want = full.sample(&row, p, &prompt, &output, &suppressed).token;
            let got = sparse.sample_candidates(&candidates, p, &prompt, &output, &suppressed).token;
            assert_eq!(got, want, "{p:?}, row {r}");
        }
    }
}

/// A draw over the whole vocabulary (no top-k or top-p) follows the softmax: empirical
/// frequencies over 40,000 draws against the probabilities, the mass spread over several
/// chunks of the walk and piled into the last one; min-p's dropped tokens never come.
#[test]
fn whole_vocabulary_draws_follow_the_softmax() {
    let spread: Vec<f32> = (0..300).map(|i| ((i * 37 % 101) as f32) / 25.0).collect();
    let mut last_heavy = vec![-30.0f32; 300];
    for (i, l) in last_heavy.iter_mut().enumerate().skip(290) {
        *l = (i - 290) as f32 / 4.0;
    }
    for (logits, min_p) in [(&spread, 0.0), (&last_heavy, 0.0), (&spread, 0.2)] {
        let p = params(|p| {
            p.temperature = 1.0;
            p.min_p = min_p;
        });
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        let weights: Vec<f64> =
            logits.iter().map(|&l| f64::from(l - max).exp()).map(|w| if w >= f64::from(min_p) { w } else { 0.0 }).collect();
        let total: f64 = weights.iter().sum();
        let n = 40_000;
        let mut counts = vec![0usize; logits.len()];
        for t in draws(logits, &p, 11, n) {
            counts[t as usize] += 1;
        }
        let tv: f64 = counts.iter().zip(&weights).map(|(&c, &w)| (c as f64 / n as f64 - w / total).abs()).sum::<f64>() / 2.0;
        assert!(tv < 0.03, "total variation {tv} (min_p {min_p})");
        assert!(counts.iter().zip(&weights).all(|(&c, &w)| w > 0.0 || c == 0), "a dropped token was drawn");
    }
}

/// Top-p over the whole vocabulary cuts the nucleus exactly where the ranked mass reaches top-p
/// of the whole row's (not of the candidates a round looked at), in the first round of 64
/// candidates and past it: n equally likely tokens (and thousands of nearly impossible ones)
/// keep exactly the first ones by id.
#[test]
fn top_p_alone_keeps_exactly_the_nucleus() {
    for (equal, top_p, nucleus) in [(100, 0.695, 70), (1000, 0.0505, 51)] {
        let mut logits = vec![-30.0f32; 5000];
        logits[..equal].fill(5.0);
        let p = params(|p| {
            p.temperature = 1.0;
            p.top_p = top_p;
        });
        let mut seen = vec![0usize; equal];
        for t in draws(&logits, &p, 3, 20_000) {
            assert!((t as usize) < nucleus, "top_p {top_p}: token {t} is outside the nucleus");
            seen[t as usize] += 1;
        }
        let drawn = seen[..nucleus].iter().filter(|&&c| c > 150).count();
        assert_eq!(drawn, nucleus, "top_p {top_p}: every nucleus token is drawn often");
    }
}
