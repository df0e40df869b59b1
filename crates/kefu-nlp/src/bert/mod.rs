//! A lean CPU forward pass of a BERT encoder for short texts.
//!
//! Customer messages are short (10-40 tokens), and a general GEMM spends most of its time
//! re-packing the weight matrices for such thin inputs. Here every linear layer is a
//! register-blocked product. Where the CPU has AVX-512 VNNI, or AVX2 and FMA, weights are
//! int8 and each input row is quantized on the fly ([`int8`]; the same bits on either):
//! with VNNI four times the multiply-adds per instruction. Elsewhere, or for a layer
//! shape the int8 tiling does not take, the weights are kept in half precision in their
//! stored (out x in) layout (converted to f32 in registers, F16C), which halves the
//! memory traffic of f32. A batch of sequences is packed into one matrix without padding:
//! the linear layers pass over the tokens of every sequence at once (each weight tile is
//! read once per batch), attention stays within each sequence. Weights come from the
//! safetensors file through candle; the result matches candle-transformers' `BertModel`
//! in f32 (cosine > 0.9999 in half precision, > 0.99 in int8; checked in the embedding
//! tests).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_transformers::models::bert::{Config, HiddenAct};

mod int8;

use int8::Int8Weights;

struct Dense {
    weights: Weights,
    b: Vec<f32>,
    n_in: usize,
    n_out: usize,
}

enum Weights {
    /// Quantized, where the CPU has an integer kernel (AVX-512 VNNI, or AVX2 and FMA).
    Int8(Int8Weights),
    /// (out x in), row-major, as IEEE half-precision bits: half the memory traffic of f32.
    Half(Vec<u16>),
}

impl Dense {
    fn new(w: &[f32], b: Vec<f32>, n_in: usize, n_out: usize) -> Self {
        let weights = if Int8Weights::usable(n_in, n_out) {
            Weights::Int8(Int8Weights::new(w, n_in, n_out))
        } else {
            Weights::Half(to_f16(w))
        };
        Self {
            weights,
            b,
            n_in,
            n_out,
        }
    }
}

struct Norm {
    g: Vec<f32>,
    b: Vec<f32>,
}

struct Layer {
    qkv: Dense,
    attn_out: Dense,
    ln1: Norm,
    inter: Dense,
    out: Dense,
    ln2: Norm,
}

pub(crate) struct Bert {
    hidden: usize,
    heads: usize,
    eps: f32,
    max_positions: usize,
    word: Vec<f32>,
    vocab: usize,
    position: Vec<f32>,
    token_type0: Vec<f32>,
    emb_ln: Norm,
    layers: Vec<Layer>,
}

impl Bert {
    pub fn load(weights: &Path, config: &Config) -> Result<Self> {
        let tensors = candle_core::safetensors::load(weights, &Device::Cpu)
            .with_context(|| format!("reading {}", weights.display()))?;
        Self::from_tensors(&tensors, config, &weights.display().to_string())
    }

