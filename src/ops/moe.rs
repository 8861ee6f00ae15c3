//! Fused mixture of experts: routing, token permutation, grouped GEMM and weighted un-permute
//! in one op (kernels/moe.cu on CUDA; the CPU forward is its reference).
//!
//! Numerics, on both sides: each gate/up/down output element is an f32 sum over its reduction
//! dimension in index order; `h = act(gate + b, up + b)` and each expert's output are rounded
//! once to the element type; a token's output is `sum_s w_s * y_s` in slot order (best expert
//! first) in f32, rounded once. So a token's output depends on its own row only: alone or in
//! any batch it is the same (bit-identical on the CPU reference, by construction on CUDA).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::{contiguous, Elem};
use crate::models::config::{Activation, Scoring};

/// Rows of one expert per tile of the grouped GEMM (kernels/moe.cu `MOE_BM`).
pub const TILE_ROWS: usize = 32;

/// How a token picks its experts: softmax (Mixtral, Qwen3-MoE, gpt-oss) or DeepSeek-V3's
/// sigmoid scores with a correction bias and group limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub top_k: usize,
    pub norm_topk_prob: bool,
    pub scoring: Scoring,
    /// `(n_group, topk_group)`, see `MoeConfig::groups`.
    pub groups: Option<(usize, usize)>,
    /// See `MoeConfig::group_by_best`.
    pub group_by_best: bool,
    /// Added to the scores for the choice only (DeepSeek-V3's `e_score_correction_bias`).
    pub correction: Option<Vec<f32>>,
    pub routed_scaling_factor: f32,
}

/// Indices of the `k` largest of `v`, best first; ties to the lower index (torch.topk's
/// behaviour in practice).
fn top_indices(v: &[f32], k: usize, order: &mut Vec<usize>) {
    order.clear();
    order.extend(0..v.len());
    order.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    order.truncate(k);
}

impl Routing {
    /// One token's chosen experts and their weights, best first.
    pub fn route(&self, logits: &[f32], order: &mut Vec<usize>) -> Vec<(usize, f32)> {
        let n = logits.len();
        let scores: Vec<f32> = match self.scoring {
            Scoring::Softmax => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = logits.iter().map(|x| (x - max).exp()).collect();
                let sum: f32 = e.iter().sum();
                e.into_iter().map(|x| x / sum).collect()
            }
            Scoring::Sigmoid => logits.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect(),
        };
        let mut choice: Vec<f32> = match &self.correction {
            Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
            None => scores.clone(),
        };
        if let Some((n_group, topk_group)) = self.groups {
            let per = n / n_group;
            let group_score: Vec<f32> = choice
                .chunks(per)
                .map(|g| {
                    let k = if self.group_by_best { 1 } else { 2.min(per) };
                    top_indices(g, k, order);
                    order.iter().map(|&i| g[i]).sum()
                })
                .collect();
            top_indices(&group_score, topk_group, order);
            let keep: Vec<bool> = (0..n_group).map(|g| order.contains(&g)).collect();
            for (i, c) in choice.iter_mut().enumerate() {
                if !keep[i / per] {
                    *c = f32::NEG_INFINITY;
                }
            }
        }
        top_indices(&choice, self.top_k, order);
        let sum: f32 = order.iter().map(|&e| scores[e]).sum();
        order
            .iter()
            .map(|&e| {
                let w = if self.norm_topk_prob {
                    scores[e] / (sum + 1e-20)
                } else {
                    scores[e]
                };
                (e, w * self.routed_scaling_factor)
            })
            .collect()
    }

    /// Every token's choice for `logits: [tokens, experts]`.
    pub fn route_all(&self, logits: &Tensor) -> Result<Vec<Vec<(usize, f32)>>> {
        let logits = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut order = Vec::new();
        Ok(logits.iter().map(|l| self.route(l, &mut order)).collect())
    }
}

/// Every expert of a layer stacked for the fused op: `gate_up: [experts, 2 inter, hidden]`
/// (gate rows, then up rows), `down: [experts, hidden, inter]`, optional f32 biases.
pub struct FusedExperts {
    pub gate_up: Tensor,
    pub gate_up_bias: Option<Tensor>,
    pub down: Tensor,
    pub down_bias: Option<Tensor>,
    pub activation: Activation,
    /// The routing correction bias on the op's device (f32 `[experts]`).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    correction: Option<Tensor>,
}

