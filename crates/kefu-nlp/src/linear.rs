//! Multinomial logistic regression (softmax) over sparse + dense features, trained by
//! full-batch L-BFGS with L2 regularisation. Objective and gradient are computed in
//! parallel over example chunks (rayon).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::features::SparseRow;

/// Training data: row i has the sparse part `sparse[i]` (columns < n_sparse) and, when
/// present, the dense part `dense[i]` (columns n_sparse..n_sparse+dense_dim).
pub(crate) struct Data<'a> {
    pub sparse: &'a [SparseRow],
    pub dense: Option<&'a [Vec<f32>]>,
    pub n_sparse: usize,
    pub labels: &'a [u32],
    /// per-example weights (class balancing); None = 1
    pub weights: Option<&'a [f32]>,
    pub n_classes: usize,
}

impl Data<'_> {
    fn dense_dim(&self) -> usize {
        self.dense.and_then(|d| d.first()).map_or(0, |v| v.len())
    }
    fn len(&self) -> usize {
        self.labels.len()
    }
}

/// Options of the optimiser.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrainOptions {
    /// L2 penalty λ in mean(loss) + λ/2·‖W‖²
    pub l2: f32,
    pub max_iter: usize,
    /// stop when the relative decrease of the objective over 5 iterations is below this
    pub tol: f32,
}

/// A trained linear softmax model; weights are row-major [feature][class].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Linear {
    pub n_sparse: usize,
    pub dense_dim: usize,
    pub n_classes: usize,
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

impl Linear {
    pub fn zeros(n_sparse: usize, dense_dim: usize, n_classes: usize) -> Self {
        Self {
            n_sparse,
            dense_dim,
            n_classes,
            w: vec![0.0; (n_sparse + dense_dim) * n_classes],
            b: vec![0.0; n_classes],
        }
    }

    /// Whether the weights fit `n_sparse` sparse columns and `n_classes` classes: a decoded
    /// model whose parts disagree is refused before it could index out of bounds.
    pub fn has_shape(&self, n_sparse: usize, n_classes: usize) -> bool {
        self.n_sparse == n_sparse
            && self.n_classes == n_classes
            && self.w.len() == (n_sparse + self.dense_dim) * n_classes
            && self.b.len() == n_classes
    }

    /// Raw scores for one example.
    pub fn logits(&self, sparse: &[(u32, f32)], dense: Option<&[f32]>) -> Vec<f32> {
        let k = self.n_classes;
        let mut z = self.b.clone();
        accumulate(&self.w, k, self.n_sparse, sparse, dense, &mut z);
        z
    }
}

fn accumulate(
    w: &[f32],
    k: usize,
    n_sparse: usize,
    sparse: &[(u32, f32)],
    dense: Option<&[f32]>,
    z: &mut [f32],
) {
    for &(c, v) in sparse {
        let row = &w[c as usize * k..(c as usize + 1) * k];
        for (zj, wj) in z.iter_mut().zip(row) {
            *zj += v * wj;
        }
    }
    if let Some(d) = dense {
        for (i, &v) in d.iter().enumerate() {
            let c = n_sparse + i;
            let row = &w[c * k..(c + 1) * k];
            for (zj, wj) in z.iter_mut().zip(row) {
                *zj += v * wj;
            }
        }
    }
}

/// Softmax in place; returns log-sum-exp.
pub(crate) fn softmax(z: &mut [f32]) -> f32 {
    let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for v in z.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    for v in z.iter_mut() {
        *v /= s;
    }
    m + s.ln()
}

/// Objective and gradient at parameters `x` = [w..., b...].
fn objective(data: &Data, x: &[f32], l2: f32, grad: &mut [f32]) -> f64 {
    let k = data.n_classes;
    let nw = (data.n_sparse + data.dense_dim()) * k;
    let (w, b) = x.split_at(nw);
    let n = data.len();
    let total_weight: f64 = match data.weights {
        Some(ws) => ws.iter().map(|&v| v as f64).sum(),
        None => n as f64,
    };
    let threads = rayon::current_num_threads().max(1);
    let chunk = n.div_ceil(threads).max(1);
    let (loss, g) = (0..n)
        .collect::<Vec<_>>()
        .par_chunks(chunk)
        .map(|idx| {
            let mut g = vec![0f32; x.len()];
            let mut loss = 0f64;
            let mut z = vec![0f32; k];
            for &i in idx {
                z.copy_from_slice(b);
                let dense = data.dense.map(|d| d[i].as_slice());
                accumulate(w, k, data.n_sparse, &data.sparse[i], dense, &mut z);
                let y = data.labels[i] as usize;
                let zy = z[y];
                let lse = softmax(&mut z);
                let wi = data.weights.map_or(1.0, |ws| ws[i]);
                loss += (wi * (lse - zy)) as f64;
                z[y] -= 1.0;
                for v in z.iter_mut() {
                    *v *= wi;
                }
                let (gw, gb) = g.split_at_mut(nw);
                for (gbj, zj) in gb.iter_mut().zip(&z) {
                    *gbj += zj;
                }
                for &(c, v) in &data.sparse[i] {
                    let row = &mut gw[c as usize * k..(c as usize + 1) * k];
                    for (gj, zj) in row.iter_mut().zip(&z) {
                        *gj += v * zj;
                    }
                }
                if let Some(d) = dense {
                    for (j, &v) in d.iter().enumerate() {
                        let c = data.n_sparse + j;
                        let row = &mut gw[c * k..(c + 1) * k];
                        for (gj, zj) in row.iter_mut().zip(&z) {
                            *gj += v * zj;
                        }
                    }
                }
            }
            (loss, g)
        })
        .reduce(
            || (0.0, vec![0f32; x.len()]),
            |(la, mut ga), (lb, gb)| {
                for (a, b) in ga.iter_mut().zip(&gb) {
                    *a += b;
                }
                (la + lb, ga)
            },
        );
    let inv = (1.0 / total_weight) as f32;
    let mut reg = 0f64;
    for (i, ((gi, &gsum), &xi)) in grad.iter_mut().zip(&g).zip(x).enumerate() {
        *gi = gsum * inv;
        if i < nw {
            *gi += l2 * xi;
            reg += (xi * xi) as f64;
        }
    }
    loss / total_weight + 0.5 * l2 as f64 * reg
}

