//! Decode attention over a long context on the CPU, the kernel alone: one query row against a
//! paged f16/f32/fp8 cache laid out as the engine's (`kv::KvLayout`, blocks of 16 slots or
//! BLOCK=n), every layer in turn, context chunks spread over the rayon pool as
//! `layers/attention/tiled.rs` spreads them. Prints the time per step, per position and KV
//! head, and the cache bytes read per second.
//!
//! `RAYON_NUM_THREADS=2 cargo bench --bench attention -- [CTX] [f16|f32|fp8]` (SmolLM2-135M's
//! shape: 30 layers, 9 query heads over 3 KV heads of 64; defaults 4000 f16). Env: LAYERS=n,
//! ITERS=n, LAYOUT=block|slot (other layouts, for comparison: see `offset`), HOT=1 (every
//! chunk reads the first chunk's rows: with LAYERS=1 they stay in L2, so the figure is the
//! kernel's arithmetic with no memory misses), READ_ONLY=1 (the same rows read in the same
//! order with no arithmetic: the memory floor of the layout).

use std::time::Instant;

use flare::cpu::attention::{self as attn, CacheLane, E4m3, Partials, CHUNK};
use rayon::prelude::*;

fn layers() -> usize {
    std::env::var("LAYERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}
const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const D: usize = 64;
/// Slots per block (`BLOCK=n`, the engine's `--block-size`; default 16).
fn block() -> usize {
    static BLOCK: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BLOCK.get_or_init(|| {
        std::env::var("BLOCK")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(16)
    })
}

/// Element offset of position `p`, KV head `h`: the engine's CPU layout, head-major in groups
/// of blocks (`kv::KvLayout`), with the blocks in order (each head's positions of a group one
/// contiguous run, as a sequence whose blocks were handed out consecutively), or with
/// LAYOUT=block the layout before it,
/// `[blocks, kv_heads, 16, d]` (runs of one block, as head-major gives for scattered blocks),
/// or with LAYOUT=slot the GPU's `[slots, kv_heads, d]`.
fn offset(p: usize, h: usize) -> usize {
    static LAYOUT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    match LAYOUT
        .get_or_init(|| std::env::var("LAYOUT").unwrap_or_default())
        .as_str()
    {
        "slot" => (p * KV_HEADS + h) * D,
        "block" => {
            let bs = block();
            (((p / bs) * KV_HEADS + h) * bs + p % bs) * D
        }
        _ => {
            let layout = flare::kv::KvLayout::HeadMajor {
                kv_heads: KV_HEADS,
                group_blocks: *GROUP.get().expect("group"),
                block_size: block(),
            };
            layout.row(p, h) * D
        }
    }
}

/// Blocks per group of the engine's layout (set once by `run`).
static GROUP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

fn hot() -> bool {
    static HOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HOT.get_or_init(|| std::env::var("HOT").is_ok_and(|v| v == "1"))
}

fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

fn read_only() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("READ_ONLY").is_ok_and(|v| v == "1"))
}

/// The xor of the rows at `offs` (`D` elements each) as 8-byte words.
fn xor_rows<C: CacheLane>(cache: &[C], offs: &[usize]) -> u64 {
    let bytes = D * std::mem::size_of::<C>();
    let mut x = 0u64;
    for &o in offs {
        let row = &cache[o..o + D];
        // SAFETY: the row's `bytes` bytes are in bounds (sliced above).
        let b = unsafe { std::slice::from_raw_parts(row.as_ptr().cast::<u8>(), bytes) };
        for w in b.chunks_exact(8) {
            x ^= u64::from_le_bytes(w.try_into().unwrap());
        }
    }
    x
}