impl FusedExperts {
    pub fn new(
        gate_up: Tensor,
        gate_up_bias: Option<Tensor>,
        down: Tensor,
        down_bias: Option<Tensor>,
        activation: Activation,
        routing: &Routing,
    ) -> Result<Self> {
        let (e, two_inter, hidden) = gate_up.dims3()?;
        let inter = two_inter / 2;
        if down.dims3()? != (e, hidden, inter) || two_inter % 2 != 0 {
            candle_core::bail!(
                "fused moe: gate_up {:?} and down {:?} do not fit",
                gate_up.shape(),
                down.shape()
            );
        }
        if let Some((n_group, topk_group)) = routing.groups {
            if n_group == 0 || n_group > 64 || e % n_group != 0 || topk_group > n_group {
                candle_core::bail!(
                    "fused moe: {n_group} groups ({topk_group} kept) of {e} experts"
                );
            }
        }
        if routing.top_k == 0 || routing.top_k > e {
            candle_core::bail!("fused moe: top_k {} of {e} experts", routing.top_k);
        }
        let device = gate_up.device().clone();
        let f32_on = |t: Option<Tensor>| -> Result<Option<Tensor>> {
            t.map(|t| t.to_dtype(DType::F32)?.to_device(&device)?.contiguous())
                .transpose()
        };
        let correction = match &routing.correction {
            Some(c) => Some(Tensor::from_slice(c, c.len(), &device)?),
            None => None,
        };
        Ok(Self {
            gate_up: gate_up.contiguous()?,
            gate_up_bias: f32_on(gate_up_bias)?,
            down: down.contiguous()?,
            down_bias: f32_on(down_bias)?,
            activation,
            correction,
        })
    }

    pub fn num_experts(&self) -> usize {
        self.gate_up.dims()[0]
    }
}

/// The mixture's output for `x: [tokens, hidden]` with router logits `[tokens, experts]`
/// (shared experts are not included).
pub fn fused_moe(
    x: &Tensor,
    router_logits: &Tensor,
    experts: &FusedExperts,
    routing: &Routing,
) -> Result<Tensor> {
    let logits = router_logits.to_dtype(DType::F32)?.contiguous()?;
    let op = FusedMoe {
        logits: &logits,
        experts,
        routing,
    };
    x.contiguous()?
        .apply_op3_no_bwd(&experts.gate_up, &experts.down, &op)
}

struct FusedMoe<'a> {
    logits: &'a Tensor,
    experts: &'a FusedExperts,
    routing: &'a Routing,
}

/// Shapes: tokens, hidden, inter, experts.
fn dims(lx: &Layout, lgu: &Layout, ld: &Layout) -> Result<(usize, usize, usize, usize)> {
    let (tokens, hidden) = lx.shape().dims2()?;
    let (e, two_inter, h2) = lgu.shape().dims3()?;
    let inter = two_inter / 2;
    if h2 != hidden || ld.shape().dims3()? != (e, hidden, inter) {
        candle_core::bail!(
            "fused moe: x {:?}, gate_up {:?}, down {:?}",
            lx.shape(),
            lgu.shape(),
            ld.shape()
        );
    }
    Ok((tokens, hidden, inter, e))
}

/// `(g, u) -> h`, in f32.
fn activate(g: f32, u: f32, act: Activation) -> f32 {
    match act {
        Activation::Silu => g / (1.0 + (-g).exp()) * u,
        Activation::GeluTanh => {
            let inner = 0.797_884_6_f32 * (g + 0.044715 * g * g * g);
            0.5 * g * (1.0 + inner.tanh()) * u
        }
        Activation::ClampedSwiglu { alpha, limit } => {
            let g = g.min(limit);
            let u = u.clamp(-limit, limit);
            (u + 1.0) * (g / (1.0 + (-g * alpha).exp()))
        }
    }
}

