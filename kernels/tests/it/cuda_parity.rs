//! Every CUDA op against the CPU reference on fresh random inputs, with relative-error bounds
//! for bf16. These need a GPU: `cargo xtask device-check` runs them (`--ignored`) on a machine
//! that has one.

#![cfg(feature = "cuda")]

use trex_kernels::cpu::{self, AttentionShape, RopeLayout, RopeTable, Trans};
use trex_kernels::cuda::{AdamW, Device, Mat, from_bf16, to_bf16};

/// Inputs rounded to bf16 so that both backends see the same values.
fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f32 / (1u64 << 53) as f32;
            from_bf16(to_bf16((2.0 * u - 1.0) * scale))
        })
        .collect()
}

fn bf(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| to_bf16(v)).collect()
}

fn unbf(x: &[u16]) -> Vec<f32> {
    x.iter().map(|&v| from_bf16(v)).collect()
}

/// ‖got − want‖ / ‖want‖ must stay under `tol`.
fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let err: f32 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
    let norm: f32 = want.iter().map(|b| b * b).sum::<f32>().sqrt().max(1e-12);
    assert!(err / norm < tol, "{what}: relative error {} ≥ {tol}", err / norm);
    println!("{what}: relative error {:.2e}", err / norm);
}

const BF16_TOL: f32 = 2e-2;

fn device() -> Device {
    Device::open(0).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
#[ignore = "needs a CUDA device: cargo xtask device-check"]
fn rms_norm_matches_cpu() {
    let dev = device();
    let (rows, d) = (37, 576);
    let (x, w, dy) = (random(rows * d, 1, 2.0), random(d, 2, 1.0), random(rows * d, 3, 1.0));
    let (mut y, mut r, mut dx) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows * d]);
    cpu::rms_norm_forward(&x, &w, 1e-5, d, &mut y, &mut r);
    cpu::rms_norm_backward(&x, &w, &r, &dy, d, &mut dx);
    let (xd, wd, dyd) = (dev.upload(&bf(&x)).unwrap(), dev.upload(&bf(&w)).unwrap(), dev.upload(&bf(&dy)).unwrap());
    let (mut yd, mut rd, mut dxd) =
        (dev.zeros(rows * d).unwrap(), dev.zeros(rows).unwrap(), dev.zeros(rows * d).unwrap());
    dev.rms_norm_forward(&xd, &wd, 1e-5, d, &mut yd, &mut rd).unwrap();
    dev.rms_norm_backward(&xd, &wd, &rd, &dyd, d, &mut dxd).unwrap();
    close(&unbf(&dev.download(&yd).unwrap()), &y, BF16_TOL, "rms_norm forward");
    close(&dev.download(&rd).unwrap(), &r, 1e-4, "rms_norm inv_rms");
    close(&unbf(&dev.download(&dxd).unwrap()), &dx, BF16_TOL, "rms_norm backward");
}