    /// The model from the bytes of a safetensors file (a model compiled into the binary).
    pub fn from_safetensors(bytes: &[u8], config: &Config, source: &str) -> Result<Self> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .with_context(|| format!("reading {source}"))?;
        Self::from_tensors(&tensors, config, source)
    }

    fn from_tensors(
        tensors: &std::collections::HashMap<String, Tensor>,
        config: &Config,
        source: &str,
    ) -> Result<Self> {
        if !matches!(config.hidden_act, HiddenAct::Gelu) {
            bail!(
                "unsupported activation {:?} (expected gelu)",
                config.hidden_act
            );
        }
        let prefix = if tensors.contains_key("embeddings.word_embeddings.weight") {
            ""
        } else {
            "bert."
        };
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t: &Tensor = tensors
                .get(&format!("{prefix}{name}"))
                .ok_or_else(|| anyhow!("tensor {prefix}{name} missing in {source}"))?;
            if t.dims() != shape {
                bail!("tensor {name} has shape {:?}, expected {shape:?}", t.dims());
            }
            Ok(t.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let h = config.hidden_size;
        let i = config.intermediate_size;
        let params = |name: &str, n_in: usize, n_out: usize| -> Result<(Vec<f32>, Vec<f32>)> {
            Ok((
                get(&format!("{name}.weight"), &[n_out, n_in])?,
                get(&format!("{name}.bias"), &[n_out])?,
            ))
        };
        let dense = |name: &str, n_in: usize, n_out: usize| -> Result<Dense> {
            let (w, b) = params(name, n_in, n_out)?;
            Ok(Dense::new(&w, b, n_in, n_out))
        };
        let norm = |name: &str| -> Result<Norm> {
            Ok(Norm {
                g: get(&format!("{name}.weight"), &[h])?,
                b: get(&format!("{name}.bias"), &[h])?,
            })
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let (q, k, v) = (
                params(&format!("{p}.attention.self.query"), h, h)?,
                params(&format!("{p}.attention.self.key"), h, h)?,
                params(&format!("{p}.attention.self.value"), h, h)?,
            );
            let qkv = Dense::new(
                &[q.0, k.0, v.0].concat(),
                [q.1, k.1, v.1].concat(),
                h,
                3 * h,
            );
            layers.push(Layer {
                qkv,
                attn_out: dense(&format!("{p}.attention.output.dense"), h, h)?,
                ln1: norm(&format!("{p}.attention.output.LayerNorm"))?,
                inter: dense(&format!("{p}.intermediate.dense"), h, i)?,
                out: dense(&format!("{p}.output.dense"), i, h)?,
                ln2: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        if !h.is_multiple_of(config.num_attention_heads) {
            bail!(
                "hidden size {h} is not divisible by {} heads",
                config.num_attention_heads
            );
        }
        Ok(Self {
            hidden: h,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps as f32,
            max_positions: config.max_position_embeddings,
            word: get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            vocab: config.vocab_size,
            position: get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            token_type0: get(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, h],
            )?[..h]
                .to_vec(),
            emb_ln: norm("embeddings.LayerNorm")?,
            layers,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// How the linear layers' weights are held: "int8" or "f16".
    pub fn precision(&self) -> &'static str {
        match self.layers.first().map(|l| &l.qkv.weights) {
            Some(Weights::Int8(_)) => "int8",
            _ => "f16",
        }
    }

    /// Encodes sequences of token ids packed together; returns the last hidden states,
    /// sequence after sequence ((sum of lengths) x hidden), each sequence cut at the
    /// model's longest position. With `split`, large matrix products are shared out over
    /// the rayon pool (for a lone message on an otherwise idle machine).
    pub fn forward(&self, seqs: &[&[u32]], split: bool) -> Vec<f32> {
        // Attention, GELU and layer norms are compiled a second and a third time for wider
        // vectors (auto-vectorised); the CPU picks one. Same arithmetic in every version.
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked just above).
                return unsafe { self.forward_avx512(seqs, split) };
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                return unsafe { self.forward_avx2(seqs, split) };
            }
        }
        self.forward_portable(seqs, split)
    }

    /// The number of hidden-state rows [`forward`](Self::forward) gives a sequence.
    pub fn rows_of(&self, seq: &[u32]) -> usize {
        seq.len().min(self.max_positions)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn forward_avx512(&self, seqs: &[&[u32]], split: bool) -> Vec<f32> {
        self.forward_portable(seqs, split)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_avx2(&self, seqs: &[&[u32]], split: bool) -> Vec<f32> {
        self.forward_portable(seqs, split)
    }

    #[inline(always)]
    fn forward_portable(&self, seqs: &[&[u32]], split: bool) -> Vec<f32> {
        let h = self.hidden;
        // (first row, rows) of each sequence in the packed matrix
        let mut spans = Vec::with_capacity(seqs.len());
        let mut n = 0;
        for seq in seqs {
            let rows = self.rows_of(seq);
            spans.push((n, rows));
            n += rows;
        }
        let mut x = vec![0f32; n * h];
        for (seq, &(start, rows)) in seqs.iter().zip(&spans) {
            for (t, &id) in seq.iter().take(rows).enumerate() {
                let id = (id as usize).min(self.vocab - 1);
                let row = &mut x[(start + t) * h..(start + t + 1) * h];
                let (w, p) = (
                    &self.word[id * h..(id + 1) * h],
                    &self.position[t * h..(t + 1) * h],
                );
                for j in 0..h {
                    row[j] = w[j] + p[j] + self.token_type0[j];
                }
            }
        }
        layer_norm(&mut x, &self.emb_ln, self.eps);
        let mut qkv = vec![0f32; n * 3 * h];
        let mut ctx = vec![0f32; n * h];
        let mut tmp = vec![0f32; n * h];
        let mut inter = vec![0f32; n * self.layers.first().map_or(0, |l| l.inter.n_out)];
        let longest = spans.iter().map(|s| s.1).max().unwrap_or(0);
        let dh = h / self.heads;
        let width = key_blocks_width(longest);
        let mut scores = vec![0f32; QUERY_GROUP * width];
        let mut keys_t = vec![0f32; width * dh];
        let scale = 1.0 / (dh as f32).sqrt();
        for layer in &self.layers {
            linear_split(&x, n, &layer.qkv, &mut qkv, split);
            for &(start, rows) in &spans {
                attend(
                    &qkv[start * 3 * h..(start + rows) * 3 * h],
                    &mut ctx[start * h..(start + rows) * h],
                    rows,
                    self.heads,
                    scale,
                    &mut keys_t,
                    &mut scores,
                );
            }
            linear_split(&ctx, n, &layer.attn_out, &mut tmp, split);
            for (t, xv) in tmp.iter_mut().zip(&x) {
                *t += xv;
            }
            layer_norm(&mut tmp, &layer.ln1, self.eps);
            std::mem::swap(&mut x, &mut tmp); // x = attention output
            linear_split(&x, n, &layer.inter, &mut inter, split);
            for v in inter.iter_mut() {
                *v = gelu(*v);
            }
            linear_split(&inter, n, &layer.out, &mut tmp, split);
            for (t, xv) in tmp.iter_mut().zip(&x) {
                *t += xv;
            }
            layer_norm(&mut tmp, &layer.ln2, self.eps);
            std::mem::swap(&mut x, &mut tmp);
        }
        x
    }
}

/// Queries attended together: each multiply-add chain waits on its own last sum, so
/// several queries' chains, sharing each key and value read, keep the vector units busy
/// where one query's would wait.
const QUERY_GROUP: usize = 4;

/// Scaled dot-product attention of one sequence: `qkv` holds its rows of queries, keys
/// and values side by side (rows x 3·hidden), `ctx` receives rows x hidden. `keys_t`
/// (head width x [`key_blocks_width`]) and `scores` ([`QUERY_GROUP`] x
/// [`key_blocks_width`]) are scratch. Every query's sums are taken in the same order
/// however the queries are grouped.
#[inline(always)]
fn attend(
    qkv: &[f32],
    ctx: &mut [f32],
    rows: usize,
    heads: usize,
    scale: f32,
    keys_t: &mut [f32],
    scores: &mut [f32],
) {
    let n = rows;
    let h = ctx.len() / n.max(1);
    let dh = h / heads;
    let width = key_blocks_width(n);
    for head in 0..heads {
        let off = head * dh;
        let value = |j: usize| &qkv[j * 3 * h + 2 * h + off..][..dh];
        // This head's keys transposed (head width x keys): sixteen keys' scores are then
        // one multiply-add per dimension, in a register, instead of sixteen short dot
        // products each with a horizontal sum.
        for j in 0..n {
            let k = &qkv[j * 3 * h + h + off..][..dh];
            for (d, &kv) in k.iter().enumerate() {
                keys_t[d * width + j] = kv;
            }
        }
        for first in (0..n).step_by(QUERY_GROUP) {
            // the group's queries, the last repeated when fewer (its results unused)
            let count = (n - first).min(QUERY_GROUP);
            let member = |r: usize| first + r.min(count - 1);
            let q: [&[f32]; QUERY_GROUP] =
                std::array::from_fn(|r| &qkv[member(r) * 3 * h + off..][..dh]);
            for b in 0..width / 16 {
                let mut acc = [[0f32; 16]; QUERY_GROUP];
                for d in 0..dh {
                    let k = keys_t[d * width + b * 16..][..16].try_into().unwrap();
                    multiply_add(&mut acc, std::array::from_fn(|r| q[r][d]), k);
                }
                for (r, acc) in acc.iter().enumerate().take(count) {
                    for (s, a) in scores[r * width + b * 16..][..16].iter_mut().zip(acc) {
                        *s = a * scale;
                    }
                }
            }
            for r in 0..count {
                softmax(&mut scores[r * width..][..n]);
            }
            let p: [&[f32]; QUERY_GROUP] =
                std::array::from_fn(|r| &scores[r.min(count - 1) * width..][..n]);
            // The weighted sum of values, 32 dimensions at a time in local sums that stay
            // in registers (summed into `ctx`, each step would wait on the last store).
            let blocks = dh / 32;
            for b in 0..blocks {
                let mut acc = [[0f32; 32]; QUERY_GROUP];
                for (j, v) in (0..n).map(|j| &value(j)[b * 32..][..32]).enumerate() {
                    multiply_add(
                        &mut acc,
                        std::array::from_fn(|r| p[r][j]),
                        v.try_into().unwrap(),
                    );
                }
                for (r, acc) in acc.iter().enumerate().take(count) {
                    ctx[(first + r) * h + off + b * 32..][..32].copy_from_slice(acc);
                }
            }
            for (r, p) in p.iter().enumerate().take(count) {
                for d in blocks * 32..dh {
                    ctx[(first + r) * h + off + d] =
                        p.iter().enumerate().map(|(j, &p)| p * value(j)[d]).sum();
                }
            }
        }
    }
}

/// `acc[r] += x[r]·v` for each query r of a group, in registers.
#[inline(always)]
fn multiply_add<const W: usize>(
    acc: &mut [[f32; W]; QUERY_GROUP],
    x: [f32; QUERY_GROUP],
    v: &[f32; W],
) {
    for r in 0..QUERY_GROUP {
        for l in 0..W {
            acc[r][l] += x[r] * v[l];
        }
    }
}

/// Keys per row of attention's transposed keys and scores: whole blocks of sixteen, the
/// lanes past the last key unused.
fn key_blocks_width(rows: usize) -> usize {
    rows.div_ceil(16) * 16
}

/// Softmax in place.
#[inline(always)]
fn softmax(scores: &mut [f32]) {
    let max = fold_lanes(
        scores,
        f32::NEG_INFINITY,
        |v| v,
        |a, b| if a > b { a } else { b },
    );
    for s in scores.iter_mut() {
        *s = exp(*s - max);
    }
    let inv = 1.0 / fold_lanes(scores, 0.0, |v| v, |a, b| a + b);
    for s in scores.iter_mut() {
        *s *= inv;
    }
}

/// Folds in sixteen independent lanes, so that the compiler can vectorise it (a plain
/// fold over floats must be done in order).
#[inline(always)]
fn fold_lanes(a: &[f32], init: f32, map: impl Fn(f32) -> f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 16];
    let chunks = a.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(init, |t, &v| op(t, map(v)));
    for c in chunks {
        for l in 0..16 {
            acc[l] = op(acc[l], map(c[l]));
        }
    }
    acc.into_iter().fold(tail, op)
}

fn to_f16(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|&x| half::f16::from_f32(x).to_bits())
        .collect()
}

#[inline(always)]
fn layer_norm(x: &mut [f32], norm: &Norm, eps: f32) {
    let h = norm.g.len();
    for row in x.chunks_exact_mut(h) {
        let mean = fold_lanes(row, 0.0, |v| v, |a, b| a + b) / h as f32;
        let var = fold_lanes(row, 0.0, |v| (v - mean) * (v - mean), |a, b| a + b) / h as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(&norm.g).zip(&norm.b) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}

/// e^x from 2^n·e^f with |f| ≤ ln2/2 and a degree-6 Taylor polynomial (relative error
/// about 2e-7). Unlike the library call it vectorises: n is rounded by adding 1.5·2²³,
/// which leaves it in the low bits of the sum, so no float-to-int conversion is needed.
/// Inputs below -87 give about 1e-38.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    // ln 2 in two parts, so that n·ln2 is subtracted without losing f's low bits
    let f = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + f * (1.0
            + f * (0.5
                + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0))))));
    // t's bits are ROUND's plus n; move n + 127 into the exponent field
    let two_n = (t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23;
    p * f32::from_bits(two_n)
}

