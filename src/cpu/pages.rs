//! Huge pages for the large buffers every step streams through: the KV cache (a long-context
//! decode reads every block once, a few KiB from each 4 KiB page, so with small pages nearly
//! every block costs a TLB miss, a walk of two page tables under a hypervisor) and the packed
//! quantized weights (f32 caches excepted: see `kv::cache::zeros`). `cargo bench --bench
//! attention` over a 4k FP8 cache ran 10-25% faster on huge pages (Zen 4 VM, 2 threads).

/// Asks Linux to back a large buffer with transparent huge pages (`MADV_HUGEPAGE`; THP's
/// default `madvise` mode gives them only to ranges that ask). It must come before the first
/// write, while the pages are still unfaulted (a fresh `vec![0; n]` of a primitive). Only how
/// they are backed changes, never a value; a refusal costs nothing but the speed.
pub fn advise_huge<T>(buf: &[T]) {
    #[cfg(target_os = "linux")]
    {
        let (start, len) = (buf.as_ptr() as usize, std::mem::size_of_val(buf));
        if len < 2 << 20 {
            return;
        }
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => return,
        };
        let aligned = start & !(page - 1);
        let len = (start + len).next_multiple_of(page) - aligned;
        // SAFETY: the range is the whole pages that hold this live allocation (an edge page
        // may hold a neighbour too); MADV_HUGEPAGE changes how pages are backed, never what
        // they hold.
        let r = unsafe { libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
        if r != 0 {
            tracing::debug!(
                "madvise(MADV_HUGEPAGE): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}
