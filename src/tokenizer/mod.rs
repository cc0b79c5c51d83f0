//! Tokenizer layer: text <-> token ids, chat templates and streaming detokenization.
//!
//! Everything is a thin, checked wrapper around Hugging Face `tokenizers` and `minijinja`;
//! the reference for every output is Python `transformers` (`encode`, `decode`,
//! `apply_chat_template`), and the tests in `tests/tokenizer.rs` compare against it.
//!
//! A GGUF file alone is enough: [`Tokenizer::from_gguf`] rebuilds the Hugging Face
//! `tokenizer.json` from the GGUF vocabulary (see `gguf.rs`).

mod chat_template;
mod detokenizer;
mod gguf;
mod pyfmt;
mod pyjson;
mod strftime;
mod template_source;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;

pub use chat_template::ChatTemplate;
pub use detokenizer::IncrementalDecoder;
pub use template_source::{special_token_from_config, ChatTemplateSources};

/// Errors of the tokenizer layer. Messages name the file, GGUF key or template involved.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load tokenizer from {}: {message}", path.display())]
    Load { path: PathBuf, message: String },

    #[error("GGUF metadata key `{key}` is missing")]
    MissingKey { key: String },

    #[error("GGUF metadata key `{key}` has the wrong type: expected {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },

    #[error("invalid GGUF tokenizer metadata: {0}")]
    InvalidGguf(String),

    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),

    #[error("tokenizer failed to build: {0}")]
    Build(String),

    #[error("encoding failed: {0}")]
    Encode(String),

    #[error("decoding failed: {0}")]
    Decode(String),

    #[error("invalid `chat_template` in tokenizer config: {0}")]
    TemplateConfig(String),

    #[error("chat template does not compile: {0}")]
    TemplateSyntax(String),

    /// The template itself called `raise_exception(message)` (e.g. "System message must be at
    /// the beginning."): a problem with the request, not with the server.
    #[error("chat template rejected the conversation: {0}")]
    TemplateRaised(String),

    #[error("chat template failed to render: {0}")]
    TemplateRender(String),
}

/// A loaded tokenizer plus the special ids the rest of the server needs.
///
/// Invariant: `special_ids` is exactly the set of added tokens marked `special` in `inner`
/// (the ones `decode(.., skip_special_tokens = true)` drops), sorted.
#[derive(Clone)]
pub struct Tokenizer {
    /// Shared: every request holds a handle, and a deep copy of a 151k-token vocabulary is
    /// ~30 MB (16 concurrent requests used to add ~500 MB of resident memory).
    inner: std::sync::Arc<tokenizers::Tokenizer>,
    special_ids: std::sync::Arc<[u32]>,
    /// Cached: `tokenizers` rebuilds the whole vocabulary map to count it.
    vocab_size: usize,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    /// What each id decodes to, when the tokenizer is byte-level (see [`Self::byte_pieces`]);
    /// made on first use, shared by the clones.
    pieces: std::sync::Arc<std::sync::OnceLock<Option<Box<[Box<[u8]>]>>>>,
}