/// GELU with the exact erf form (as BERT was trained), erf by Abramowitz & Stegun 7.1.26
/// (absolute error below 1.5e-7).
#[inline(always)]
fn gelu(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let erf_abs = 1.0 - poly * exp(-a * a);
    let erf = if z < 0.0 { -erf_abs } else { erf_abs };
    0.5 * x * (1.0 + erf)
}

/// Multiply-adds from which a half-precision product is worth splitting over threads
/// (the int8 kernels have thresholds of their own, [`int8::split_work`]).
const SPLIT_WORK_HALF: usize = 1 << 21;

/// [`linear`], with the rows shared out over the rayon pool when `split` and large enough.
fn linear_split(x: &[f32], m: usize, d: &Dense, out: &mut [f32], split: bool) {
    let threads = rayon::current_num_threads();
    let split_work = match d.weights {
        Weights::Int8(_) => int8::split_work(),
        Weights::Half(_) => SPLIT_WORK_HALF,
    };
    if !split || threads < 2 || m < 8 || m * d.n_in * d.n_out < split_work {
        return linear(x, m, d, out);
    }
    use rayon::prelude::*;
    let rows = m.div_ceil(threads).div_ceil(4) * 4;
    out[..m * d.n_out]
        .par_chunks_mut(rows * d.n_out)
        .zip(x[..m * d.n_in].par_chunks(rows * d.n_in))
        .for_each(|(o, xs)| linear(xs, xs.len() / d.n_in, d, o));
}

