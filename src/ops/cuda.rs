//! flare's PTX modules and the glue to launch them on candle's CUDA stream.

use candle_core::cuda_backend::cudarc::driver::{
    result, CudaFunction, CudaSlice, CudaView, DevicePtrMut, DeviceRepr, LaunchConfig,
};
use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice, WrapErr};
use candle_core::{DType, Layout, Result, Storage, Tensor, WithDType};

/// PTX text of every kernels/*.cu, named after the file (build.rs).
pub mod ptx {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// `{root}_{bf16|f16|f32}` from the module of kernels/`module`.cu (loaded once per device);
/// launch it with `dev.cuda_stream().launch_builder(&f)`, on candle's stream.
pub fn function<T: WithDType>(
    dev: &CudaDevice,
    module: &'static str,
    ptx: &'static str,
    root: &str,
) -> Result<CudaFunction> {
    let name = format!("{root}_{}", T::DTYPE.as_str());
    Ok(dev
        .get_or_load_custom_func(&name, module, ptx)?
        .into_cuda_function())
}

/// A one-dimensional launch of `blocks` blocks of `threads` threads.
pub fn grid(blocks: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The view a contiguous layout names inside a device buffer.
pub fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout, op: &str) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.slice(a..b)),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Runs `f` on the u32 device data of a tensor that is not one of the op's inputs
/// (metadata such as slot mappings and block tables).
pub fn with_u32<R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(CudaView<'_, u32>) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        candle_core::bail!("{op}: metadata tensor is not on the GPU");
    };
    let CudaStorageSlice::U32(data) = &s.slice else {
        candle_core::bail!("{op}: metadata tensor is {:?}, not u32", t.dtype());
    };
    f(view(data, layout, op)?)
}

/// As `with_u32`, for f32 tables (rotary frequencies).
pub fn with_f32<R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(CudaView<'_, f32>) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        candle_core::bail!("{op}: table tensor is not on the GPU");
    };
    let CudaStorageSlice::F32(data) = &s.slice else {
        candle_core::bail!("{op}: table tensor is {:?}, not f32", t.dtype());
    };
    f(view(data, layout, op)?)
}

pub fn unsupported(op: &str, dtype: DType) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: no CUDA kernel for {dtype:?}"))
}

/// An output buffer of `n` elements for a kernel to fill (NaN-poisoned when testing, see
/// `ops::poison_outputs`).
pub fn alloc_out<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: callers launch a kernel that writes every element before anyone reads them.
    let mut out = unsafe { dev.alloc::<T>(n.max(1))? };
    if super::poisoning() {
        let stream = dev.cuda_stream();
        let bytes = n.max(1) * std::mem::size_of::<T>();
        let (ptr, _sync) = out.device_ptr_mut(&stream);
        // SAFETY: `ptr` covers `bytes` bytes of a live allocation on this stream.
        unsafe { result::memset_d8_async(ptr, 0xff, bytes, stream.cu_stream()) }.w()?;
    }
    Ok(out)
}
