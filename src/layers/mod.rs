//! Building blocks of a transformer layer: linear maps, rotary embedding, paged attention.

pub mod attention;
pub mod linear;
pub mod rope;
