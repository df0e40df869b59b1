//! The nearest-example check of out of scope: is a message at least as similar as the
//! bound to some training example? It is asked of every message, and a tenant may have
//! thousands of examples, so the examples are kept as i8 grouped by intent, and the
//! predicted intent's are read first: an in-scope message usually meets its bound among
//! them and the rest is never read.

use serde::{Deserialize, Serialize};

/// Training embeddings quantised to i8 (x127), grouped by intent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct ExampleEmbeddings {
    dim: usize,
    /// Row-major, one row per example, intent after intent.
    values: Vec<i8>,
    /// Example rows of intent `c`: `starts[c]..starts[c + 1]`.
    starts: Vec<usize>,
}

impl ExampleEmbeddings {
    /// `classes[i]` (below `n_classes`) is the intent of `embeddings[i]`.
    pub(super) fn new(embeddings: &[Vec<f32>], classes: &[u32], n_classes: usize) -> Self {
        let mut order: Vec<usize> = (0..embeddings.len()).collect();
        order.sort_by_key(|&i| classes[i]);
        let mut starts = vec![0; n_classes + 1];
        for &c in classes {
            starts[c as usize + 1] += 1;
        }
        for c in 0..n_classes {
            starts[c + 1] += starts[c];
        }
        Self {
            dim: embeddings.first().map_or(0, Vec::len),
            values: order
                .iter()
                .flat_map(|&i| quantize(&embeddings[i]))
                .collect(),
            starts,
        }
    }

    /// True when the stored rows and intent ranges agree with each other, with `n_classes`
    /// and with embeddings of `dim` values (none stored is consistent too).
    pub(super) fn fits(&self, n_classes: usize, dim: usize) -> bool {
        if self.values.is_empty() {
            return true;
        }
        self.dim == dim
            && self.starts.len() == n_classes + 1
            && self.starts[0] == 0
            && self.starts.windows(2).all(|w| w[0] <= w[1])
            && self.starts[n_classes] * dim == self.values.len()
    }

    /// True when some example's cosine similarity to `e` (as i8 products) is at least
    /// `bound`, or when there are no examples to compare with. Intent `first`'s examples
    /// are tried first; the answer does not depend on the order.
    pub(super) fn any_within(&self, e: &[f32], first: usize, bound: f32) -> bool {
        if self.values.is_empty() {
            return true;
        }
        let q: Vec<i8> = quantize(e).collect();
        // A message fills only its language's block of the embedding; the rest of the
        // product is zero, and skipping it spares a third of the memory read or more.
        let Some(lo) = q.iter().position(|&x| x != 0) else {
            return 0.0 >= bound;
        };
        let hi = q.iter().rposition(|&x| x != 0).map_or(lo, |last| last + 1);
        let block = self.starts[first] * self.dim..self.starts[first + 1] * self.dim;
        let scan = |rows: &[i8]| reaches(rows, self.dim, lo, &q[lo..hi], bound);
        scan(&self.values[block.clone()])
            || scan(&self.values[..block.start])
            || scan(&self.values[block.end..])
    }
}

fn quantize(v: &[f32]) -> impl Iterator<Item = i8> + '_ {
    v.iter()
        .map(|x| (x * 127.0).round().clamp(-127.0, 127.0) as i8)
}

/// Whether some row of `rows` (rows of `dim` values), from column `from` on, has a
/// product with `q` of at least `bound` x 127².
fn reaches(rows: &[i8], dim: usize, from: usize, q: &[i8], bound: f32) -> bool {
    // Compiled again for wider vectors; the CPU picks one. Same integers in every version.
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has AVX-512BW (checked just above).
            return unsafe { reaches_avx512(rows, dim, from, q, bound) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { reaches_avx2(rows, dim, from, q, bound) };
        }
    }
    reaches_portable(rows, dim, from, q, bound)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn reaches_avx512(rows: &[i8], dim: usize, from: usize, q: &[i8], bound: f32) -> bool {
    reaches_portable(rows, dim, from, q, bound)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn reaches_avx2(rows: &[i8], dim: usize, from: usize, q: &[i8], bound: f32) -> bool {
    reaches_portable(rows, dim, from, q, bound)
}

#[inline(always)]
fn reaches_portable(rows: &[i8], dim: usize, from: usize, q: &[i8], bound: f32) -> bool {
    rows.chunks_exact(dim).any(|row| {
        let product: i32 = row[from..from + q.len()]
            .iter()
            .zip(q)
            .map(|(&a, &b)| i32::from(a) * i32::from(b))
            .sum();
        product as f32 / (127.0 * 127.0) >= bound
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unit vectors along axes 0..4 of a 6-dimensional space, with their intents.
    fn examples() -> ExampleEmbeddings {
        let axis = |k: usize| (0..6).map(|j| f32::from(u8::from(j == k))).collect();
        ExampleEmbeddings::new(&[axis(0), axis(1), axis(2), axis(3)], &[1, 0, 1, 0], 2)
    }

    #[test]
    fn any_example_of_any_intent_can_be_the_near_one() {
        let ex = examples();
        let near_axis_2 = [0.0, 0.1, 0.9, 0.0, 0.0, 0.0];
        for first in 0..2 {
            assert!(ex.any_within(&near_axis_2, first, 0.85));
            assert!(!ex.any_within(&near_axis_2, first, 0.95));
        }
    }

    #[test]
    fn a_message_outside_every_example_is_far() {
        let ex = examples();
        let off = [0.0, 0.0, 0.0, 0.0, 0.6, 0.8];
        assert!(!ex.any_within(&off, 0, 0.15));
        // an empty embedding reaches only a bound of zero or below
        assert!(!ex.any_within(&[0.0; 6], 1, 0.15));
        assert!(ex.any_within(&[0.0; 6], 1, 0.0));
    }

    #[test]
    fn stored_examples_must_fit_the_model() {
        let ex = examples();
        assert!(ex.fits(2, 6));
        assert!(!ex.fits(3, 6));
        assert!(!ex.fits(2, 5));
        let mut cut = ex.clone();
        cut.values.truncate(6);
        assert!(!cut.fits(2, 6));
    }

    #[test]
    fn without_examples_every_message_is_near() {
        let none = ExampleEmbeddings::new(&[], &[], 2);
        assert!(none.any_within(&[1.0, 0.0], 0, 0.99));
    }
}
