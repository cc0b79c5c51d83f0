//! Fill in the middle: `/v1/completions` with a `suffix` (and llama.cpp's `/infill`) asks for
//! the text between a prefix and a suffix, in the format Qwen2.5-Coder was trained on,
//! `<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>`.

use crate::error::ApiError;
use crate::tokenizer::Tokenizer;

const PREFIX: &str = "<|fim_prefix|>";
const SUFFIX: &str = "<|fim_suffix|>";
const MIDDLE: &str = "<|fim_middle|>";

/// Tokens that end a middle besides the model's EOS, as llama.cpp ends it: padding, and the
/// repository-level markers a model writes when it moves on to another file.
const ENDS: [&str; 3] = ["<|fim_pad|>", "<|file_sep|>", "<|repo_name|>"];

/// A vocabulary's FIM tokens.
pub struct Fim {
    prefix: u32,
    suffix: u32,
    middle: u32,
    repo_name: Option<u32>,
    file_sep: Option<u32>,
    /// Tokens that end the middle besides EOS.
    pub ends: Vec<u32>,
}

impl Fim {
    /// A 400 naming `field` where the vocabulary has no FIM tokens.
    pub fn of(tokenizer: &Tokenizer, field: &str) -> Result<Self, ApiError> {
        // Qwen2.5's tokenizers list these as added tokens not marked special.
        let id = |t: &str| tokenizer.token_to_id(t);
        let (Some(prefix), Some(suffix), Some(middle)) = (id(PREFIX), id(SUFFIX), id(MIDDLE)) else {
            return Err(ApiError::invalid(field, format!("`{field}` needs a model whose vocabulary has the fill-in-the-middle tokens {PREFIX}, {SUFFIX} and {MIDDLE} (Qwen2.5-Coder's); this one has not")));
        };
        Ok(Self { prefix, suffix, middle, repo_name: id("<|repo_name|>"), file_sep: id("<|file_sep|>"), ends: ENDS.iter().filter_map(|t| id(t)).collect() })
    }

    /// `context`, then `prefix` and `suffix` around the middle to write.
    pub fn wrap(&self, context: &[u32], prefix: &[u32], suffix: &[u32]) -> Vec<u32> {
        let mut ids = Vec::with_capacity(context.len() + prefix.len() + suffix.len() + 3);
        ids.extend(context);
        ids.push(self.prefix);
        ids.extend(prefix);
        ids.push(self.suffix);
        ids.extend(suffix);
        ids.push(self.middle);
        ids
    }

    /// `wrap`, cut as llama.cpp's `/infill` cuts it, to at most `budget` tokens where the whole
    /// does not fit (with room left for the three FIM tokens): the prefix keeps its end (the
    /// text nearest the cursor) and the suffix its start, the prefix taking up to three
    /// quarters of the room and the suffix the rest; the repository context fills what they
    /// leave, keeping its end (the file separator before the edited file, and the files
    /// nearest it). Where everything fits nothing is cut.
    pub fn fit(&self, context: &[u32], prefix: &[u32], suffix: &[u32], budget: usize) -> Vec<u32> {
        let room = budget.saturating_sub(3);
        let prefix_take = prefix.len().min((room * 3 / 4).max(room.saturating_sub(suffix.len())));
        let suffix_take = suffix.len().min(room - prefix_take);
        let context_take = context.len().min(room - prefix_take - suffix_take);
        self.wrap(&context[context.len() - context_take..], &prefix[prefix.len() - prefix_take..], &suffix[..suffix_take])
    }

    /// Qwen2.5-Coder's repository-level context as llama.cpp's `/infill` writes it: the
    /// repository's name, each file of `files` (name, text) after a file separator, then a
    /// separator before the file being edited (named "filename", as llama.cpp names it).
    pub fn repository(&self, tokenizer: &Tokenizer, files: &[(&str, &str)]) -> Result<Vec<u32>, ApiError> {
        let mut ids = vec![];
        if let Some(repo) = self.repo_name {
            ids.push(repo);
            ids.extend(tokenizer.encode("myproject\n")?);
        }
        for &(name, text) in files {
            match self.file_sep {
                Some(sep) => {
                    ids.push(sep);
                    ids.extend(tokenizer.encode(&format!("{name}\n"))?);
                }
                None => ids.extend(tokenizer.encode("\n\n--- snippet ---\n\n")?),
            }
            ids.extend(tokenizer.encode(text)?);
        }
        if let Some(sep) = self.file_sep {
            ids.push(sep);
            ids.extend(tokenizer.encode("filename\n")?);
        }
        Ok(ids)
    }
}

/// Each prompt wrapped around `suffix` for the model to fill (`/v1/completions`), and the
/// extra tokens that end the middle.
pub fn fill_in_the_middle(tokenizer: &Tokenizer, prompts: Vec<Vec<u32>>, suffix: &str) -> Result<(Vec<Vec<u32>>, Vec<u32>), ApiError> {
    let fim = Fim::of(tokenizer, "suffix")?;
    let suffix_ids = tokenizer.encode(suffix)?;
    let wrapped = prompts.iter().map(|p| fim.wrap(&[], p, &suffix_ids)).collect();
    Ok((wrapped, fim.ends))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIM: Fim = Fim { prefix: 1, suffix: 2, middle: 3, repo_name: None, file_sep: None, ends: Vec::new() };

    fn range(from: u32, n: u32) -> Vec<u32> {
        (from..from + n).collect()
    }

    #[test]
    fn fit_cuts_only_what_does_not_fit() {
        let (context, prefix, suffix) = (range(100, 10), range(200, 20), range(300, 8));
        let whole = FIM.wrap(&context, &prefix, &suffix);
        assert_eq!(FIM.fit(&context, &prefix, &suffix, whole.len()), whole);
        assert_eq!(FIM.fit(&context, &prefix, &suffix, 1000), whole);
        // One token short: the context loses its first token, nothing else.
        assert_eq!(FIM.fit(&context, &prefix, &suffix, whole.len() - 1), FIM.wrap(&context[1..], &prefix, &suffix));
        // Room for prefix and suffix only.
        assert_eq!(FIM.fit(&context, &prefix, &suffix, 31), FIM.wrap(&[], &prefix, &suffix));
    }

    #[test]
    fn fit_splits_prefix_and_suffix_three_to_one() {
        let (context, prefix, suffix) = (range(100, 10), range(200, 100), range(300, 100));
        // 40 tokens of room: the prefix's last 30, the suffix's first 10, no context.
        let fitted = FIM.fit(&context, &prefix, &suffix, 43);
        assert_eq!(fitted, FIM.wrap(&[], &prefix[70..], &suffix[..10]));
        // A short suffix leaves its share to the prefix, and a short prefix to the suffix.
        assert_eq!(FIM.fit(&context, &prefix, &suffix[..4], 43), FIM.wrap(&[], &prefix[64..], &suffix[..4]));
        assert_eq!(FIM.fit(&context, &prefix[..5], &suffix, 43), FIM.wrap(&[], &prefix[..5], &suffix[..35]));
        // No room at all: the three FIM tokens alone, for the length check to refuse.
        assert_eq!(FIM.fit(&context, &prefix, &suffix, 2), vec![1, 2, 3]);
    }
}
