//! Building blocks of a transformer layer: linear maps, rotary embedding, paged attention,
//! MLPs and mixtures of experts.

pub mod attention;
pub mod linear;
pub mod mla;
pub mod mlp;
pub mod rope;