fn dotf(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum()
}

/// Trains from `init` (warm start) or from zeros.
pub(crate) fn train(data: &Data, opts: TrainOptions, init: Option<&Linear>) -> Linear {
    let k = data.n_classes;
    let dense_dim = data.dense_dim();
    let mut model = match init {
        Some(m) if m.n_sparse == data.n_sparse && m.dense_dim == dense_dim && m.n_classes == k => {
            m.clone()
        }
        _ => Linear::zeros(data.n_sparse, dense_dim, k),
    };
    let nw = model.w.len();
    let mut x: Vec<f32> = model.w.iter().chain(&model.b).copied().collect();
    let dim = x.len();
    let mut g = vec![0f32; dim];
    let mut f = objective(data, &x, opts.l2, &mut g);
    const M: usize = 10;
    let mut s_hist: Vec<Vec<f32>> = Vec::new();
    let mut y_hist: Vec<Vec<f32>> = Vec::new();
    let mut rho: Vec<f64> = Vec::new();
    let mut history = vec![f];
    let mut x_new = vec![0f32; dim];
    let mut g_new = vec![0f32; dim];
    for iter in 0..opts.max_iter {
        // two-loop recursion: d = -H g
        let mut q: Vec<f32> = g.clone();
        let mut alpha = vec![0f64; s_hist.len()];
        for i in (0..s_hist.len()).rev() {
            alpha[i] = rho[i] * dotf(&s_hist[i], &q);
            let a = alpha[i] as f32;
            for (qj, yj) in q.iter_mut().zip(&y_hist[i]) {
                *qj -= a * yj;
            }
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(y)) => (dotf(s, y) / dotf(y, y)) as f32,
            _ => (1.0 / dotf(&g, &g).sqrt().max(1e-12)) as f32,
        };
        for qj in q.iter_mut() {
            *qj *= gamma;
        }
        for i in 0..s_hist.len() {
            let beta = rho[i] * dotf(&y_hist[i], &q);
            let c = (alpha[i] - beta) as f32;
            for (qj, sj) in q.iter_mut().zip(&s_hist[i]) {
                *qj += c * sj;
            }
        }
        let mut dg = -dotf(&q, &g);
        if dg >= 0.0 {
            // not a descent direction: restart with steepest descent
            s_hist.clear();
            y_hist.clear();
            rho.clear();
            let scale = (1.0 / dotf(&g, &g).sqrt().max(1e-12)) as f32;
            for (qj, gj) in q.iter_mut().zip(&g) {
                *qj = gj * scale;
            }
            dg = -dotf(&q, &g);
        }
        // backtracking line search (Armijo) along -q
        let mut step = 1.0f32;
        let mut f_new;
        let mut tries = 0;
        loop {
            for ((xn, xj), qj) in x_new.iter_mut().zip(&x).zip(&q) {
                *xn = xj - step * qj;
            }
            f_new = objective(data, &x_new, opts.l2, &mut g_new);
            if f_new <= f + 1e-4 * step as f64 * dg || tries >= 20 {
                break;
            }
            step *= 0.5;
            tries += 1;
        }
        if f_new > f {
            break;
        }
        let s: Vec<f32> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f32> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dotf(&s, &y);
        if sy > 1e-10 {
            if s_hist.len() == M {
                s_hist.remove(0);
                y_hist.remove(0);
                rho.remove(0);
            }
            s_hist.push(s);
            y_hist.push(y);
            rho.push(1.0 / sy);
        }
        std::mem::swap(&mut x, &mut x_new);
        std::mem::swap(&mut g, &mut g_new);
        f = f_new;
        history.push(f);
        if history.len() > 5 {
            let old = history[history.len() - 6];
            if (old - f) / old.abs().max(1e-12) < opts.tol as f64 {
                tracing::debug!(iter, loss = f, "L-BFGS converged");
                break;
            }
        }
    }
    model.w.copy_from_slice(&x[..nw]);
    model.b.copy_from_slice(&x[nw..]);
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_three_classes() {
        // class = which of the three sparse columns is set; the dense part is noise-free
        let sparse: Vec<SparseRow> = (0..30).map(|i| vec![((i % 3) as u32, 1.0)]).collect();
        let dense: Vec<Vec<f32>> = (0..30).map(|i| vec![(i % 3) as f32 * 0.1]).collect();
        let labels: Vec<u32> = (0..30).map(|i| (i % 3) as u32).collect();
        let data = Data {
            sparse: &sparse,
            dense: Some(&dense),
            n_sparse: 3,
            labels: &labels,
            weights: None,
            n_classes: 3,
        };
        let m = train(
            &data,
            TrainOptions {
                l2: 1e-3,
                max_iter: 200,
                tol: 1e-6,
            },
            None,
        );
        for c in 0..3u32 {
            let mut z = m.logits(&[(c, 1.0)], Some(&[c as f32 * 0.1]));
            softmax(&mut z);
            assert!(z[c as usize] > 0.9, "class {c}: {z:?}");
        }
    }
}
