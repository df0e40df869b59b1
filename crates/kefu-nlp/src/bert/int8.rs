//! Integer linear layers for CPUs with AVX-512 VNNI, or with AVX2 and FMA.
//!
//! Weights are stored as int8 with one scale per output feature; each input row is
//! quantized on the fly to u8 over its own range (x ≈ step·q + low). With VNNI,
//! `vpdpbusd` multiplies and sums 64 byte pairs per instruction: four times the
//! multiply-adds of a single-precision FMA, and a quarter of the f32 weight bytes. The
//! weights are packed so that it needs no horizontal sums: sixteen output features per
//! register, each lane holding four consecutive inputs of its feature. With AVX2 the same
//! packing is widened to 16 bits and multiplied with `vpmaddwd`. Both sum the products
//! exactly in 32-bit integers and finish with the same float operations per feature, so
//! a layer gives the same bits on either CPU: an embedding, and so every decision taken
//! on it, does not depend on which node a replica runs on.

/// Output features per tile: four registers of sixteen 32-bit lanes.
const TILE: usize = 64;

pub(super) struct Int8Weights {
    /// Tile by tile (64 output features); within a tile, for each group of four inputs,
    /// the four bytes of feature 0, then of feature 1, ... (256 bytes per group).
    packed: Vec<i8>,
    /// Per output feature: the weight of one quantization step.
    scale: Vec<f32>,
    /// Per output feature: the sum of its quantized weights (to add back the rows' offsets).
    sum: Vec<f32>,
    n_in: usize,
}

impl Int8Weights {
    /// Whether this CPU runs a kernel and a layer of this shape fits its tiling.
    pub fn usable(n_in: usize, n_out: usize) -> bool {
        n_in.is_multiple_of(4) && n_out.is_multiple_of(TILE) && Kernel::detect().is_some()
    }

    /// Quantizes (n_out x n_in) row-major weights.
    pub fn new(w: &[f32], n_in: usize, n_out: usize) -> Self {
        assert_eq!(w.len(), n_in * n_out);
        assert!(n_in.is_multiple_of(4) && n_out.is_multiple_of(TILE));
        let groups = n_in / 4;
        let mut packed = vec![0i8; w.len()];
        let mut scale = Vec::with_capacity(n_out);
        let mut sum = Vec::with_capacity(n_out);
        for (j, row) in w.chunks_exact(n_in).enumerate() {
            let (q, s) = quantize_weights(row);
            scale.push(s);
            sum.push(q.iter().map(|&v| v as i32).sum::<i32>() as f32);
            let (tile, col) = (j / TILE, j % TILE);
            for (g, four) in q.chunks_exact(4).enumerate() {
                let at = ((tile * groups + g) * TILE + col) * 4;
                packed[at..at + 4].copy_from_slice(four);
            }
        }
        Self {
            packed,
            scale,
            sum,
            n_in,
        }
    }
}

/// The instruction sets an integer kernel is written for.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    /// AVX-512 F, BW and VNNI.
    Vnni,
    /// AVX2 and FMA.
    Avx2,
}

impl Kernel {
    /// Rows one call of the kernel's block computes: as many as its accumulators for a
    /// tile fit in the vector registers, so that each weight read serves them all.
    fn rows(self) -> usize {
        match self {
            Self::Vnni => 6,
            Self::Avx2 => 4,
        }
    }

    /// The fastest kernel this CPU runs, if any; found once, as every product asks.
    fn detect() -> Option<Self> {
        static DETECTED: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| Self::available().into_iter().next())
    }

    /// Every kernel this CPU runs, fastest first.
    fn available() -> Vec<Self> {
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
            {
                kernels.push(Self::Vnni);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                kernels.push(Self::Avx2);
            }
        }
        kernels
    }
}

/// Multiply-adds from which a product is worth splitting over threads. Handing work to
/// the pool costs tens of microseconds per product, so the faster the kernel, the larger
/// the product must be. Banking77 messages one at a time on 2 cores (`kefu eval
/// intents`, embedding p50): with VNNI 1.9 ms split at 2^21, 1.3 ms at 2^25 (and p99
/// 6.2-7.2 ms split at 2^21-2^24, 4.6-5.2 ms at 2^25 or never); with AVX2 alone, about
/// three times slower, 3.4-3.8 ms at 2^20 against 4.2-5.2 ms at 2^25 (runs taken in turn
/// on one machine).
pub(super) fn split_work() -> usize {
    match Kernel::detect() {
        Some(Kernel::Vnni) => 1 << 25,
        Some(Kernel::Avx2) | None => 1 << 20,
    }
}

