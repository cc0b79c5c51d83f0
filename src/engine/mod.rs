//! Turning logits into tokens. (The continuous-batching engine grows here.)

pub mod sampler;
