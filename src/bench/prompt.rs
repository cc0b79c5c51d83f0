//! The benchmark's inputs: synthetic prompts as token ids, and the tokenizer that makes them
//! when the model itself runs elsewhere (`--server`).

use std::path::Path;


use crate::loader::gguf_files::GgufFiles;
use crate::tokenizer::Tokenizer;

/// `len` tokens of English-like text for prompt number `i`. It starts with `i`'s decimal digits
/// least significant first (Qwen tokenizes digits one by one), so prompts with nearby numbers
/// differ from their first or second token on and share no cached prefix.
pub fn synthetic_prompt(tokenizer: &Tokenizer, i: usize, len: usize) -> Vec<u32> {
    let digits: String = i.to_string().chars().rev().collect();
    let mut text = format!("{digits}. Request. ");
    let mut ids = vec![];
    while ids.len() < len {
        text.push_str("The quick brown fox jumps over the lazy dog while the engineers measure how fast the server can answer. ");
        ids = tokenizer.encode(&text).expect("encoding plain text");
    }
    ids.truncate(len);
    ids
}

/// Hands out prompts numbered 0, 1, 2, ... so that no two requests of one benchmark session
/// (warm-ups and every concurrency level included) repeat a prompt: a repeated prompt would
/// be a prefix-cache hit, not a measurement. Two sessions making the same calls send the same
/// token ids, whichever server they drive.
pub struct Prompts {
    tokenizer: Tokenizer,
    num_taken: usize,
}

impl Prompts {
    pub fn new(tokenizer: Tokenizer) -> Self {
        Self { tokenizer, num_taken: 0 }
    }

    /// The next unused prompt of `len` tokens.
    pub fn take(&mut self, len: usize) -> Vec<u32> {
        self.num_taken += 1;
        synthetic_prompt(&self.tokenizer, self.num_taken - 1, len)
    }
}

/// The tokenizer of `--model` without its weights: a `.gguf` file's metadata, or a folder's
/// `tokenizer.json`.
pub fn load_tokenizer(model: &str) -> Result<Tokenizer, String> {
    let path = Path::new(model);
    if path.is_dir() {
        return Tokenizer::from_file(&path.join("tokenizer.json")).map_err(|e| e.to_string());
    }
    if !path.is_file() {
        return Err(format!("{model}: with --server, --model must be a local .gguf file or model folder (it supplies the tokenizer)"));
    }
    // Any part of a split model: the metadata is in the first.
    let files = GgufFiles::open(path).map_err(|e| e.to_string())?;
    Tokenizer::from_gguf(&files.content.metadata).map_err(|e| format!("{model}: {e}"))
}