/// Symmetric int8 quantization of one weight row: (values, step).
fn quantize_weights(row: &[f32]) -> (Vec<i8>, f32) {
    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    let step = if max > 0.0 { max / 127.0 } else { 1.0 };
    let q = row
        .iter()
        .map(|v| (v / step).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, step)
}

/// Input rows quantized to u8, each over its own range: x ≈ step·q + low.
struct Rows {
    q: Vec<u8>,
    /// `q` widened to 16 bits, for the AVX2 kernel (empty for VNNI).
    wide: Vec<i16>,
    step: Vec<f32>,
    low: Vec<f32>,
}

/// Quantizes the rows with the instructions of `kernel`: the same values either way.
#[cfg(target_arch = "x86_64")]
fn quantize_rows(kernel: Kernel, x: &[f32], m: usize, k: usize) -> Rows {
    // SAFETY: a kernel is only chosen where the CPU has its instructions
    unsafe {
        match kernel {
            Kernel::Vnni => quantize_rows_avx512(x, m, k),
            Kernel::Avx2 => quantize_rows_avx2(x, m, k),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_rows_avx512(x: &[f32], m: usize, k: usize) -> Rows {
    quantize_rows_with(x, m, k, |row| unsafe { range_avx512(row) })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_rows_avx2(x: &[f32], m: usize, k: usize) -> Rows {
    let mut rows = quantize_rows_with(x, m, k, |row| unsafe { range_avx2(row) });
    // widened once per layer, so that the kernel takes a row's four inputs with one
    // broadcast in every tile: about a quarter less CPU than widening them there
    rows.wide = rows.q.iter().map(|&q| q as i16).collect();
    rows
}

/// Inlined into callers compiled for wide vectors so that it vectorises: rounding by
/// adding 1.5·2²³, which leaves the rounded value in the low byte of the sum's bits.
#[inline(always)]
fn quantize_rows_with(x: &[f32], m: usize, k: usize, range: impl Fn(&[f32]) -> (f32, f32)) -> Rows {
    const ROUND: f32 = 12_582_912.0;
    let mut rows = Rows {
        q: vec![0u8; m * k],
        wide: Vec::new(),
        step: Vec::with_capacity(m),
        low: Vec::with_capacity(m),
    };
    for (row, q) in x[..m * k].chunks_exact(k).zip(rows.q.chunks_exact_mut(k)) {
        let (low, high) = range(row);
        let step = if high > low {
            (high - low) / 255.0
        } else {
            1.0
        };
        let inv = 1.0 / step;
        for (q, &v) in q.iter_mut().zip(row) {
            *q = ((v - low) * inv + ROUND).to_bits() as u8;
        }
        rows.step.push(step);
        rows.low.push(low);
    }
    rows
}

/// The lane-wise smallest and largest values of a row, as two vectors of `$lanes`
/// lanes: the tail beyond the last whole vector seeds every lane.
#[cfg(target_arch = "x86_64")]
macro_rules! lane_range {
    ($row:expr, $lanes:literal, $set1:ident, $load:ident, $min:ident, $max:ident) => {{
        let chunks = $row.chunks_exact($lanes);
        let tail = chunks.remainder().iter();
        let (low, high) = tail.fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        let (mut lows, mut highs) = ($set1(low), $set1(high));
        for c in chunks {
            let v = $load(c.as_ptr());
            lows = $min(lows, v);
            highs = $max(highs, v);
        }
        (lows, highs)
    }};
}

/// The smallest and the largest value of a row, sixteen lanes at a time (written out:
/// the compiler left the portable form scalar).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn range_avx512(row: &[f32]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let (lows, highs) = lane_range!(
        row,
        16,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_min_ps,
        _mm512_max_ps
    );
    (_mm512_reduce_min_ps(lows), _mm512_reduce_max_ps(highs))
}

/// The same, eight lanes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn range_avx2(row: &[f32]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let (lows, highs) = lane_range!(
        row,
        8,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_min_ps,
        _mm256_max_ps
    );
    let (mut l, mut h) = ([0f32; 8], [0f32; 8]);
    _mm256_storeu_ps(l.as_mut_ptr(), lows);
    _mm256_storeu_ps(h.as_mut_ptr(), highs);
    (
        l.iter().fold(f32::MAX, |a, &v| a.min(v)),
        h.iter().fold(f32::MIN, |a, &v| a.max(v)),
    )
}