/// out (m x n_out) = x (m x n_in) · Wᵀ + b
fn linear(x: &[f32], m: usize, d: &Dense, out: &mut [f32]) {
    match &d.weights {
        Weights::Int8(w) => int8::linear(x, m, w, &d.b, out),
        Weights::Half(w) => linear_half(x, m, d.n_in, w, &d.b, out),
    }
}

fn linear_half(x: &[f32], m: usize, k: usize, w: &[u16], b: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if k.is_multiple_of(16)
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
        {
            // The CPU supports AVX-512F and VL (checked just above), as the kernel requires.
            linear_tiles(x, m, k, w, b, out, avx512::dot);
            return;
        }
        if k.is_multiple_of(8)
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            // The CPU supports AVX2, FMA and F16C (checked just above), as the kernel requires.
            linear_tiles(x, m, k, w, b, out, avx2::dot);
            return;
        }
    }
    linear_tiles(x, m, k, w, b, out, dot_scalar::<3>)
}

/// Output features per tile: a tile of weights stays in L2 while all rows pass over it.
const TILE: usize = 64;

/// A kernel: dot products of four input rows with `COLS` weight rows.
type Kernel<const COLS: usize> = unsafe fn(&[&[f32]; 4], &[&[u16]; COLS]) -> [[f32; 4]; COLS];

