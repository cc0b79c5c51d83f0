//! Speculative decoding by prompt lookup (vLLM's `ngram` method): a decoding sequence whose
//! last few tokens occurred earlier in its prompt or output guesses that what followed them
//! then follows again, and the step checks those draft tokens in one forward. Editing code,
//! quoting, or filling a template repeats long stretches, and every draft token the model
//! agrees with is a decode step saved.
//!
//! Any sequence without an output constraint (JSON) may draft. The step draws each token as
//! plain decoding would, from the row after the tokens before it: the argmax, or a draw by
//! the sequence's own sampler and RNG after its penalties, temperature and truncation. A draft
//! token is kept while it equals the token drawn in its place, and the token drawn after the
//! last kept one comes too. So the output is plain decoding's, token for token and draw for
//! draw (a seeded request uses its RNG as it would without drafts), given logits that do not
//! depend on how many tokens a step computes, which the CPU kernels guarantee; `tests/engine.rs`
//! compares greedy, seeded and logprob outputs. For a guess, keeping it when the draw equals
//! it is exact speculative sampling: it is kept with the probability the model gives it, and
//! otherwise the draw is the model's distribution without it. The KV of rejected drafts is
//! left in slots past the sequence's length, to be overwritten.
//!
//! A draft token costs about what a prompt token does, a fraction of a decode step on the CPU,
//! and is wasted when rejected. So each sequence keeps a [`DraftPace`]: its drafts grow back to
//! `num_speculative_tokens` while the model keeps them whole, shrink to what it kept plus one,
//! and stop for a few steps after a one-token draft the model rejected.

use serde::Deserialize;

use super::sequence::Sequence;

/// `--speculative-config`: vLLM's JSON, with the `ngram` method only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeculativeConfig {
    /// Most draft tokens a sequence proposes per step.
    pub num_speculative_tokens: usize,
    /// The longest and shortest run of last tokens looked up; the longest that occurred
    /// before wins, at its latest occurrence.
    pub prompt_lookup_max: usize,
    pub prompt_lookup_min: usize,
}

/// The JSON as vLLM spells it; unknown keys are refused rather than ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Json {
    method: Option<String>,
    num_speculative_tokens: Option<usize>,
    prompt_lookup_max: Option<usize>,
    prompt_lookup_min: Option<usize>,
}

/// The most draft tokens per sequence and step: each is a token of the step's budget.
pub const MAX_SPECULATIVE_TOKENS: usize = 64;
/// The longest run of last tokens looked up.
pub const MAX_PROMPT_LOOKUP: usize = 16;

