//! The CPU kernel's SIMD path (f32, f16, bf16 and FP8 caches): query rows in tiles, context
//! in chunks.
//!
//! A work item is a tile of up to [`ROW_TILE`] consecutive query rows of one sequence and one
//! KV head, so each K/V chunk is read once for all the tile's query heads (prefill), or one
//! chunk of such a tile (a decode or short chunk over a long context: the chunks of one row
//! spread over the threads instead of leaving them idle behind a few KV heads). Chunk results
//! are folded in chunk order with the same arithmetic either way, and a row's results do not
//! depend on the rows tiled with it (see `cpu::attention::chunk_partials`), so every output is
//! the same bits alone or in any batch, at any thread count.

use super::{for_rows, Element, PagedAttention};
use crate::cpu::attention::{self as cpu_attn, CacheLane, Partials, CHUNK};
use crate::kv::KvLayout;

/// Query rows that share one pass over each K/V chunk.
const ROW_TILE: usize = 8;

/// Tile of rows `row0..row0 + rows` (batch rows) of sequence `seq`, KV head `kvh`; all of its
/// chunks folded (`chunk: None`) or one chunk's partials (`Some(c)`).
struct Item {
    seq: usize,
    row0: usize,
    rows: usize,
    kvh: usize,
    chunk: Option<usize>,
}

/// Per-thread buffers.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    ranges: Vec<(usize, usize)>,
    offs: Vec<usize>,
    scores: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    o: Vec<f32>,
    sm: Vec<f32>,
    sl: Vec<f32>,
    acc: Vec<f32>,
}

/// Shapes and scales every item needs.
#[derive(Clone, Copy)]
struct Dims {
    heads: usize,
    layout: KvLayout,
    d: usize,
    q_scale: f32,
}

impl Dims {
    fn group(&self) -> usize {
        self.heads / self.layout.kv_heads()
    }
}

impl PagedAttention {
    /// First attended position of a query at `pos`.
    fn first_attended(&self, pos: usize) -> usize {
        match self.sliding_window {
            Some(w) if pos + 1 > w => pos + 1 - w,
            _ => 0,
        }
    }

    /// Position of batch row `row` of sequence `seq`.
    fn position(&self, seq: usize, row: usize) -> usize {
        let s = &self.meta.seqs[seq];
        s.context_len - s.query_len + (row - s.query_start)
    }

    /// The work items of a step, in output order.
    fn plan(&self, kv_heads: usize) -> Vec<Item> {
        let mut items = Vec::new();
        for (seq, s) in self.meta.seqs.iter().enumerate() {
            let end = s.query_start + s.query_len;
            // Few rows: one item per chunk, so a long context keeps every thread busy.
            let split = s.query_len <= ROW_TILE;
            for row0 in (s.query_start..end).step_by(ROW_TILE) {
                let rows = ROW_TILE.min(end - row0);
                let first = self.first_attended(self.position(seq, row0)) / CHUNK;
                let last = self.position(seq, row0 + rows - 1) / CHUNK;
                for kvh in 0..kv_heads {
                    if split && last > first {
                        items.extend((first..=last).map(|c| Item {
                            seq,
                            row0,
                            rows,
                            kvh,
                            chunk: Some(c),
                        }));
                    } else {
                        items.push(Item {
                            seq,
                            row0,
                            rows,
                            kvh,
                            chunk: None,
                        });
                    }
                }
            }
        }
        items
    }

    /// SIMD attention over f32, f16, bf16 or FP8 caches; `q_scale` scales the queries (the
    /// softmax scale, times an FP8 cache's K scale) and `v_scale` the outputs (an FP8 cache's
    /// V scale, else 1).
    pub(super) fn run_tiled<T: Element, C: CacheLane>(
        &self,
        q: &[T],
        (num_tokens, heads, d): (usize, usize, usize),
        (k, v): (&[C], &[C]),
        layout: KvLayout,
        (q_scale, v_scale): (f32, f32),
    ) -> Vec<T> {
        use rayon::prelude::*;
        let kv_heads = layout.kv_heads();
        let dims = Dims {
            heads,
            layout,
            d,
            q_scale,
        };
        let items = self.plan(kv_heads);
        let work = |sc: &mut Scratch, it: &Item| self.item(it, q, (k, v), dims, sc);
        let max_ctx = self.meta.seqs.iter().map(|s| s.context_len).max();
        // Small steps on the calling thread (no fork/join cost); same arithmetic either way.
        let results: Vec<Vec<f32>> = if num_tokens * heads * max_ctx.unwrap_or(0) < 1 << 12 {
            let mut sc = Scratch::default();
            items.iter().map(|it| work(&mut sc, it)).collect()
        } else {
            items.par_iter().map_init(Scratch::default, work).collect()
        };
        let group = dims.group();
        let mut out = vec![T::from_f32(0.0); num_tokens * heads * d];
        let mut write = |it: &Item, rows: &[f32]| {
            for (r, x) in rows.chunks_exact(group * d).enumerate() {
                let o = ((it.row0 + r) * heads + it.kvh * group) * d;
                for (y, &x) in out[o..o + group * d].iter_mut().zip(x) {
                    *y = T::from_f32(x * v_scale);
                }
            }
        };
        let mut i = 0;
        let mut sc = Scratch::default();
        while i < items.len() {
            let it = &items[i];
            if it.chunk.is_none() {
                write(it, &results[i]);
                i += 1;
                continue;
            }
            // The chunks of one tile are consecutive items: fold them in chunk order.
            let nq = it.rows * group;
            sc.start(nq, d);
            let mut j = i;
            while j < items.len() && items[j].chunk.is_some() && same_tile(&items[j], it) {
                let r = &results[j];
                let (m, rest) = r.split_at(nq);
                let (l, o) = rest.split_at(nq);
                sc.fold(m, l, o, d);
                j += 1;
            }
            let rows = sc.finish(self.sinks_of(it.kvh, group), d);
            write(it, &rows);
            i = j;
        }
        out
    }