#[test]
#[ignore = "needs a CUDA device: cargo xtask device-check"]
fn rope_matches_cpu_both_layouts_and_directions() {
    let dev = device();
    let (tokens, heads, hd, start) = (19, 9, 64, 5);
    let table = RopeTable::<f32>::new(hd, 64, 100_000.0);
    let half = hd / 2;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in 0..64 {
        for i in 0..half {
            let a = p as f64 * 100_000f64.powf(-2.0 * i as f64 / hd as f64);
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    let (cd, sd) = (dev.upload(&cos).unwrap(), dev.upload(&sin).unwrap());
    for (layout, interleaved) in [(RopeLayout::HalfSplit, false), (RopeLayout::Interleaved, true)] {
        let x = random(tokens * heads * hd, 4, 1.0);
        let mut want = x.clone();
        cpu::rope_forward(&mut want, &table, heads, start, layout);
        let mut xd = dev.upload(&bf(&x)).unwrap();
        dev.rope(&mut xd, &cd, &sd, heads, hd, start, interleaved, 1.0).unwrap();
        close(&unbf(&dev.download(&xd).unwrap()), &want, BF16_TOL, &format!("rope forward {layout:?}"));
        cpu::rope_backward(&mut want, &table, heads, start, layout);
        dev.rope(&mut xd, &cd, &sd, heads, hd, start, interleaved, -1.0).unwrap();
        close(&unbf(&dev.download(&xd).unwrap()), &want, BF16_TOL, &format!("rope backward {layout:?}"));
    }
    // Packed: two sequences, each starting again at position 0.
    let lens = [7usize, 12];
    let x = random(tokens * heads * hd, 5, 1.0);
    let mut want = x.clone();
    let mut at = 0;
    for &len in &lens {
        cpu::rope_forward(&mut want[at * heads * hd..(at + len) * heads * hd], &table, heads, 0, RopeLayout::HalfSplit);
        at += len;
    }
    let positions: Vec<i32> = lens.iter().flat_map(|&l| 0..l as i32).collect();
    let mut xd = dev.upload(&bf(&x)).unwrap();
    dev.rope_packed(&mut xd, &cd, &sd, heads, hd, &dev.upload(&positions).unwrap(), 11, false, 1.0).unwrap();
    close(&unbf(&dev.download(&xd).unwrap()), &want, BF16_TOL, "rope packed");
}

#[test]
#[ignore = "needs a CUDA device: cargo xtask device-check"]
fn swiglu_matches_cpu() {
    let dev = device();
    let n = 1536 * 33;
    let (g, u, dh) = (random(n, 5, 3.0), random(n, 6, 1.0), random(n, 7, 1.0));
    let (mut h, mut dg, mut du) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    cpu::swiglu_forward(&g, &u, &mut h);
    cpu::swiglu_backward(&g, &u, &dh, &mut dg, &mut du);
    let (gd, ud, dhd) = (dev.upload(&bf(&g)).unwrap(), dev.upload(&bf(&u)).unwrap(), dev.upload(&bf(&dh)).unwrap());
    let (mut hd, mut dgd, mut dud) = (dev.zeros(n).unwrap(), dev.zeros(n).unwrap(), dev.zeros(n).unwrap());
    dev.swiglu_forward(&gd, &ud, &mut hd).unwrap();
    dev.swiglu_backward(&gd, &ud, &dhd, &mut dgd, &mut dud).unwrap();
    close(&unbf(&dev.download(&hd).unwrap()), &h, BF16_TOL, "swiglu forward");
    close(&unbf(&dev.download(&dgd).unwrap()), &dg, BF16_TOL, "swiglu dg");
    close(&unbf(&dev.download(&dud).unwrap()), &du, BF16_TOL, "swiglu du");
}

#[test]
#[ignore = "needs a CUDA device: cargo xtask device-check"]
fn embedding_and_gemm_match_cpu() {
    let dev = device();
    let (vocab, d) = (300, 96);
    let table = random(vocab * d, 8, 1.0);
    let ids: Vec<i32> = (0..50).map(|i| (i * 37 % vocab) as i32).collect();
    let mut out = dev.zeros(ids.len() * d).unwrap();
    dev.embedding_forward(&dev.upload(&bf(&table)).unwrap(), &dev.upload(&ids).unwrap(), d, &mut out).unwrap();
    let want: Vec<f32> = ids.iter().flat_map(|&i| table[i as usize * d..(i as usize + 1) * d].to_vec()).collect();
    close(&unbf(&dev.download(&out).unwrap()), &want, 1e-6, "embedding");
    for (ta, tb) in [(false, false), (false, true), (true, false)] {
        let (m, n, k) = (45, 70, 96);
        let a = random(m * k, 9, 1.0);
        let b = random(k * n, 10, 1.0);
        let mut c = vec![0.0f32; m * n];
        let t = |x: bool| if x { Trans::T } else { Trans::N };
        cpu::matmul(t(ta), t(tb), m, n, k, 1.0, &a, &b, 0.0, &mut c);
        let (ad, bd) = (dev.upload(&bf(&a)).unwrap(), dev.upload(&bf(&b)).unwrap());
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let (br, bc) = if tb { (n, k) } else { (k, n) };
        let mut cd = dev.zeros::<f32>(m * n).unwrap();
        dev.gemm(
            Mat { data: &ad, offset: 0, rows: ar, cols: ac, t: ta },
            Mat { data: &bd, offset: 0, rows: br, cols: bc, t: tb },
            &mut cd,
            1.0,
            0.0,
        )
        .unwrap();
        close(&dev.download(&cd).unwrap(), &c, 1e-3, &format!("gemm ta={ta} tb={tb}"));
    }
}

#[test]
#[ignore = "needs a CUDA device: cargo xtask device-check"]
fn fused_adamw_matches_a_plain_update() {
    let dev = device();
    let n = 10_000;
    let (p, g) = (random(n, 11, 1.0), random(n, 12, 0.1));
    let hp = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    let (mut pd, gd) = (dev.upload(&p).unwrap(), dev.upload(&g).unwrap());
    let (mut md, mut vd) = (dev.zeros::<f32>(n).unwrap(), dev.zeros::<f32>(n).unwrap());
    let mut copy = dev.zeros::<u16>(n).unwrap();
    for step in 1..=3 {
        dev.adamw(&mut pd, &gd, &mut md, &mut vd, Some(&mut copy), hp, step, 1.0).unwrap();
    }
    let (mut pw, mut m, mut v) = (p.clone(), vec![0.0f32; n], vec![0.0f32; n]);
    for step in 1..=3 {
        for i in 0..n {
            m[i] = 0.9 * m[i] + 0.1 * g[i];
            v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
            let (mh, vh) = (m[i] / (1.0 - 0.9f32.powi(step)), v[i] / (1.0 - 0.999f32.powi(step)));
            pw[i] = pw[i] * (1.0 - 1e-3 * 0.01) - 1e-3 * mh / (vh.sqrt() + 1e-8);
        }
    }
    close(&dev.download(&pd).unwrap(), &pw, 1e-5, "adamw parameters");
    close(&unbf(&dev.download(&copy).unwrap()), &pw, 1e-2, "adamw bf16 copy");
}

#[test]
#[ignore = "needs a CUDA device: cargo xtask device-check"]
fn cross_entropy_with_the_lm_head_in_chunks_matches_cpu() {
    let dev = device();
    let (rows, d, vocab, chunk) = (24, 64, 1000, 256);
    let (h, head) = (random(rows * d, 13, 1.0), random(vocab * d, 14, 0.5));
    let targets: Vec<i32> = (0..rows).map(|i| if i % 5 == 4 { -1 } else { (i * 41 % vocab) as i32 }).collect();
    let counted = targets.iter().filter(|&&t| t >= 0).count();
    let scale = 1.0 / counted as f32;
    let mut logits = vec![0.0f32; rows * vocab];
    cpu::matmul(Trans::N, Trans::T, rows, vocab, d, 1.0, &h, &head, 0.0, &mut logits);
    let t64: Vec<i64> = targets.iter().map(|&t| i64::from(t)).collect();
    let (loss, n) = cpu::cross_entropy(&mut logits, &t64, vocab, scale);
    let mut dh = vec![0.0f32; rows * d];
    cpu::matmul(Trans::N, Trans::N, rows, d, vocab, 1.0, &logits, &head, 0.0, &mut dh);
    let mut dhd = dev.zeros::<u16>(rows * d).unwrap();
    let (hd, headd) = (dev.upload(&bf(&h)).unwrap(), dev.upload(&bf(&head)).unwrap());
    let (gl, gn) = dev.cross_entropy_lm_head(&hd, &headd, &targets, d, chunk, scale, &mut dhd).unwrap();
    assert_eq!(gn, n);
    assert!((gl - loss).abs() / loss < 1e-3, "loss {gl} vs {loss}");
    close(&unbf(&dev.download(&dhd).unwrap()), &dh, BF16_TOL, "cross-entropy dh");
}

#[test]
#[ignore = "needs a CUDA device: cargo xtask device-check"]
fn flash_attention_matches_cpu_forward_and_backward() {
    let dev = device();
    for (seq, heads, kv_heads, head_dim) in [(70, 9, 3, 64), (33, 4, 4, 128), (5, 2, 1, 32)] {
        let shape = AttentionShape { seq, heads, kv_heads, head_dim };
        let (q, k, v) = (
            random(seq * heads * head_dim, 15, 1.0),
            random(seq * kv_heads * head_dim, 16, 1.0),
            random(seq * kv_heads * head_dim, 17, 1.0),
        );
        let dout = random(q.len(), 18, 1.0);
        let (mut out, mut probs) = (vec![0.0; q.len()], vec![0.0; heads * seq * seq]);
        cpu::attention_forward(shape, &q, &k, &v, &mut out, &mut probs);
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        cpu::attention_backward(shape, &q, &k, &v, &probs, &dout, &mut dq, &mut dk, &mut dv);
        let (qd, kd, vd) = (dev.upload(&bf(&q)).unwrap(), dev.upload(&bf(&k)).unwrap(), dev.upload(&bf(&v)).unwrap());
        let (mut od, mut lse) = (dev.zeros::<u16>(q.len()).unwrap(), dev.zeros::<f32>(heads * seq).unwrap());
        dev.attention_forward(shape, &qd, &kd, &vd, &mut od, &mut lse).unwrap();
        let what = format!("attention seq {seq} heads {heads}/{kv_heads} d {head_dim}");
        close(&unbf(&dev.download(&od).unwrap()), &out, BF16_TOL, &format!("{what} forward"));
        let dod = dev.upload(&bf(&dout)).unwrap();
        let (mut dqd, mut dkd, mut dvd) = (
            dev.zeros::<u16>(q.len()).unwrap(),
            dev.zeros::<u16>(k.len()).unwrap(),
            dev.zeros::<u16>(v.len()).unwrap(),
        );
        dev.attention_backward(shape, &qd, &kd, &vd, &od, &lse, &dod, &mut dqd, &mut dkd, &mut dvd).unwrap();
        close(&unbf(&dev.download(&dqd).unwrap()), &dq, 3e-2, &format!("{what} dq"));
        close(&unbf(&dev.download(&dkd).unwrap()), &dk, 3e-2, &format!("{what} dk"));
        close(&unbf(&dev.download(&dvd).unwrap()), &dv, 3e-2, &format!("{what} dv"));
    }
}

/// Three sequences packed end to end: each attends only within itself, as three separate calls
/// on the CPU do.
#[test]
#[ignore = "needs a CUDA device: cargo xtask device-check"]
fn packed_attention_matches_per_sequence_cpu() {
    let dev = device();
    let (heads, kv_heads, head_dim) = (9, 3, 64);
    let lens = [21usize, 50, 3];
    let tokens: usize = lens.iter().sum();
    let (q, k, v) = (
        random(tokens * heads * head_dim, 25, 1.0),
        random(tokens * kv_heads * head_dim, 26, 1.0),
        random(tokens * kv_heads * head_dim, 27, 1.0),
    );
    let dout = random(q.len(), 28, 1.0);
    let (mut out, mut dq, mut dk, mut dv) =
        (vec![0.0; q.len()], vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let mut at = 0;
    for &seq in &lens {
        let shape = AttentionShape { seq, heads, kv_heads, head_dim };
        let (qs, ks) = (
            at * heads * head_dim..(at + seq) * heads * head_dim,
            at * kv_heads * head_dim..(at + seq) * kv_heads * head_dim,
        );
        let mut probs = vec![0.0; heads * seq * seq];
        cpu::attention_forward(shape, &q[qs.clone()], &k[ks.clone()], &v[ks.clone()], &mut out[qs.clone()], &mut probs);
        cpu::attention_backward(
            shape,
            &q[qs.clone()],
            &k[ks.clone()],
            &v[ks.clone()],
            &probs,
            &dout[qs.clone()],
            &mut dq[qs],
            &mut dk[ks.clone()],
            &mut dv[ks],
        );
        at += seq;
    }
    let shape = AttentionShape { seq: 0, heads, kv_heads, head_dim };
    let packing = dev.packing(&lens).unwrap();
    let (qd, kd, vd) = (dev.upload(&bf(&q)).unwrap(), dev.upload(&bf(&k)).unwrap(), dev.upload(&bf(&v)).unwrap());
    let (mut od, mut lse) = (dev.zeros::<u16>(q.len()).unwrap(), dev.zeros::<f32>(heads * tokens).unwrap());
    dev.attention_forward_packed(shape, &packing, &qd, &kd, &vd, &mut od, &mut lse).unwrap();
    close(&unbf(&dev.download(&od).unwrap()), &out, BF16_TOL, "packed attention forward");
    let dod = dev.upload(&bf(&dout)).unwrap();
    let (mut dqd, mut dkd, mut dvd) =
        (dev.zeros::<u16>(q.len()).unwrap(), dev.zeros::<u16>(k.len()).unwrap(), dev.zeros::<u16>(v.len()).unwrap());
    dev.attention_backward_packed(shape, &packing, &qd, &kd, &vd, &od, &lse, &dod, &mut dqd, &mut dkd, &mut dvd)
        .unwrap();
    close(&unbf(&dev.download(&dqd).unwrap()), &dq, 3e-2, "packed attention dq");
    close(&unbf(&dev.download(&dkd).unwrap()), &dk, 3e-2, "packed attention dk");
    close(&unbf(&dev.download(&dvd).unwrap()), &dv, 3e-2, "packed attention dv");
}

/// Bias, scatter, dropout (rate, scaling, reproducibility) and the sum of squares.
#[test]
#[ignore = "needs a CUDA device: cargo xtask device-check"]
fn bias_scatter_dropout_and_sum_of_squares() {
    let dev = device();
    let (rows, cols) = (13, 40);
    let (y, b) = (random(rows * cols, 30, 1.0), random(cols, 31, 1.0));
    let mut yd = dev.upload(&bf(&y)).unwrap();
    dev.add_bias(&mut yd, &dev.upload(&bf(&b)).unwrap()).unwrap();
    let want: Vec<f32> = y.iter().enumerate().map(|(i, v)| v + b[i % cols]).collect();
    close(&unbf(&dev.download(&yd).unwrap()), &want, 1e-2, "add_bias");
    let rows_idx = vec![4i32, 0, 11];
    let src = random(3 * cols, 32, 1.0);
    let mut dst = dev.zeros::<u16>(rows * cols).unwrap();
    dev.scatter_rows(&dev.upload(&bf(&src)).unwrap(), &dev.upload(&rows_idx).unwrap(), cols, &mut dst).unwrap();
    let got = unbf(&dev.download(&dst).unwrap());
    for (j, &r) in rows_idx.iter().enumerate() {
        assert_eq!(&got[r as usize * cols..(r as usize + 1) * cols], &src[j * cols..(j + 1) * cols]);
    }
    assert!(got[cols..2 * cols].iter().all(|&x| x == 0.0), "rows not named stay untouched");
    let n = 100_000;
    let ones = dev.upload(&vec![to_bf16(1.0); n]).unwrap();
    let mut out = dev.zeros::<u16>(n).unwrap();
    dev.dropout(&ones, &mut out, 0.25, 7).unwrap();
    let kept = unbf(&dev.download(&out).unwrap());
    let rate = kept.iter().filter(|&&x| x == 0.0).count() as f32 / n as f32;
    assert!((rate - 0.25).abs() < 0.01, "dropout rate {rate}");
    assert!(kept.iter().all(|&x| x == 0.0 || (x - 4.0 / 3.0).abs() < 1e-2), "kept values are scaled by 1/(1-p)");
    let mut again = dev.zeros::<u16>(n).unwrap();
    dev.dropout(&ones, &mut again, 0.25, 7).unwrap();
    assert_eq!(dev.download(&again).unwrap(), dev.download(&out).unwrap(), "same seed, same mask");
    let mut acc = dev.zeros::<u16>(n).unwrap();
    dev.dropout_add(&mut acc, &ones, 0.25, 7).unwrap();
    assert_eq!(dev.download(&acc).unwrap(), dev.download(&out).unwrap(), "dropout_add adds the same mask");
    let g = random(50_000, 33, 1.0);
    let ss = dev.sum_squares(&dev.upload(&g).unwrap()).unwrap();
    let want: f64 = g.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    assert!((ss - want).abs() / want < 1e-4, "sum of squares {ss} vs {want}");
}