impl SpeculativeConfig {
    /// Parses `--speculative-config`, e.g. `{"method": "ngram", "num_speculative_tokens": 4,
    /// "prompt_lookup_max": 4, "prompt_lookup_min": 2}`. `prompt_lookup_min` defaults to 2
    /// (a single repeated token proposes too often), `prompt_lookup_max` to the larger of 4 and
    /// `prompt_lookup_min`; it is at most [`MAX_PROMPT_LOOKUP`] (each n is a pass over the tokens).
    pub fn parse(json: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("--speculative-config is not JSON: {e}"))?;
        let j: Json = serde_json::from_value(value).map_err(|e| format!("--speculative-config: {e}"))?;
        match j.method.as_deref() {
            Some("ngram") => {}
            Some(m) => return Err(format!("--speculative-config: method {m:?} is not supported (only \"ngram\", prompt lookup; no draft models)")),
            None => return Err("--speculative-config: \"method\" is required (\"ngram\")".into()),
        }
        let k = j.num_speculative_tokens.ok_or("--speculative-config: \"num_speculative_tokens\" is required")?;
        if !(1..=MAX_SPECULATIVE_TOKENS).contains(&k) {
            return Err(format!("--speculative-config: \"num_speculative_tokens\" must be in 1..={MAX_SPECULATIVE_TOKENS}, got {k}"));
        }
        let min = j.prompt_lookup_min.unwrap_or(2.min(j.prompt_lookup_max.unwrap_or(2)));
        let max = j.prompt_lookup_max.unwrap_or(min.max(4));
        if min == 0 || max < min || max > MAX_PROMPT_LOOKUP {
            return Err(format!(
                "--speculative-config: need 1 <= \"prompt_lookup_min\" <= \"prompt_lookup_max\" <= {MAX_PROMPT_LOOKUP}, got {min} and {max}"
            ));
        }
        Ok(Self { num_speculative_tokens: k, prompt_lookup_max: max, prompt_lookup_min: min })
    }

    /// Draft tokens for `seq` this step: none unless it is decoding with no output constraint
    /// (JSON) and nothing suppressed, has room for a token after them, and its pace allows.
    pub fn draft(&self, seq: &mut Sequence, eos_token_ids: &[u32]) -> Vec<u32> {
        let decoding = seq.num_uncomputed_tokens() == 1 && seq.num_computed_tokens >= seq.num_prompt_tokens;
        if !decoding || seq.constraint.is_some() || !seq.suppressed(eos_token_ids).is_empty() {
            return vec![];
        }
        let Some(limit) = seq.draft_pace.next(self.num_speculative_tokens) else { return vec![] };
        // The last kept draft token is followed by one more: drafts stop one short of max_tokens.
        let room = seq.params.max_tokens.saturating_sub(seq.num_output_tokens() + 1);
        self.propose(&seq.tokens, limit.min(room))
    }

    /// Up to `k` tokens that followed the latest earlier occurrence of `tokens`' last n tokens,
    /// n from `prompt_lookup_max` down to `prompt_lookup_min`.
    pub fn propose(&self, tokens: &[u32], k: usize) -> Vec<u32> {
        if k == 0 {
            return vec![];
        }
        let len = tokens.len();
        for n in (self.prompt_lookup_min..=self.prompt_lookup_max.min(len.saturating_sub(1))).rev() {
            let pattern = &tokens[len - n..];
            // Starts of earlier occurrences, latest first (the last n tokens themselves excluded).
            if let Some(j) = (0..len - n).rev().find(|&j| &tokens[j..j + n] == pattern) {
                return tokens[j + n..(j + n + k).min(len)].to_vec();
            }
        }
        vec![]
    }
}

/// Steps a sequence drafts nothing after the model rejected a one-token draft of it.
const PAUSE_STEPS: usize = 4;

/// How long a sequence's next draft may be (see the module's header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DraftPace {
    /// The longest next draft; 0 until the first (which may be `num_speculative_tokens`).
    limit: usize,
    /// Steps left without drafting.
    pause: usize,
}

impl DraftPace {
    /// The longest draft this step, or `None` while paused (counting the step).
    fn next(&mut self, max: usize) -> Option<usize> {
        if self.pause > 0 {
            self.pause -= 1;
            return None;
        }
        Some(if self.limit == 0 { max } else { self.limit.min(max) })
    }