/// Not derived: the inner tokenizer would print its whole vocabulary.
impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("num_special_ids", &self.special_ids.len())
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_id", &self.eos_token_id)
            .field("pad_token_id", &self.pad_token_id)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`. BOS/EOS/PAD ids are not part of that file (they
    /// live in `tokenizer_config.json` / `generation_config.json`), so they are `None` here.
    pub fn from_file(tokenizer_json: &Path) -> Result<Self, TokenizerError> {
        let inner =
            tokenizers::Tokenizer::from_file(tokenizer_json).map_err(|e| TokenizerError::Load {
                path: tokenizer_json.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Self::from_parts(inner, None, None, None))
    }

    /// Builds the tokenizer from the metadata of a GGUF file (`tokenizer.ggml.*`).
    pub fn from_gguf(metadata: &HashMap<String, gguf_file::Value>) -> Result<Self, TokenizerError> {
        let built = gguf::build(metadata)?;
        Ok(Self::from_parts(
            built.inner,
            built.bos_token_id,
            built.eos_token_id,
            built.pad_token_id,
        ))
    }

    fn from_parts(
        inner: tokenizers::Tokenizer,
        bos_token_id: Option<u32>,
        eos_token_id: Option<u32>,
        pad_token_id: Option<u32>,
    ) -> Self {
        let mut special_ids: Vec<u32> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();
        special_ids.sort_unstable();
        let vocab_size = inner.get_vocab_size(true);
        Self {
            inner: std::sync::Arc::new(inner),
            special_ids: special_ids.into(),
            vocab_size,
            bos_token_id,
            eos_token_id,
            pad_token_id,
            pieces: Default::default(),
        }
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) become their
    /// single id; no BOS/EOS is added (Qwen adds none; chat templates write them explicitly).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of `text` with the special tokens the tokenizer's post-processor adds (what
    /// Hugging Face's `tokenizer(text)` gives: Qwen3-Embedding's appends `<|endoftext|>`;
    /// a tokenizer without a post-processor adds none).
    pub fn encode_with_special_tokens(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self.inner.encode_fast(text, true).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`. Ids outside the vocabulary are dropped, as `tokenizers` does (a model whose
    /// embedding is padded past the vocabulary can in principle sample one).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of distinct tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Whether `id` is an added token marked special (dropped by `skip_special_tokens`).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.binary_search(&id).is_ok()
    }

    /// Ids of all special added tokens, sorted.
    pub fn special_ids(&self) -> &[u32] {
        &self.special_ids
    }

    /// `tokenizer.ggml.bos_token_id` for a GGUF tokenizer; `None` from a `tokenizer.json`.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// `tokenizer.ggml.eos_token_id` for a GGUF tokenizer; `None` from a `tokenizer.json`.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// `tokenizer.ggml.padding_token_id` for a GGUF tokenizer; `None` from a `tokenizer.json`.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token_id
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// What each token id writes, as bytes (a token may hold part of a UTF-8 character); empty
    /// for special tokens. For a byte-level tokenizer, its [`Self::byte_pieces`]. Otherwise
    /// vocabulary entries are read as byte-level BPE strings (GPT-2's byte-to-char table) and
    /// added tokens are their own text; an entry outside that table falls back to decoding the
    /// id alone.
    pub fn token_bytes(&self) -> Vec<Box<[u8]>> {
        if let Some(pieces) = self.byte_pieces() {
            return pieces.iter().enumerate().map(|(id, b)| if self.is_special(id as u32) { Box::default() } else { b.clone() }).collect();
        }
        let byte_of = byte_level_decoder();
        let added = self.inner.get_added_tokens_decoder();
        (0..self.vocab_size as u32)
            .map(|id| {
                if self.is_special(id) {
                    return Box::default();
                }
                if let Some(token) = added.get(&id) {
                    return token.content.as_bytes().into();
                }
                let Some(piece) = self.inner.id_to_token(id) else { return Box::default() };
                match piece.chars().map(|c| byte_of.get(&c).copied()).collect::<Option<Vec<u8>>>() {
                    Some(bytes) => bytes.into(),
                    None => self.decode(&[id], false).map(|t| t.into_bytes().into()).unwrap_or_default(),
                }
            })
            .collect()
    }
}

impl Tokenizer {
    /// For a byte-level tokenizer (its decoder is `ByteLevel` alone, as Qwen's and our GGUF
    /// tokenizers are): the bytes each id decodes to, special ones included, so that
    /// `decode(ids)` is those bytes joined and read as UTF-8 with U+FFFD for invalid sequences
    /// (without the special ids when skipping them). `None` for any other tokenizer, or if a
    /// sample of ids decodes otherwise. Made on first use (~150k ids: tens of ms).
    pub fn byte_pieces(&self) -> Option<&[Box<[u8]>]> {
        self.pieces.get_or_init(|| self.make_byte_pieces()).as_deref()
    }

    /// The bytes token `id` writes: with a byte-level tokenizer its raw bytes (a token may hold
    /// part of a UTF-8 character, which decoding alone would turn into U+FFFD), else its text's.
    pub fn piece_bytes(&self, id: u32) -> Vec<u8> {
        match self.byte_pieces().and_then(|p| p.get(id as usize)) {
            Some(bytes) => bytes.to_vec(),
            None => self.decode(&[id], false).unwrap_or_default().into_bytes(),
        }
    }

    fn make_byte_pieces(&self) -> Option<Box<[Box<[u8]>]>> {
        use tokenizers::DecoderWrapper;
        if !matches!(self.inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
            return None;
        }
        // As the ByteLevel decoder reads a token: through the alphabet if every char is in it,
        // else as its own UTF-8.
        let byte_of = byte_level_decoder();
        let pieces: Box<[Box<[u8]>]> = (0..self.vocab_size as u32)
            .map(|id| match self.inner.id_to_token(id) {
                None => Box::default(),
                Some(token) => match token.chars().map(|c| byte_of.get(&c).copied()).collect::<Option<Vec<u8>>>() {
                    Some(bytes) => bytes.into(),
                    None => token.into_bytes().into(),
                },
            })
            .collect();
        let added = self.inner.get_added_tokens_decoder();
        let sample = (0..self.vocab_size as u32).step_by(61).chain(added.keys().copied());
        for id in sample {
            let piece = pieces.get(id as usize).map_or(&[][..], |b| b);
            if self.decode(&[id], false).ok()? != String::from_utf8_lossy(piece) {
                tracing::warn!("token {id} decodes unlike its bytes: streaming through the tokenizer's decoder");
                return None;
            }
        }
        Some(pieces)
    }
}

/// GPT-2's byte-level alphabet, reversed: the char that stands for each byte -> the byte.
/// Printable bytes stand for themselves; the others (0-32, 127-160, 173) for U+0100 onwards.
fn byte_level_decoder() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut next = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(255 + next).expect("U+0100..U+0143")
        };
        map.insert(c, b);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<ChatTemplate>();
        assert_send_sync::<IncrementalDecoder>();
    }
}