/// out (m x n_out) = x (m x n_in) · Wᵀ + b, for weights that are [`Int8Weights::usable`].
pub(super) fn linear(x: &[f32], m: usize, w: &Int8Weights, bias: &[f32], out: &mut [f32]) {
    let kernel = Kernel::detect().expect("int8 weights on a CPU without an integer kernel");
    linear_with(kernel, x, m, w, bias, out);
}

#[cfg(not(target_arch = "x86_64"))]
fn linear_with(_: Kernel, _: &[f32], _: usize, _: &Int8Weights, _: &[f32], _: &mut [f32]) {
    unreachable!("no integer kernel off x86-64")
}

#[cfg(target_arch = "x86_64")]
fn linear_with(
    kernel: Kernel,
    x: &[f32],
    m: usize,
    w: &Int8Weights,
    bias: &[f32],
    out: &mut [f32],
) {
    let (k, n) = (w.n_in, w.scale.len());
    assert!(x.len() >= m * k && out.len() >= m * n && bias.len() == n);
    let rows = quantize_rows(kernel, x, m, k);
    for tile in 0..n / TILE {
        let cols = tile * TILE..(tile + 1) * TILE;
        let block = Block {
            rows: &rows,
            k,
            w: &w.packed[tile * TILE * k..(tile + 1) * TILE * k],
            scale: &w.scale[cols.clone()],
            sum: &w.sum[cols.clone()],
            bias: &bias[cols.clone()],
        };
        for first in (0..m).step_by(kernel.rows()) {
            let count = (m - first).min(kernel.rows());
            let out = out[first * n + cols.start..].as_mut_ptr();
            // SAFETY: the kernel was chosen for this CPU; every row slice has k bytes, the
            // tile k x 64, and out holds rows first..first+count of n features.
            unsafe {
                match kernel {
                    Kernel::Vnni => vnni::block(&block, first, count, out, n),
                    Kernel::Avx2 => avx2::block(&block, first, count, out, n),
                }
            }
        }
    }
}

/// One tile of 64 output features, for every input row.
struct Block<'a> {
    rows: &'a Rows,
    k: usize,
    w: &'a [i8],
    scale: &'a [f32],
    sum: &'a [f32],
    bias: &'a [f32],
}

