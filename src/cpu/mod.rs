//! CPU compute kernels of our own where candle's are the bottleneck. Each fixes the reduction
//! order of every output row, so results do not depend on the batch or the thread count.

pub mod activation;
pub mod attention;
pub mod dense;
pub mod pages;
pub mod pool;
pub mod qgemm;
pub mod vmath;
