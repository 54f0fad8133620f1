//! The CUDA training engine against the CPU engine (the f32 reference): one full training step
//! (loss and every LoRA gradient) on a packed batch, then a short training run. Needs a GPU:
//! `cargo xtask device-check` runs these (`--include-ignored`) on a machine that has one.

#![cfg(feature = "cuda")]

use trex_kernels::cuda::{from_bf16, to_bf16};
use trex_model::lora::SplitMix;
use trex_model::train::cuda::CudaEngine;
use trex_model::train::{CpuEngine, Engine};
use trex_model::{Arch, Batch, Llama, LlamaConfig, LoraAdapter, Weights};
use trex_sdk::types::LoraTarget;

/// Round in place to bf16, so that both engines start from the same values.
fn round(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = from_bf16(to_bf16(*x)));
}

fn model(arch: Arch) -> Llama<f32> {
    let config = LlamaConfig {
        arch,
        hidden: 128,
        intermediate: 256,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
        vocab: 512,
        max_pos: 256,
        ..LlamaConfig::tiny()
    };
    let mut w = Weights::<f32>::random(&config, 21);
    round(&mut w.embed);
    round(&mut w.final_norm);
    for l in &mut w.layers {
        for v in [&mut l.attn_norm, &mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.mlp_norm, &mut l.gate, &mut l.up] {
            round(v);
        }
        round(&mut l.down);
        if let Some(b) = &mut l.qkv_bias {
            b.iter_mut().for_each(|v| round(v));
        }
    }
    Llama::new(config, w)
}

/// Three packed sequences of different lengths, the first third of each a prompt.
fn batch(vocab: usize) -> Batch {
    let mut rng = SplitMix(5);
    let mut b = Batch::default();
    for len in [37usize, 64, 20] {
        let toks: Vec<u32> = (0..len).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
        for i in 0..len {
            b.targets.push(if i >= len / 3 && i + 1 < len { toks[i + 1] as i64 } else { -1 });
        }
        b.tokens.extend(toks);
        b.seq_lens.push(len);
    }
    b
}

/// A rank-8 adapter on every target, with `B` non-zero so that every gradient path carries signal.
fn adapter(model: &Llama<f32>, dropout: f64) -> LoraAdapter<f32> {
    let mut a = LoraAdapter::new(&model.config, 8, 16.0, dropout, &LoraTarget::ALL, 3);
    let mut rng = SplitMix(9);
    for layer in &mut a.layers {
        for pair in layer.iter_mut().flatten() {
            pair.b.iter_mut().for_each(|x| *x = (rng.unit() as f32 - 0.5) * 0.1);
        }
    }
    a.for_each_mut(|v| round(v));
    a
}

fn rel(got: &[f32], want: &[f32]) -> f32 {
    let err: f32 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
    err / want.iter().map(|b| b * b).sum::<f32>().sqrt().max(1e-20)
}

fn one_step(arch: Arch) {
    let model = model(arch);
    let b = batch(model.config.vocab);
    let a = adapter(&model, 0.0);
    let scale = 1.0 / b.target_count() as f32;
    let mut cpu = CpuEngine::new(&model, &a);
    let (loss, count) = cpu.accumulate(&b, scale, 0).unwrap();
    let mut want = a.zeros_like();
    cpu.read_gradients(&mut want);
    let mut gpu = CudaEngine::new(&model, &a).unwrap_or_else(|e| panic!("{e}"));
    let (gl, gc) = gpu.accumulate(&b, scale, 0).unwrap();
    assert_eq!(gc, count);
    let loss_err = (gl - loss).abs() / loss;
    println!("{arch:?}: loss cpu {loss:.5} cuda {gl:.5} (relative error {loss_err:.2e})");
    assert!(loss_err < 1e-2, "{arch:?}: loss {gl} vs {loss}");
    let mut got = a.zeros_like();
    gpu.read_gradients(&mut got).unwrap();
    for (li, (gl, wl)) in got.layers.iter().zip(&want.layers).enumerate() {
        for (t, (g, w)) in gl.iter().zip(wl).enumerate() {
            let (g, w) = (g.as_ref().unwrap(), w.as_ref().unwrap());
            let (ea, eb) = (rel(&g.a, &w.a), rel(&g.b, &w.b));
            println!("{arch:?} layer {li} {:?}: dA {ea:.2e} dB {eb:.2e}", LoraTarget::ALL[t]);
            assert!(ea < 5e-2 && eb < 5e-2, "{arch:?} layer {li} target {t}: dA {ea} dB {eb}");
        }
    }
}