/// Walks the output in tiles of weight rows, four input rows by `COLS` weight rows at a time.
#[inline(always)]
fn linear_tiles<const COLS: usize>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[u16],
    b: &[f32],
    out: &mut [f32],
    kernel: Kernel<COLS>,
) {
    let n = b.len();
    assert!(x.len() >= m * k && out.len() >= m * n && w.len() == n * k);
    for tile in (0..n).step_by(TILE) {
        let tile_end = (tile + TILE).min(n);
        let mut i = 0;
        while i < m {
            let rows = (m - i).min(4);
            let xr: [&[f32]; 4] = std::array::from_fn(|r| {
                let ri = i + r.min(rows - 1);
                &x[ri * k..(ri + 1) * k]
            });
            let mut j = tile;
            while j < tile_end {
                let cols = (tile_end - j).min(COLS);
                let wr: [&[u16]; COLS] = std::array::from_fn(|c| {
                    let cj = j + c.min(cols - 1);
                    &w[cj * k..(cj + 1) * k]
                });
                // SAFETY: every slice has length k; a SIMD kernel is only passed in when
                // the CPU supports it and k is a multiple of its width.
                let s = unsafe { kernel(&xr, &wr) };
                for (c, sc) in s.iter().enumerate().take(cols) {
                    for (r, v) in sc.iter().enumerate().take(rows) {
                        out[(i + r) * n + j + c] = v + b[j + c];
                    }
                }
                j += cols;
            }
            i += rows;
        }
    }
}

