//! Integer linear layers for CPUs with AVX-512 VNNI.
//!
//! Weights are stored as int8 with one scale per output feature; each input row is
//! quantized on the fly to u8 over its own range (x ≈ step·q + low), and `vpdpbusd`
//! multiplies and sums 64 byte pairs per instruction: four times the multiply-adds of a
//! single-precision FMA, and a quarter of the f32 weight bytes. The weights are packed so
//! that the kernel needs no horizontal sums: sixteen output features per register, each
//! lane holding four consecutive inputs of its feature.

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
    /// Whether this CPU runs the kernel (AVX-512 F, BW and VNNI) and a layer of this shape fits its tiling.
    pub fn usable(n_in: usize, n_out: usize) -> bool {
        n_in.is_multiple_of(4) && n_out.is_multiple_of(TILE) && cpu_has_vnni()
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

fn cpu_has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
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
    step: Vec<f32>,
    low: Vec<f32>,
}

/// Compiled for AVX-512 so that it vectorises: rounding by adding 1.5·2²³, which leaves
/// the rounded value in the low byte of the sum's bits.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bw"))]
unsafe fn quantize_rows(x: &[f32], m: usize, k: usize) -> Rows {
    const ROUND: f32 = 12_582_912.0;
    let mut rows = Rows {
        q: vec![0u8; m * k],
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

/// The smallest and the largest value of a row, sixteen lanes at a time (written out:
/// the compiler left the portable form scalar).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn range(row: &[f32]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let chunks = row.chunks_exact(16);
    let tail = chunks.remainder().iter();
    let (low, high) = tail.fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let (mut lows, mut highs) = (_mm512_set1_ps(low), _mm512_set1_ps(high));
    for c in chunks {
        let v = _mm512_loadu_ps(c.as_ptr());
        lows = _mm512_min_ps(lows, v);
        highs = _mm512_max_ps(highs, v);
    }
    (_mm512_reduce_min_ps(lows), _mm512_reduce_max_ps(highs))
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn range(row: &[f32]) -> (f32, f32) {
    let extremes = (f32::MAX, f32::MIN);
    row.iter().fold(extremes, |(l, h), &v| (l.min(v), h.max(v)))
}

/// out (m x n_out) = x (m x n_in) · Wᵀ + b, for weights that are [`Int8Weights::usable`].
pub(super) fn linear(x: &[f32], m: usize, w: &Int8Weights, bias: &[f32], out: &mut [f32]) {
    let (k, n) = (w.n_in, w.scale.len());
    assert!(x.len() >= m * k && out.len() >= m * n && bias.len() == n);
    assert!(cpu_has_vnni(), "int8 weights on a CPU without AVX-512 VNNI");
    // SAFETY: a CPU with VNNI has AVX-512F and BW (asserted above)
    let rows = unsafe { quantize_rows(x, m, k) };
    for tile in 0..n / TILE {
        let cols = tile * TILE..(tile + 1) * TILE;
        let weights = &w.packed[tile * TILE * k..(tile + 1) * TILE * k];
        for first in (0..m).step_by(4) {
            let count = (m - first).min(4);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F and VNNI (asserted above); every row slice has k
            // bytes, the tile k x 64, and out holds rows first..first+count of n features.
            unsafe {
                vnni::block(
                    &rows,
                    first,
                    count,
                    k,
                    weights,
                    &w.scale[cols.clone()],
                    &w.sum[cols.clone()],
                    &bias[cols.clone()],
                    out[first * n + cols.start..].as_mut_ptr(),
                    n,
                );
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{Rows, TILE};

    /// Four rows (the last repeated when fewer) by one tile of 64 features. The sixteen
    /// accumulators are named one by one so that they stay in registers.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn block(
        rows: &Rows,
        first: usize,
        count: usize,
        k: usize,
        w: &[i8],
        scale: &[f32],
        sum: &[f32],
        bias: &[f32],
        out: *mut f32,
        stride: usize,
    ) {
        let row = |r: usize| rows.q[(first + r.min(count - 1)) * k..].as_ptr();
        let (p0, p1, p2, p3) = (row(0), row(1), row(2), row(3));
        let w = w.as_ptr();
        let z = _mm512_setzero_si512();
        let (mut a00, mut a01, mut a02, mut a03) = (z, z, z, z);
        let (mut a10, mut a11, mut a12, mut a13) = (z, z, z, z);
        let (mut a20, mut a21, mut a22, mut a23) = (z, z, z, z);
        let (mut a30, mut a31, mut a32, mut a33) = (z, z, z, z);
        for g in 0..k / 4 {
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
        }
        // y = (step·acc + low·Σw) · scale + b, sixteen features at a time
        let emit = |r: usize, c: usize, acc: __m512i| {
            if r >= count {
                return;
            }
            let (step, low) = (rows.step[first + r], rows.low[first + r]);
            let f = c * 16;
            let y = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(acc),
                _mm512_set1_ps(step),
                _mm512_mul_ps(_mm512_set1_ps(low), _mm512_loadu_ps(sum[f..].as_ptr())),
            );
            let y = _mm512_fmadd_ps(
                y,
                _mm512_loadu_ps(scale[f..].as_ptr()),
                _mm512_loadu_ps(bias[f..].as_ptr()),
            );
            _mm512_storeu_ps(out.add(r * stride + f), y);
        };
        for (r, accs) in [
            [a00, a01, a02, a03],
            [a10, a11, a12, a13],
            [a20, a21, a22, a23],
            [a30, a31, a32, a33],
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize, seed: usize, amp: f32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104_729) % 1009) as f32 / 504.5 - 1.0) * amp)
            .collect()
    }

    /// The kernel computes exactly the quantized product, and that product is close to
    /// the full-precision one.
    #[test]
    fn kernel_matches_quantized_and_full_products() {
        if !cpu_has_vnni() {
            eprintln!("skipping: this CPU has no AVX-512 VNNI");
            return;
        }
        let (m, k, n) = (7, 96, 128);
        let mut x = sample(m * k, 1, 2.0);
        x[5] = 9.0; // an outlier feature, as BERT's hidden states have
        let w = sample(n * k, 2, 0.3);
        let b = sample(n, 3, 1.0);
        let weights = Int8Weights::new(&w, k, n);
        let mut out = vec![0f32; m * n];
        linear(&x, m, &weights, &b, &mut out);

        // SAFETY: the CPU has AVX-512 VNNI (checked above), so F and BW too
        let rows = unsafe { quantize_rows(&x, m, k) };
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
                    "({i},{j}) {got} vs quantized {quantized}"
                );
                let full: f32 = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f32>() + b[j];
                worst_full = worst_full.max((got - full).abs());
            }
        }
        // one step of a row is about 0.05 here; errors average out over k products
        assert!(worst_full < 0.1, "worst difference to f32: {worst_full}");
    }
}
