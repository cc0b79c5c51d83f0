use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("checkpoint has no tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {found:?}, the config implies {expected:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("bad forward input: {0}")]
    Input(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