unsafe fn dot_scalar<const COLS: usize>(x: &[&[f32]; 4], w: &[&[u16]; COLS]) -> [[f32; 4]; COLS] {
    let f = |w: u16| half::f16::from_bits(w).to_f32();
    std::array::from_fn(|c| {
        std::array::from_fn(|r| x[r].iter().zip(w[c]).map(|(a, &b)| a * f(b)).sum())
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    const COLS: usize = 3;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Dot products of four rows with three half-precision weight rows; all slices have
    /// the same length, a multiple of 8.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot(x: &[&[f32]; 4], w: &[&[u16]; COLS]) -> [[f32; 4]; COLS] {
        let k = w[0].len();
        let p = [x[0].as_ptr(), x[1].as_ptr(), x[2].as_ptr(), x[3].as_ptr()];
        let q = [w[0].as_ptr(), w[1].as_ptr(), w[2].as_ptr()];
        let mut a = [[_mm256_setzero_ps(); 4]; COLS];
        let mut c = 0;
        while c < k {
            let v = [
                _mm256_cvtph_ps(_mm_loadu_si128(q[0].add(c) as *const __m128i)),
                _mm256_cvtph_ps(_mm_loadu_si128(q[1].add(c) as *const __m128i)),
                _mm256_cvtph_ps(_mm_loadu_si128(q[2].add(c) as *const __m128i)),
            ];
            for r in 0..4 {
                let xr = _mm256_loadu_ps(p[r].add(c));
                a[0][r] = _mm256_fmadd_ps(xr, v[0], a[0][r]);
                a[1][r] = _mm256_fmadd_ps(xr, v[1], a[1][r]);
                a[2][r] = _mm256_fmadd_ps(xr, v[2], a[2][r]);
            }
            c += 8;
        }
        let mut out = [[0f32; 4]; COLS];
        for (o, acc) in out.iter_mut().zip(a) {
            for (v, s) in o.iter_mut().zip(acc) {
                *v = hsum(s);
            }
        }
        out
    }
}

/// AVX-512: 16 lanes and 32 registers, so four rows by four weight rows at a time.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    const COLS: usize = 4;

    /// Dot products of four rows with four half-precision weight rows; all slices have
    /// the same length, a multiple of 16. The sixteen accumulators are named one by one:
    /// held in an array, they were spilled to the stack on every step.
    #[target_feature(enable = "avx512f,avx512vl,f16c")]
    pub(super) unsafe fn dot(x: &[&[f32]; 4], w: &[&[u16]; COLS]) -> [[f32; 4]; COLS] {
        let k = w[0].len();
        let [p0, p1, p2, p3] = [x[0].as_ptr(), x[1].as_ptr(), x[2].as_ptr(), x[3].as_ptr()];
        let [q0, q1, q2, q3] = [w[0].as_ptr(), w[1].as_ptr(), w[2].as_ptr(), w[3].as_ptr()];
        let z = _mm512_setzero_ps();
        let (mut a00, mut a01, mut a02, mut a03) = (z, z, z, z);
        let (mut a10, mut a11, mut a12, mut a13) = (z, z, z, z);
        let (mut a20, mut a21, mut a22, mut a23) = (z, z, z, z);
        let (mut a30, mut a31, mut a32, mut a33) = (z, z, z, z);
        let mut c = 0;
        while c < k {
            let half =
                |q: *const u16| _mm512_cvtph_ps(_mm256_loadu_si256(q.add(c) as *const __m256i));
            let (v0, v1, v2, v3) = (half(q0), half(q1), half(q2), half(q3));
            // One input row times the four weight rows, into that row's accumulators.
            macro_rules! row {
                ($p:ident => $a0:ident, $a1:ident, $a2:ident, $a3:ident) => {
                    let x = _mm512_loadu_ps($p.add(c));
                    $a0 = _mm512_fmadd_ps(x, v0, $a0);
                    $a1 = _mm512_fmadd_ps(x, v1, $a1);
                    $a2 = _mm512_fmadd_ps(x, v2, $a2);
                    $a3 = _mm512_fmadd_ps(x, v3, $a3);
                };
            }
            row!(p0 => a00, a10, a20, a30);
            row!(p1 => a01, a11, a21, a31);
            row!(p2 => a02, a12, a22, a32);
            row!(p3 => a03, a13, a23, a33);
            c += 16;
        }
        let sum = |v: __m512| _mm512_reduce_add_ps(v);
        [
            [sum(a00), sum(a01), sum(a02), sum(a03)],
            [sum(a10), sum(a11), sum(a12), sum(a13)],
            [sum(a20), sum(a21), sum(a22), sum(a23)],
            [sum(a30), sum(a31), sum(a32), sum(a33)],
        ]
    }
}