/// Sequential f32 dot product (the kernels' reduction order).
fn dot<T: Elem>(a: &[f32], w: &[T]) -> f32 {
    let mut acc = 0f32;
    for (&a, &w) in a.iter().zip(w) {
        acc += a * w.to_f32();
    }
    acc
}

struct Reference<'a> {
    hidden: usize,
    inter: usize,
    choice: &'a [Vec<(usize, f32)>],
    gate_up_bias: Option<&'a [f32]>,
    down_bias: Option<&'a [f32]>,
    activation: Activation,
}

impl Reference<'_> {
    fn run<T: Elem>(&self, x: &[T], gu: &[T], down: &[T]) -> Vec<T> {
        let (hd, it) = (self.hidden, self.inter);
        let mut out = Vec::with_capacity(self.choice.len() * hd);
        let (mut h, mut acc) = (vec![0f32; it], vec![0f32; hd]);
        for (t, choice) in self.choice.iter().enumerate() {
            let xt: Vec<f32> = x[t * hd..(t + 1) * hd].iter().map(|v| v.to_f32()).collect();
            acc.fill(0.0);
            for &(e, w) in choice {
                let we = &gu[e * 2 * it * hd..(e + 1) * 2 * it * hd];
                for (j, hj) in h.iter_mut().enumerate() {
                    let mut g = dot(&xt, &we[j * hd..(j + 1) * hd]);
                    let mut u = dot(&xt, &we[(it + j) * hd..(it + j + 1) * hd]);
                    if let Some(b) = self.gate_up_bias {
                        g += b[e * 2 * it + j];
                        u += b[e * 2 * it + it + j];
                    }
                    *hj = T::round(activate(g, u, self.activation));
                }
                let wd = &down[e * hd * it..(e + 1) * hd * it];
                for (c, a) in acc.iter_mut().enumerate() {
                    let mut y = dot(&h, &wd[c * it..(c + 1) * it]);
                    if let Some(b) = self.down_bias {
                        y += b[e * hd + c];
                    }
                    *a += w * T::round(y);
                }
            }
            out.extend(acc.iter().map(|&a| T::from_f32(a)));
        }
        out
    }
}