    fn sinks_of(&self, kvh: usize, group: usize) -> Option<&[f32]> {
        self.sinks
            .as_deref()
            .map(|s| &s[kvh * group..(kvh + 1) * group])
    }

    /// One item: its rows' outputs `[rows, group, d]` (all chunks), or one chunk's partials
    /// `m [nq] ++ l [nq] ++ o [nq, d]`.
    fn item<T: Element, C: CacheLane>(
        &self,
        it: &Item,
        q: &[T],
        (k, v): (&[C], &[C]),
        dims: Dims,
        sc: &mut Scratch,
    ) -> Vec<f32> {
        let (heads, d, group) = (dims.heads, dims.d, dims.group());
        let s = &self.meta.seqs[it.seq];
        let nq = it.rows * group;
        sc.q.clear();
        for r in 0..it.rows {
            let qo = ((it.row0 + r) * heads + it.kvh * group) * d;
            sc.q.extend(
                q[qo..qo + group * d]
                    .iter()
                    .map(|y| y.to_f32() * dims.q_scale),
            );
        }
        let pos0 = self.position(it.seq, it.row0);
        let (lo, hi) = (self.first_attended(pos0), pos0 + it.rows - 1);
        let chunks = match it.chunk {
            Some(c) => c..=c,
            None => lo / CHUNK..=hi / CHUNK,
        };
        sc.start(nq, d);
        for c in chunks {
            let (c0, c1) = (c * CHUNK, (c + 1) * CHUNK - 1);
            let (p0, p1) = (lo.max(c0), hi.min(c1));
            let span0 = p0 & !7;
            let np = ((p1 + 8) & !7) - span0;
            // Cache offsets of positions span0.., padding with a valid row.
            sc.offs.clear();
            sc.offs.resize(p0 - span0, 0);
            let bs = self.meta.block_size;
            for_rows(
                &s.block_table,
                dims.layout,
                bs,
                it.kvh,
                (p0, p1),
                |_, row| sc.offs.push(row * d),
            );
            let pad = sc.offs[p0 - span0];
            sc.offs[..p0 - span0].fill(pad);
            sc.offs.resize(np, pad);
            sc.ranges.clear();
            for r in 0..it.rows {
                let pos = pos0 + r;
                let range = (self.first_attended(pos).max(c0), pos.min(c1));
                sc.ranges.extend(std::iter::repeat_n(range, group));
            }
            sc.scores.resize(nq * np, 0.0);
            sc.m.resize(nq, 0.0);
            sc.l.resize(nq, 0.0);
            sc.o.resize(nq * d, 0.0);
            cpu_attn::chunk_partials(
                &sc.q,
                k,
                v,
                &sc.offs,
                span0,
                &sc.ranges,
                d,
                &mut sc.scores,
                Partials {
                    m: &mut sc.m,
                    l: &mut sc.l,
                    o: &mut sc.o,
                },
            );
            if it.chunk.is_some() {
                let mut r = Vec::with_capacity(nq * (d + 2));
                r.extend_from_slice(&sc.m);
                r.extend_from_slice(&sc.l);
                r.extend_from_slice(&sc.o);
                return r;
            }
            let (m, l, o) = (
                std::mem::take(&mut sc.m),
                std::mem::take(&mut sc.l),
                std::mem::take(&mut sc.o),
            );
            sc.fold(&m, &l, &o, d);
            (sc.m, sc.l, sc.o) = (m, l, o);
        }
        sc.finish(self.sinks_of(it.kvh, group), d)
    }
}

fn same_tile(a: &Item, b: &Item) -> bool {
    (a.seq, a.row0, a.kvh) == (b.seq, b.row0, b.kvh)
}

impl Scratch {
    /// An empty folded state for `nq` query vectors.
    fn start(&mut self, nq: usize, d: usize) {
        self.sm.clear();
        self.sm.resize(nq, f32::NEG_INFINITY);
        self.sl.clear();
        self.sl.resize(nq, 0.0);
        self.acc.clear();
        self.acc.resize(nq * d, 0.0);
    }

    /// Folds one chunk's partials into the state (the first non-empty chunk is copied).
    fn fold(&mut self, m: &[f32], l: &[f32], o: &[f32], d: usize) {
        for i in 0..m.len() {
            if l[i] == 0.0 {
                continue;
            }
            let (acc, oi) = (&mut self.acc[i * d..(i + 1) * d], &o[i * d..(i + 1) * d]);
            if self.sl[i] == 0.0 {
                (self.sm[i], self.sl[i]) = (m[i], l[i]);
                acc.copy_from_slice(oi);
            } else {
                cpu_attn::fold(&mut self.sm[i], &mut self.sl[i], acc, m[i], l[i], oi);
            }
        }
    }

    /// The outputs `[nq, d]` of the folded state; `sinks` per query head of the group.
    fn finish(&self, sinks: Option<&[f32]>, d: usize) -> Vec<f32> {
        let nq = self.sm.len();
        let mut out = vec![0f32; nq * d];
        for i in 0..nq {
            let sink = sinks.map(|s| s[i % s.len()]);
            cpu_attn::finish(
                self.sm[i],
                self.sl[i],
                &self.acc[i * d..(i + 1) * d],
                sink,
                &mut out[i * d..(i + 1) * d],
            );
        }
        out
    }
}