impl Block<'_> {
    /// Where row `first + r` starts (the last of the `count` rows when r is past it).
    fn row(&self, first: usize, count: usize, r: usize) -> usize {
        (first + r.min(count - 1)) * self.k
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{Block, TILE};

    /// Six rows (the last repeated when fewer) by one tile of 64 features. The 24
    /// accumulators are named one by one so that they stay in registers (with the tile's
    /// four weight vectors and a row's broadcast inputs, 29 of the 32).
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn block(
        b: &Block,
        first: usize,
        count: usize,
        out: *mut f32,
        stride: usize,
    ) {
        let row = |r: usize| b.rows.q[b.row(first, count, r)..].as_ptr();
        let (p0, p1, p2, p3, p4, p5) = (row(0), row(1), row(2), row(3), row(4), row(5));
        let w = b.w.as_ptr();
        let z = _mm512_setzero_si512();
        let (mut a00, mut a01, mut a02, mut a03) = (z, z, z, z);
        let (mut a10, mut a11, mut a12, mut a13) = (z, z, z, z);
        let (mut a20, mut a21, mut a22, mut a23) = (z, z, z, z);
        let (mut a30, mut a31, mut a32, mut a33) = (z, z, z, z);
        let (mut a40, mut a41, mut a42, mut a43) = (z, z, z, z);
        let (mut a50, mut a51, mut a52, mut a53) = (z, z, z, z);
        for g in 0..b.k / 4 {
            let at = w.add(g * TILE * 4);
            let load = |c: usize| _mm512_loadu_si512(at.add(c * 64) as *const __m512i);
            let (v0, v1, v2, v3) = (load(0), load(1), load(2), load(3));
            let four =
                |p: *const u8| _mm512_set1_epi32((p.add(g * 4) as *const i32).read_unaligned());
            let x = four(p0);
            a00 = _mm512_dpbusd_epi32(a00, x, v0);
            a01 = _mm512_dpbusd_epi32(a01, x, v1);
            a02 = _mm512_dpbusd_epi32(a02, x, v2);
            a03 = _mm512_dpbusd_epi32(a03, x, v3);
            let x = four(p1);
            a10 = _mm512_dpbusd_epi32(a10, x, v0);
            a11 = _mm512_dpbusd_epi32(a11, x, v1);
            a12 = _mm512_dpbusd_epi32(a12, x, v2);
            a13 = _mm512_dpbusd_epi32(a13, x, v3);
            let x = four(p2);
            a20 = _mm512_dpbusd_epi32(a20, x, v0);
            a21 = _mm512_dpbusd_epi32(a21, x, v1);
            a22 = _mm512_dpbusd_epi32(a22, x, v2);
            a23 = _mm512_dpbusd_epi32(a23, x, v3);
            let x = four(p3);
            a30 = _mm512_dpbusd_epi32(a30, x, v0);
            a31 = _mm512_dpbusd_epi32(a31, x, v1);
            a32 = _mm512_dpbusd_epi32(a32, x, v2);
            a33 = _mm512_dpbusd_epi32(a33, x, v3);
            let x = four(p4);
            a40 = _mm512_dpbusd_epi32(a40, x, v0);
            a41 = _mm512_dpbusd_epi32(a41, x, v1);
            a42 = _mm512_dpbusd_epi32(a42, x, v2);
            a43 = _mm512_dpbusd_epi32(a43, x, v3);
            let x = four(p5);
            a50 = _mm512_dpbusd_epi32(a50, x, v0);
            a51 = _mm512_dpbusd_epi32(a51, x, v1);
            a52 = _mm512_dpbusd_epi32(a52, x, v2);
            a53 = _mm512_dpbusd_epi32(a53, x, v3);
        }
        // y = (step·acc + low·Σw) · scale + b, sixteen features at a time
        let emit = |r: usize, c: usize, acc: __m512i| {
            if r >= count {
                return;
            }
            let (step, low) = (b.rows.step[first + r], b.rows.low[first + r]);
            let f = c * 16;
            let y = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(acc),
                _mm512_set1_ps(step),
                _mm512_mul_ps(_mm512_set1_ps(low), _mm512_loadu_ps(b.sum[f..].as_ptr())),
            );
            let y = _mm512_fmadd_ps(
                y,
                _mm512_loadu_ps(b.scale[f..].as_ptr()),
                _mm512_loadu_ps(b.bias[f..].as_ptr()),
            );
            _mm512_storeu_ps(out.add(r * stride + f), y);
        };
        for (r, accs) in [
            [a00, a01, a02, a03],
            [a10, a11, a12, a13],
            [a20, a21, a22, a23],
            [a30, a31, a32, a33],
            [a40, a41, a42, a43],
            [a50, a51, a52, a53],
        ]
        .into_iter()
        .enumerate()
        {
            for (c, acc) in accs.into_iter().enumerate() {
                emit(r, c, acc);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Block, TILE};

    /// Four rows (the last repeated when fewer) by one tile of 64 features, eight features
    /// at a time. Sixteen bytes of the packing (four features, four inputs each) widen to
    /// sixteen 16-bit weights; `vpmaddwd` against a row's four (widened) inputs leaves each
    /// feature's sum in two adjacent lanes, which one horizontal add joins at the end.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block(
        b: &Block,
        first: usize,
        count: usize,
        out: *mut f32,
        stride: usize,
    ) {
        let row = |r: usize| b.rows.wide[b.row(first, count, r)..].as_ptr();
        let (p0, p1, p2, p3) = (row(0), row(1), row(2), row(3));
        for part in 0..TILE / 8 {
            let w = b.w.as_ptr().add(part * 32);
            let z = _mm256_setzero_si256();
            let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
            let (mut c0, mut c1, mut c2, mut c3) = (z, z, z, z);
            for g in 0..b.k / 4 {
                let at = w.add(g * TILE * 4);
                let v0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(at as *const __m128i));
                let v1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(at.add(16) as *const __m128i));
                let four = |p: *const i16| {
                    _mm256_set1_epi64x((p.add(g * 4) as *const i64).read_unaligned())
                };
                let x = four(p0);
                a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(x, v0));
                c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(x, v1));
                let x = four(p1);
                a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(x, v0));
                c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(x, v1));
                let x = four(p2);
                a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(x, v0));
                c2 = _mm256_add_epi32(c2, _mm256_madd_epi16(x, v1));
                let x = four(p3);
                a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(x, v0));
                c3 = _mm256_add_epi32(c3, _mm256_madd_epi16(x, v1));
            }
            // the pairs joined: features 0 1 4 5 | 2 3 6 7, then put in order
            let f = part * 8;
            let emit = |r: usize, lo: __m256i, hi: __m256i| {
                if r >= count {
                    return;
                }
                let acc = _mm256_permute4x64_epi64::<0xD8>(_mm256_hadd_epi32(lo, hi));
                let (step, low) = (b.rows.step[first + r], b.rows.low[first + r]);
                let y = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(acc),
                    _mm256_set1_ps(step),
                    _mm256_mul_ps(_mm256_set1_ps(low), _mm256_loadu_ps(b.sum[f..].as_ptr())),
                );
                let y = _mm256_fmadd_ps(
                    y,
                    _mm256_loadu_ps(b.scale[f..].as_ptr()),
                    _mm256_loadu_ps(b.bias[f..].as_ptr()),
                );
                _mm256_storeu_ps(out.add(r * stride + f), y);
            };
            emit(0, a0, c0);
            emit(1, a1, c1);
            emit(2, a2, c2);
            emit(3, a3, c3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize, seed: usize, amp: f32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104_729) % 1009) as f32 / 504.5 - 1.0) * amp)
            .collect()
    }

    /// Every kernel this CPU runs computes exactly the quantized product, and that
    /// product is close to the full-precision one.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn kernels_match_quantized_and_full_products() {
        let (m, k, n) = (7, 96, 128);
        let mut x = sample(m * k, 1, 2.0);
        x[5] = 9.0; // an outlier feature, as BERT's hidden states have
        let w = sample(n * k, 2, 0.3);
        let b = sample(n, 3, 1.0);
        let weights = Int8Weights::new(&w, k, n);
        let kernels = Kernel::available();
        if kernels.is_empty() {
            eprintln!("skipping: this CPU has neither AVX-512 VNNI nor AVX2");
        }
        for kernel in kernels {
            let mut out = vec![0f32; m * n];
            linear_with(kernel, &x, m, &weights, &b, &mut out);
            let rows = quantize_rows(kernel, &x, m, k);
            let mut worst_full = 0f32;
            for i in 0..m {
                for j in 0..n {
                    let (wq, ws) = quantize_weights(&w[j * k..(j + 1) * k]);
                    let quantized: f32 = (0..k)
                        .map(|t| {
                            (rows.step[i] * rows.q[i * k + t] as f32 + rows.low[i])
                                * (ws * wq[t] as f32)
                        })
                        .sum::<f32>()
                        + b[j];
                    let got = out[i * n + j];
                    assert!(
                        (got - quantized).abs() < 1e-3 * (1.0 + quantized.abs()),
                        "{kernel:?} ({i},{j}) {got} vs quantized {quantized}"
                    );
                    let full: f32 = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f32>() + b[j];
                    worst_full = worst_full.max((got - full).abs());
                }
            }
            // one step of a row is about 0.05 here; errors average out over k products
            assert!(
                worst_full < 0.1,
                "{kernel:?}: worst difference to f32: {worst_full}"
            );
        }
    }

    /// Each kernel gives the bits of the same scalar computation (the exact integer sum,
    /// then the same fused multiply-adds), so the kernels agree with each other to the
    /// bit, whichever of them a CPU runs.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn kernels_give_the_bits_of_the_scalar_computation() {
        let (m, k, n) = (5, 384, 192);
        let x = sample(m * k, 4, 3.0);
        let w = sample(n * k, 5, 0.2);
        let weights = Int8Weights::new(&w, k, n);
        let b = sample(n, 6, 0.5);
        for kernel in Kernel::available() {
            let rows = quantize_rows(kernel, &x, m, k);
            assert!(rows.q.contains(&255) && rows.q.contains(&0));
            let mut out = vec![0f32; m * n];
            linear_with(kernel, &x, m, &weights, &b, &mut out);
            for i in 0..m {
                for j in 0..n {
                    let (wq, scale) = quantize_weights(&w[j * k..(j + 1) * k]);
                    let q = &rows.q[i * k..(i + 1) * k];
                    let acc: i32 = q.iter().zip(&wq).map(|(&a, &b)| a as i32 * b as i32).sum();
                    let sum = wq.iter().map(|&v| v as i32).sum::<i32>() as f32;
                    let y = (acc as f32).mul_add(rows.step[i], rows.low[i] * sum);
                    let want = y.mul_add(scale, b[j]);
                    assert_eq!(
                        out[i * n + j].to_bits(),
                        want.to_bits(),
                        "{kernel:?} ({i},{j})"
                    );
                }
            }
        }
    }
}