fn flat_f32(t: &Option<Tensor>) -> Result<Option<Vec<f32>>> {
    t.as_ref()
        .map(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
        .transpose()
}

impl CustomOp3 for FusedMoe<'_> {
    fn name(&self) -> &'static str {
        "fused-moe"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sgu: &CpuStorage,
        lgu: &Layout,
        sd: &CpuStorage,
        ld: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (tokens, hidden, inter, _) = dims(lx, lgu, ld)?;
        let choice = self.routing.route_all(self.logits)?;
        if choice.len() != tokens {
            candle_core::bail!("fused moe: {} router rows, {tokens} tokens", choice.len());
        }
        let (gub, db) = (
            flat_f32(&self.experts.gate_up_bias)?,
            flat_f32(&self.experts.down_bias)?,
        );
        let r = Reference {
            hidden,
            inter,
            choice: &choice,
            gate_up_bias: gub.as_deref(),
            down_bias: db.as_deref(),
            activation: self.experts.activation,
        };
        let n = self.name();
        let out = match (sx, sgu, sd) {
            (CpuStorage::F32(x), CpuStorage::F32(gu), CpuStorage::F32(d)) => {
                CpuStorage::F32(r.run(
                    contiguous(x, lx, n)?,
                    contiguous(gu, lgu, n)?,
                    contiguous(d, ld, n)?,
                ))
            }
            (CpuStorage::BF16(x), CpuStorage::BF16(gu), CpuStorage::BF16(d)) => {
                CpuStorage::BF16(r.run(
                    contiguous(x, lx, n)?,
                    contiguous(gu, lgu, n)?,
                    contiguous(d, ld, n)?,
                ))
            }
            (CpuStorage::F16(x), CpuStorage::F16(gu), CpuStorage::F16(d)) => {
                CpuStorage::F16(r.run(
                    contiguous(x, lx, n)?,
                    contiguous(gu, lgu, n)?,
                    contiguous(d, ld, n)?,
                ))
            }
            _ => candle_core::bail!("fused moe: unsupported dtypes {:?}", sx.dtype()),
        };
        Ok((out, Shape::from((tokens, hidden))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sx: &candle_core::CudaStorage,
        lx: &Layout,
        sgu: &candle_core::CudaStorage,
        lgu: &Layout,
        sd: &candle_core::CudaStorage,
        ld: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map3;

        let (tokens, hidden, _, _) = dims(lx, lgu, ld)?;
        let dev = &sx.device;
        let slice = cuda::Launch(self).map(&sx.slice, lx, &sgu.slice, lgu, &sd.slice, ld, dev)?;
        Ok((
            candle_core::CudaStorage {
                slice,
                device: dev.clone(),
            },
            Shape::from((tokens, hidden)),
        ))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice, Map3, WrapErr};
    use candle_core::{Layout, Result, Storage, Tensor, WithDType};

    use super::super::cuda::{alloc_out, function, grid, ptx, view};
    use super::{dims, Activation, FusedMoe, Scoring, TILE_ROWS};

    pub(super) struct Launch<'a, 'b>(pub &'b FusedMoe<'a>);

    /// Runs `f` with the f32 device data of each optional tensor (a null pointer for None).
    fn with_f32s<R>(
        ts: &[Option<&Tensor>],
        f: impl FnOnce(&[Option<CudaView<'_, f32>>]) -> Result<R>,
    ) -> Result<R> {
        let guards: Vec<_> = ts
            .iter()
            .map(|t| t.map(|t| t.storage_and_layout()))
            .collect();
        let mut views = Vec::with_capacity(ts.len());
        for g in &guards {
            views.push(match g {
                None => None,
                Some((s, l)) => {
                    let Storage::Cuda(s) = &**s else {
                        candle_core::bail!("fused moe: a side tensor is not on the GPU");
                    };
                    let CudaStorageSlice::F32(d) = &s.slice else {
                        candle_core::bail!("fused moe: a side tensor is not f32");
                    };
                    Some(view(d, l, "fused moe")?)
                }
            });
        }
        f(&views)
    }

    impl Map3 for Launch<'_, '_> {
        fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
            &self,
            x: &CudaSlice<T>,
            lx: &Layout,
            gu: &CudaSlice<T>,
            lgu: &Layout,
            down: &CudaSlice<T>,
            ld: &Layout,
            dev: &CudaDevice,
        ) -> Result<CudaSlice<T>> {
            let op = self.0;
            let (tokens, hidden, inter, experts) = dims(lx, lgu, ld)?;
            let r = op.routing;
            let top_k = r.top_k;
            let n = tokens * top_k;
            let out = alloc_out::<T>(dev, tokens * hidden)?;
            if tokens == 0 {
                return Ok(out);
            }
            let (x, gu, down) = (
                view(x, lx, "fused moe")?,
                view(gu, lgu, "fused moe")?,
                view(down, ld, "fused moe")?,
            );
            let ex = op.experts;
            let module = "flare_moe";
            let stream = dev.cuda_stream();
            let null: u64 = 0;
            let sides = [
                Some(op.logits),
                ex.correction.as_ref(),
                ex.gate_up_bias.as_ref(),
                ex.down_bias.as_ref(),
            ];
            with_f32s(&sides, |v| {
                let logits = v[0].as_ref().expect("logits");
                // 1. Routing: each token's experts and weights.
                let ids = alloc_out::<u32>(dev, n)?;
                let weights = alloc_out::<f32>(dev, n)?;
                let route = dev
                    .get_or_load_custom_func("moe_route", module, ptx::MOE)?
                    .into_cuda_function();
                let (groups, keep) = r.groups.map_or((0, 0), |(g, k)| (g as i32, k as i32));
                let args = (
                    tokens as i32,
                    experts as i32,
                    top_k as i32,
                    (r.scoring == Scoring::Sigmoid) as i32,
                    groups,
                    keep,
                    r.group_by_best as i32,
                    r.norm_topk_prob as i32,
                    r.routed_scaling_factor,
                );
                let mut b = stream.launch_builder(&route);
                b.arg(logits);
                match &v[1] {
                    Some(c) => b.arg(c),
                    None => b.arg(&null),
                };
                b.arg(&ids).arg(&weights);
                b.arg(&args.0)
                    .arg(&args.1)
                    .arg(&args.2)
                    .arg(&args.3)
                    .arg(&args.4);
                b.arg(&args.5).arg(&args.6).arg(&args.7).arg(&args.8);
                // SAFETY: argument types match moe_route in kernels/moe.cu.
                unsafe { b.launch(grid(tokens.div_ceil(64), 64)) }.w()?;

                // 2. Permutation: rows grouped by expert, cut into tiles.
                let max_tiles = n.div_ceil(TILE_ROWS) + experts.min(n);
                let sorted = alloc_out::<u32>(dev, n)?;
                let pos = alloc_out::<u32>(dev, n)?;
                let offsets = alloc_out::<u32>(dev, experts + 1)?;
                let tiles = alloc_out::<u32>(dev, 2 * max_tiles)?;
                let align = dev
                    .get_or_load_custom_func("moe_align", module, ptx::MOE)?
                    .into_cuda_function();
                let (n32, e32, mt32) = (n as i32, experts as i32, max_tiles as i32);
                let mut b = stream.launch_builder(&align);
                b.arg(&ids).arg(&n32).arg(&e32).arg(&sorted).arg(&pos);
                b.arg(&offsets).arg(&tiles).arg(&mt32);
                // SAFETY: argument types match moe_align in kernels/moe.cu.
                unsafe { b.launch(grid(1, 1024)) }.w()?;

                // 3. Grouped GEMMs.
                let (act, alpha, limit) = match ex.activation {
                    Activation::Silu => (0i32, 0f32, 0f32),
                    Activation::GeluTanh => (1, 0.0, 0.0),
                    Activation::ClampedSwiglu { alpha, limit } => (2, alpha, limit),
                };
                let (h32, i32_, k32) = (hidden as i32, inter as i32, top_k as i32);
                let h = alloc_out::<T>(dev, n * inter)?;
                let f = function::<T>(dev, module, ptx::MOE, "moe_gate_up")?;
                let mut b = stream.launch_builder(&f);
                b.arg(&x).arg(&gu);
                match &v[2] {
                    Some(bias) => b.arg(bias),
                    None => b.arg(&null),
                };
                b.arg(&sorted).arg(&offsets).arg(&tiles).arg(&h);
                b.arg(&h32)
                    .arg(&i32_)
                    .arg(&k32)
                    .arg(&act)
                    .arg(&alpha)
                    .arg(&limit);
                let cfg = |cols: usize, per: usize| {
                    candle_core::cuda_backend::cudarc::driver::LaunchConfig {
                        grid_dim: (max_tiles as u32, cols.div_ceil(per) as u32, 1),
                        block_dim: (256, 1, 1),
                        shared_mem_bytes: 0,
                    }
                };
                // SAFETY: argument types match moe_gate_up_* in kernels/moe.cu.
                unsafe { b.launch(cfg(inter, 32)) }.w()?;

                let y = alloc_out::<T>(dev, n * hidden)?;
                let f = function::<T>(dev, module, ptx::MOE, "moe_down")?;
                let mut b = stream.launch_builder(&f);
                b.arg(&h).arg(&down);
                match &v[3] {
                    Some(bias) => b.arg(bias),
                    None => b.arg(&null),
                };
                b.arg(&offsets).arg(&tiles).arg(&y).arg(&h32).arg(&i32_);
                // SAFETY: argument types match moe_down_* in kernels/moe.cu.
                unsafe { b.launch(cfg(hidden, 64)) }.w()?;

                // 4. Weighted un-permute.
                let f = function::<T>(dev, module, ptx::MOE, "moe_combine")?;
                let t32 = tokens as i32;
                let mut b = stream.launch_builder(&f);
                b.arg(&y).arg(&weights).arg(&pos).arg(&out);
                b.arg(&t32).arg(&h32).arg(&k32);
                let blocks = (tokens * hidden).div_ceil(256).clamp(1, 65_536);
                // SAFETY: argument types match moe_combine_* in kernels/moe.cu.
                unsafe { b.launch(grid(blocks, 256)) }.w()?;
                Ok(())
            })?;
            Ok(out)
        }
    }
}