#[test]
#[ignore = "needs a CUDA device: cargo xtask device-check"]
fn one_training_step_matches_the_cpu_engine_llama() {
    one_step(Arch::Llama);
}

#[test]
#[ignore = "needs a CUDA device: cargo xtask device-check"]
fn one_training_step_matches_the_cpu_engine_qwen2_biases() {
    one_step(Arch::Qwen2);
}

/// 30 AdamW steps on one batch: both engines fit it, along the same curve.
#[test]
#[ignore = "needs a CUDA device: cargo xtask device-check"]
fn training_runs_follow_the_cpu_loss_curve() {
    let model = model(Arch::Llama);
    let b = batch(model.config.vocab);
    let mut a = adapter(&model, 0.0);
    a.layers.iter_mut().flatten().flatten().for_each(|p| p.b.iter_mut().for_each(|x| *x = 0.0));
    let scale = 1.0 / b.target_count() as f32;
    let curve = |e: &mut dyn Engine| -> Vec<f64> {
        (0..30)
            .map(|step| {
                let (l, n) = e.accumulate(&b, scale, step).unwrap();
                e.update(2e-3, 0.0, 1.0).unwrap();
                l / n as f64
            })
            .collect()
    };
    let cpu = curve(&mut CpuEngine::new(&model, &a));
    let mut gpu_engine = CudaEngine::new(&model, &a).unwrap();
    let gpu = curve(&mut gpu_engine);
    println!("loss per step, cpu: {cpu:.3?}\nloss per step, cuda: {gpu:.3?}");
    assert!(cpu[29] < 0.8 * cpu[0], "the CPU engine did not fit the batch: {cpu:?}");
    for (i, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        assert!((c - g).abs() / c < 3e-2, "step {i}: cpu {c} vs cuda {g}");
    }
    let mut trained = a.clone();
    gpu_engine.read_adapter(&mut trained).unwrap();
    assert_ne!(trained, a, "the CUDA engine's adapter did not change");
}

/// With dropout, the same seed gives the same masks (so the backward regenerates the forward's),
/// and training still fits the batch.
#[test]
#[ignore = "needs a CUDA device: cargo xtask device-check"]
fn dropout_masks_are_reproducible_and_training_fits() {
    let model = model(Arch::Llama);
    let b = batch(model.config.vocab);
    let a = adapter(&model, 0.2);
    let scale = 1.0 / b.target_count() as f32;
    let mut gpu = CudaEngine::new(&model, &a).unwrap();
    let (l1, _) = gpu.accumulate(&b, scale, 42).unwrap();
    let mut g1 = a.zeros_like();
    gpu.read_gradients(&mut g1).unwrap();
    gpu.update(0.0, 0.0, 1.0).unwrap();
    let (l2, _) = gpu.accumulate(&b, scale, 42).unwrap();
    let mut g2 = a.zeros_like();
    gpu.read_gradients(&mut g2).unwrap();
    assert_eq!(l1, l2, "same seed, same loss");
    assert_eq!(g1, g2, "same seed, same gradients");
    gpu.update(0.0, 0.0, 1.0).unwrap();
    let (l3, _) = gpu.accumulate(&b, scale, 43).unwrap();
    assert_ne!(l1, l3, "another seed, another mask");
    let mut first = 0.0;
    let mut last = 0.0;
    for step in 0..30 {
        let (l, n) = gpu.accumulate(&b, scale, step).unwrap();
        gpu.update(2e-3, 0.0, 1.0).unwrap();
        if step == 0 {
            first = l / n as f64;
        }
        last = l / n as f64;
    }
    assert!(last < 0.8 * first, "training with dropout did not fit: {first} → {last}");
}
