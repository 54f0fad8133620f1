//! Rotary position embeddings, in the half-split layout (Hugging Face `rotate_half`, used by
//! Llama/Qwen checkpoints) and the interleaved layout (pairs of adjacent dimensions).

use rayon::prelude::*;

use crate::Real;

/// Which dimensions form a rotated pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Dimension `i` pairs with `i + d/2`.
    HalfSplit,
    /// Dimension `2i` pairs with `2i + 1`.
    Interleaved,
}

/// Precomputed cos/sin for positions `0..max_pos` and `head_dim / 2` frequencies.
#[derive(Debug, Clone)]
pub struct RopeTable<T> {
    cos: Vec<T>,
    sin: Vec<T>,
    half: usize,
    max_pos: usize,
}

impl<T: Real> RopeTable<T> {
    /// Frequencies `theta^(-2i/d)`.
    pub fn new(head_dim: usize, max_pos: usize, theta: f64) -> Self {
        assert!(head_dim.is_multiple_of(2), "rope: head_dim {head_dim} must be even");
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for i in 0..half {
                let freq = theta.powf(-2.0 * i as f64 / head_dim as f64);
                let angle = p as f64 * freq;
                cos.push(T::from_f64(angle.cos()).expect("finite"));
                sin.push(T::from_f64(angle.sin()).expect("finite"));
            }
        }
        Self { cos, sin, half, max_pos }
    }

    /// `cos(p·θᵢ)` as [max_pos, head_dim/2].
    pub fn cos(&self) -> &[T] {
        &self.cos
    }

    /// `sin(p·θᵢ)` as [max_pos, head_dim/2].
    pub fn sin(&self) -> &[T] {
        &self.sin
    }

    /// Positions the table covers.
    pub fn max_pos(&self) -> usize {
        self.max_pos
    }
}

fn rotate<T: Real>(x: &mut [T], table: &RopeTable<T>, heads: usize, start_pos: usize, layout: RopeLayout, sign: T) {
    let half = table.half;
    let d = 2 * half;
    let row = heads * d;
    assert!(x.len().is_multiple_of(row), "rope: buffer is not a whole number of [heads, head_dim] rows");
    let tokens = x.len() / row;
    assert!(
        start_pos + tokens <= table.max_pos,
        "rope: position {} is past the table's {}",
        start_pos + tokens,
        table.max_pos
    );
    x.par_chunks_mut(row).enumerate().for_each(|(t, tok)| {
        let base = (start_pos + t) * half;
        let (cos, sin) = (&table.cos[base..base + half], &table.sin[base..base + half]);
        for head in tok.chunks_mut(d) {
            for i in 0..half {
                let (a, b) = match layout {
                    RopeLayout::HalfSplit => (i, i + half),
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                };
                let (x0, x1) = (head[a], head[b]);
                let s = sign * sin[i];
                head[a] = x0 * cos[i] - x1 * s;
                head[b] = x1 * cos[i] + x0 * s;
            }
        }
    });
}

/// Rotate `x` ([tokens, heads, head_dim], token `t` at position `start_pos + t`) in place.
pub fn rope_forward<T: Real>(x: &mut [T], table: &RopeTable<T>, heads: usize, start_pos: usize, layout: RopeLayout) {
    rotate(x, table, heads, start_pos, layout, T::one());
}

/// The backward of [`rope_forward`] (rotation by the opposite angle), in place on the gradient.
pub fn rope_backward<T: Real>(dx: &mut [T], table: &RopeTable<T>, heads: usize, start_pos: usize, layout: RopeLayout) {
    rotate(dx, table, heads, start_pos, layout, -T::one());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testing::*;

    #[test]
    fn half_split_matches_rotate_half_and_backward_matches_finite_differences() {
        let (tokens, heads, d) = (4, 2, 6);
        let table = RopeTable::<f64>::new(d, 16, 10_000.0);
        let x = random(tokens * heads * d, 1);
        let mut y = x.clone();
        rope_forward(&mut y, &table, heads, 3, RopeLayout::HalfSplit);
        // Reference: x*cos + rotate_half(x)*sin with cos/sin repeated over both halves.
        for t in 0..tokens {
            for h in 0..heads {
                let o = (t * heads + h) * d;
                for i in 0..d {
                    let f = 10_000f64.powf(-2.0 * (i % 3) as f64 / d as f64);
                    let ang = (t + 3) as f64 * f;
                    let rot = if i < 3 { -x[o + i + 3] } else { x[o + i - 3] };
                    let want = x[o + i] * ang.cos() + rot * ang.sin();
                    assert!((y[o + i] - want).abs() < 1e-12, "t{t} h{h} i{i}");
                }
            }
        }
        for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
            let up = random(x.len(), 2);
            let mut dx = up.clone();
            rope_backward(&mut dx, &table, heads, 3, layout);
            let num = numeric_grad(&x, |x| {
                let mut y = x.to_vec();
                rope_forward(&mut y, &table, heads, 3, layout);
                dot(&y, &up)
            });
            assert_close(&dx, &num, 1e-7, &format!("{layout:?}"));
        }
    }
}
