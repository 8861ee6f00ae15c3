//! Model definitions and loading: configs, weights, the Llama family.

pub mod config;
pub mod llama;
pub mod weights;