    /// After a step that checked `drafted` tokens of which the model kept `kept`.
    pub fn record(&mut self, drafted: usize, kept: usize, max: usize) {
        if drafted == 0 {
            return;
        }
        let limit = if self.limit == 0 { max } else { self.limit };
        self.limit = if kept == drafted {
            // A draft cut short (by the budget, max_tokens or the lookup) and kept whole says
            // nothing against a longer one.
            limit.max(2 * drafted).min(max)
        } else if kept == 0 && drafted == 1 {
            self.pause = PAUSE_STEPS;
            1
        } else {
            kept + 1
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(k: usize, min: usize, max: usize) -> SpeculativeConfig {
        SpeculativeConfig { num_speculative_tokens: k, prompt_lookup_min: min, prompt_lookup_max: max }
    }

    #[test]
    fn proposes_what_followed_the_latest_longest_match() {
        let c = config(3, 1, 3);
        // "1 2 3 4 5 ... 1 2 3": the 3-gram 1 2 3 occurred at 0, followed by 4 5 9.
        assert_eq!(c.propose(&[1, 2, 3, 4, 5, 9, 7, 1, 2, 3], 3), vec![4, 5, 9]);
        // The latest occurrence wins: 2 3 is followed by 8 at its second occurrence.
        assert_eq!(c.propose(&[2, 3, 7, 2, 3, 8, 2, 3], 3), vec![8, 2, 3]);
        // A longer match beats a later shorter one: 1 2 3 (followed by 4) over 3 alone (by 6).
        assert_eq!(c.propose(&[1, 2, 3, 4, 3, 6, 1, 2, 3], 1), vec![4]);
        // The continuation stops at the end of the tokens.
        assert_eq!(c.propose(&[5, 6, 5], 3), vec![6, 5]);
        // No earlier occurrence of even the last token: nothing.
        assert_eq!(c.propose(&[1, 2, 3, 4], 3), Vec::<u32>::new());
        assert_eq!(c.propose(&[1], 3), Vec::<u32>::new());
        assert_eq!(c.propose(&[], 3), Vec::<u32>::new());
        // prompt_lookup_min 2: a single repeated token is not enough.
        assert_eq!(config(3, 2, 3).propose(&[7, 1, 8, 1], 3), Vec::<u32>::new());
        assert_eq!(config(3, 2, 3).propose(&[7, 1, 8, 7, 1], 3), vec![8, 7, 1]);
        assert_eq!(c.propose(&[1, 2, 1, 2], 0), Vec::<u32>::new());
    }

    #[test]
    fn the_pace_follows_what_the_model_kept() {
        let mut pace = DraftPace::default();
        assert_eq!(pace.next(4), Some(4));
        pace.record(4, 1, 4);
        assert_eq!(pace.next(4), Some(2));
        pace.record(2, 2, 4);
        assert_eq!(pace.next(4), Some(4));
        pace.record(4, 0, 4);
        assert_eq!(pace.next(4), Some(1));
        // Nothing drafted (no lookup match) changes nothing.
        pace.record(0, 0, 4);
        assert_eq!(pace.next(4), Some(1));
        // A rejected single token pauses drafting for PAUSE_STEPS steps.
        pace.record(1, 0, 4);
        for _ in 0..PAUSE_STEPS {
            assert_eq!(pace.next(4), None);
        }
        assert_eq!(pace.next(4), Some(1));
        pace.record(1, 1, 4);
        assert_eq!(pace.next(4), Some(2));
        // A short draft kept whole does not shrink a longer limit.
        pace.record(2, 2, 8);
        assert_eq!(pace.next(8), Some(4));
        pace.record(1, 1, 8);
        assert_eq!(pace.next(8), Some(4));
    }

    #[test]
    fn parses_vllms_json_and_names_what_is_wrong() {
        let c = SpeculativeConfig::parse(r#"{"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}"#).unwrap();
        assert_eq!(c, config(5, 2, 4));
        assert_eq!(SpeculativeConfig::parse(r#"{"method": "ngram", "num_speculative_tokens": 3}"#).unwrap(), config(3, 2, 4));
        assert_eq!(SpeculativeConfig::parse(r#"{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 6}"#).unwrap(), config(3, 6, 6));
        assert_eq!(SpeculativeConfig::parse(r#"{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 1}"#).unwrap(), config(3, 1, 1));
        for (json, needle) in [
            (r#"{"method": "eagle", "num_speculative_tokens": 3}"#, "\"eagle\" is not supported"),
            (r#"{"num_speculative_tokens": 3}"#, "\"method\" is required"),
            (r#"{"method": "ngram"}"#, "\"num_speculative_tokens\" is required"),
            (r#"{"method": "ngram", "num_speculative_tokens": 0}"#, "must be in 1..=64"),
            (r#"{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 4, "prompt_lookup_max": 2}"#, "prompt_lookup_min"),
            (r#"{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 17}"#, "<= 16, got 2 and 17"),
            (r#"{"method": "ngram", "num_speculative_tokens": 3, "model": "x"}"#, "unknown field `model`"),
            ("ngram", "--speculative-config is not JSON"),
            ("[4]", "--speculative-config: invalid type"),
        ] {
            let e = SpeculativeConfig::parse(json).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        }
    }
}
