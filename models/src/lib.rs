//! Architecture configs and weight-name maps of the Llama-family models Glint runs.
//!
//! For Hugging Face checkpoints (Llama 2/3.x, TinyLlama, SmolLM2, MobileLLM, Qwen2):
//! how their `config.json` maps onto a
//! [`ModelConfig`] ([`config_from_hf`]) and how their tensor names map onto Glint's
//! canonical names ([`canonical_name`]); the sampling their authors recommend
//! ([`sampling_from_generation_config`], [`known_sampling`]); the shapes of the sub-1B
//! assistants Glint targets, by name ([`known_shape`]), for synthetic models. With the
//! feature `burn`: the float reference model as burn modules ([`burn_llama`]), for
//! training (distillation).

#[cfg(feature = "burn")]
pub mod burn_llama;
mod config;
mod names;
mod sampling;
mod shapes;

pub use config::{ModelError, config_from_hf};
pub use names::{Mapped, canonical_name};
pub use sampling::{known_sampling, sampling_from_generation_config};
pub use shapes::{KnownShape, SHAPE_NAMES, known_shape};