/// One decode step over every layer; returns a checksum of the outputs.
fn step<C: CacheLane>(k: &[Vec<C>], v: &[Vec<C>], q: &[f32], ctx: usize) -> f32 {
    let group = HEADS / KV_HEADS;
    let pos = ctx - 1;
    let chunks = pos / CHUNK + 1;
    let mut sum = 0.0;
    for l in 0..layers() {
        let items: Vec<(usize, usize)> = (0..KV_HEADS)
            .flat_map(|h| (0..chunks).map(move |c| (h, c)))
            .collect();
        let work = |(offs, scores): &mut (Vec<usize>, Vec<f32>), &(h, c): &(usize, usize)| {
            let (p0, p1) = (c * CHUNK, pos.min((c + 1) * CHUNK - 1));
            let np = ((p1 + 8) & !7) - p0;
            offs.clear();
            offs.extend((p0..=p1).map(|p| offset(if hot() { p % CHUNK } else { p }, h)));
            offs.resize(np, offs[0]);
            scores.resize(group * np, 0.0);
            let ranges = vec![(p0, p1); group];
            let mut r = vec![0f32; group * (D + 2)];
            let (m, rest) = r.split_at_mut(group);
            let (lsum, o) = rest.split_at_mut(group);
            if read_only() {
                // The memory floor: the same rows read in the same order, no arithmetic.
                let x = xor_rows(&k[l], offs) ^ xor_rows(&v[l], offs);
                lsum.fill(1.0);
                m.fill(0.0);
                o[0] = (x & 0xff) as f32;
                return r;
            }
            let qh = &q[(l * HEADS + h * group) * D..][..group * D];
            let out = Partials { m, l: lsum, o };
            attn::chunk_partials(qh, &k[l], &v[l], offs, p0, &ranges, D, scores, out);
            r
        };
        // One thread: no pool at all, so the figure is the kernel's own.
        let parts: Vec<Vec<f32>> = if rayon::current_num_threads() == 1 {
            let mut sc = Default::default();
            items.iter().map(|it| work(&mut sc, it)).collect()
        } else {
            items.par_iter().map_init(Default::default, work).collect()
        };
        for h in 0..KV_HEADS {
            for i in 0..group {
                let (mut sm, mut sl, mut acc) = (f32::NEG_INFINITY, 0.0, vec![0f32; D]);
                for c in 0..chunks {
                    let r = &parts[h * chunks + c];
                    let (m, lsum, o) = (r[i], r[group + i], &r[2 * group + i * D..][..D]);
                    if sl == 0.0 {
                        (sm, sl) = (m, lsum);
                        acc.copy_from_slice(o);
                    } else {
                        attn::fold(&mut sm, &mut sl, &mut acc, m, lsum, o);
                    }
                }
                let mut out = vec![0f32; D];
                attn::finish(sm, sl, &acc, None, &mut out);
                sum += out[0];
            }
        }
    }
    sum
}

fn run<C: CacheLane>(name: &str, ctx: usize, conv: impl Fn(f32) -> C) {
    let slots = ctx.div_ceil(block()) * block();
    let row_bytes = D * std::mem::size_of::<C>();
    let group = *GROUP
        .get_or_init(|| flare::kv::group_blocks(slots / block(), KV_HEADS, block() * row_bytes));
    // Whole groups, as the engine allocates them.
    let slots = slots.div_ceil(group * block()) * group * block();
    let cache = |seed: u64| -> Vec<Vec<C>> {
        (0..layers())
            .map(|l| {
                let n = slots * KV_HEADS * D;
                let mut buf = Vec::<C>::with_capacity(n);
                buf.extend(noise(n, seed + l as u64).into_iter().map(&conv));
                buf
            })
            .collect()
    };
    let (k, v) = (cache(1), cache(1000));
    let q = noise(layers() * HEADS * D, 7);
    let q: Vec<f32> = q.iter().map(|x| x * 0.125).collect();
    let timed = || match rayon::current_num_threads() {
        1 => step(&k, &v, &q, ctx),
        _ => flare::cpu::pool::run(|| step(&k, &v, &q, ctx), true),
    };
    let mut check = timed();
    let iters: usize = std::env::var("ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut times = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        check += timed();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let med = times[iters / 2];
    let bytes = 2 * layers() * ctx * KV_HEADS * D * std::mem::size_of::<C>();
    println!(
        "{name} ctx {ctx} threads {}: step {:.2} ms (min {:.2}), {:.1} ns per position and KV head, {:.1} GB/s of cache (check {check:.3})",
        rayon::current_num_threads(),
        med * 1e3,
        times[0] * 1e3,
        med * 1e9 / (layers() * ctx * KV_HEADS) as f64,
        bytes as f64 / med / 1e9,
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let ctx = args.first().and_then(|a| a.parse().ok()).unwrap_or(4000);
    match args.get(1).map(String::as_str).unwrap_or("f16") {
        "f32" => run::<f32>("f32", ctx, |x| x),
        "fp8" => run::<E4m3>("fp8", ctx, |x| E4m3(fp8(x))),
        _ => run::<half::f16>("f16", ctx, half::f16::from_f32),
    }
}

/// An e4m3 byte near `x` (|x| < 1 here; the kernel's speed does not depend on rounding).
fn fp8(x: f32) -> u8 {
    let b = half::f16::from_f32(x).to_bits();
    let sign = ((b >> 8) & 0x80) as u8;
    let mag = ((b & 0x7fff) >> 7) as u8;
    sign | mag.min(0x7e)
}