/// Token-count-weighted mean of hidden states.
pub(crate) fn mean_pool(hidden: &[f32], dim: usize) -> Vec<f32> {
    let n = (hidden.len() / dim).max(1);
    let mut out = vec![0f32; dim];
    for row in hidden.chunks_exact(dim) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
    for o in out.iter_mut() {
        *o /= n as f32;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_library() {
        for i in -870..=870 {
            let x = i as f32 * 0.1 + 0.037;
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 1e-6 * want,
                "exp({x}) = {got} want {want}"
            );
        }
        assert!(exp(-1e4) < 1e-37 && exp(-1e4) >= 0.0);
    }

    #[test]
    fn gelu_matches_erf_form() {
        // reference values of x·Φ(x)
        for (x, want) in [
            (0.0f32, 0.0f32),
            (1.0, 0.841_344_7),
            (-1.0, -0.158_655_26),
            (2.5, 2.484_474),
            (-3.0, -0.004_049_696),
        ] {
            assert!(
                (gelu(x) - want).abs() < 1e-5,
                "gelu({x}) = {} want {want}",
                gelu(x)
            );
        }
    }

    /// Blocked attention against the textbook formula, with a head width that leaves a
    /// remainder past the blocks of 32 and a row count that is not a multiple of 16.
    #[test]
    fn attention_matches_the_formula() {
        let (n, heads, dh): (usize, usize, usize) = (19, 2, 40);
        let h = heads * dh;
        let qkv: Vec<f32> = (0..n * 3 * h)
            .map(|i| ((i * 7919 % 1013) as f32 / 506.5 - 1.0) * 0.8)
            .collect();
        let scale = 1.0 / (dh as f32).sqrt();
        let width = key_blocks_width(n);
        let mut ctx = vec![0f32; n * h];
        let (mut keys_t, mut scores) = (vec![0f32; width * dh], vec![0f32; QUERY_GROUP * width]);
        attend(&qkv, &mut ctx, n, heads, scale, &mut keys_t, &mut scores);
        let at = |row: usize, part: usize, head: usize, d: usize| {
            qkv[row * 3 * h + part * h + head * dh + d]
        };
        for head in 0..heads {
            for i in 0..n {
                let logits: Vec<f32> = (0..n)
                    .map(|j| {
                        (0..dh)
                            .map(|d| at(i, 0, head, d) * at(j, 1, head, d))
                            .sum::<f32>()
                            * scale
                    })
                    .collect();
                let max = logits.iter().cloned().fold(f32::MIN, f32::max);
                let weights: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
                let total: f32 = weights.iter().sum();
                for d in 0..dh {
                    let want: f32 = (0..n).map(|j| weights[j] / total * at(j, 2, head, d)).sum();
                    let got = ctx[i * h + head * dh + d];
                    assert!(
                        (got - want).abs() < 1e-5,
                        "head {head} row {i} dim {d}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn half_kernels_match_naive_product() {
        let (m, k, n) = (7, 32, 5);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.2)
            .collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let w16 = to_f16(&w);
        // the weights are stored in half precision
        let w: Vec<f32> = w16
            .iter()
            .map(|&h| half::f16::from_bits(h).to_f32())
            .collect();
        let check = |name: &str, out: &[f32]| {
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f32>() + b[j];
                    assert!(
                        (out[i * n + j] - want).abs() < 1e-4,
                        "{name} ({i},{j}) {} vs {want}",
                        out[i * n + j]
                    );
                }
            }
        };
        let mut out = vec![0f32; m * n];
        linear_tiles(&x, m, k, &w16, &b, &mut out, dot_scalar::<3>);
        check("scalar", &out);
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                out.fill(0.0);
                linear_tiles(&x, m, k, &w16, &b, &mut out, avx2::dot);
                check("avx2", &out);
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
                out.fill(0.0);
                linear_tiles(&x, m, k, &w16, &b, &mut out, avx512::dot);
                check("avx512", &out);
            }
        }
    }
}
