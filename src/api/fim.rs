//! Fill in the middle: `/v1/completions` with a `suffix` asks for the text between the prompt
//! and the suffix, in the format Qwen2.5-Coder was trained on,
//! `<|fim_prefix|>{prompt}<|fim_suffix|>{suffix}<|fim_middle|>`.

use crate::error::ApiError;
use crate::tokenizer::Tokenizer;

const PREFIX: &str = "<|fim_prefix|>";
const SUFFIX: &str = "<|fim_suffix|>";
const MIDDLE: &str = "<|fim_middle|>";

/// Tokens that end a middle besides the model's EOS, as llama.cpp ends it: padding, and the
/// repository-level markers a model writes when it moves on to another file.
const ENDS: [&str; 3] = ["<|fim_pad|>", "<|file_sep|>", "<|repo_name|>"];

/// Each prompt wrapped around `suffix` for the model to fill, and the extra tokens that end
/// the middle; a 400 naming `suffix` where the vocabulary has no FIM tokens.
pub fn fill_in_the_middle(tokenizer: &Tokenizer, prompts: Vec<Vec<u32>>, suffix: &str) -> Result<(Vec<Vec<u32>>, Vec<u32>), ApiError> {
    // Qwen2.5's tokenizers list these as added tokens not marked special.
    let id = |t: &str| tokenizer.token_to_id(t);
    let (Some(prefix), Some(suffix_id), Some(middle)) = (id(PREFIX), id(SUFFIX), id(MIDDLE)) else {
        return Err(ApiError::invalid("suffix", format!("`suffix` needs a model whose vocabulary has the fill-in-the-middle tokens {PREFIX}, {SUFFIX} and {MIDDLE} (Qwen2.5-Coder's); this one has not")));
    };
    let suffix_ids = tokenizer.encode(suffix)?;
    let wrapped = prompts
        .into_iter()
        .map(|p| {
            let mut ids = Vec::with_capacity(p.len() + suffix_ids.len() + 3);
            ids.push(prefix);
            ids.extend(p);
            ids.push(suffix_id);
            ids.extend(&suffix_ids);
            ids.push(middle);
            ids
        })
        .collect();
    Ok((wrapped, ENDS.iter().filter_map(|t| id(t)).collect()))
}
