//! LoRA adapters: per layer and target, `A` [rank, in] and `B` [out, rank]; the adapted layer
//! computes `x·Wᵀ + (alpha/rank)·(dropout(x)·Aᵀ)·Bᵀ`, as Hugging Face PEFT does.

use trex_kernels::Real;
use trex_sdk::types::LoraTarget;

use super::LlamaConfig;

/// Index of a target in per-layer arrays (block order q, k, v, o, gate, up, down).
pub fn target_index(t: LoraTarget) -> usize {
    LoraTarget::ALL.iter().position(|&x| x == t).expect("every target is in ALL")
}

/// `(out, in)` of a target's base weight.
pub fn target_dims(config: &LlamaConfig, t: LoraTarget) -> (usize, usize) {
    let (d, f) = (config.hidden, config.intermediate);
    let (q, kv) = (config.heads * config.head_dim, config.kv_heads * config.head_dim);
    match t {
        LoraTarget::QProj => (q, d),
        LoraTarget::KProj | LoraTarget::VProj => (kv, d),
        LoraTarget::OProj => (d, q),
        LoraTarget::GateProj | LoraTarget::UpProj => (f, d),
        LoraTarget::DownProj => (d, f),
    }
}

/// One adapted layer's low-rank pair.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair<T> {
    /// [rank, in]
    pub a: Vec<T>,
    /// [out, rank]
    pub b: Vec<T>,
}

/// A LoRA adapter over a model.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter<T> {
    /// Rank.
    pub rank: usize,
    /// Alpha (the update is scaled by alpha / rank).
    pub alpha: f64,
    /// Dropout probability on the adapter input during training.
    pub dropout: f64,
    /// Adapted targets.
    pub targets: Vec<LoraTarget>,
    /// `layers[l][target_index(t)]`.
    pub layers: Vec<[Option<LoraPair<T>>; 7]>,
}

impl<T: Real> LoraAdapter<T> {
    /// A fresh adapter with the rank, alpha, dropout, targets, blocks (`lora_layers`) and seed
    /// of a training recipe.
    pub fn from_recipe(config: &LlamaConfig, recipe: &trex_sdk::types::TrainRecipe) -> Self {
        let mut adapter = Self::new(
            config,
            recipe.lora_rank as usize,
            recipe.lora_alpha as f64,
            recipe.lora_dropout as f64,
            &recipe.targets,
            recipe.seed,
        );
        let top = recipe.lora_layers as usize;
        if top > 0 && top < config.layers {
            adapter.keep_top_layers(top);
        }
        adapter
    }

    /// Drop the adapters of every block but the top `top` ones.
    pub fn keep_top_layers(&mut self, top: usize) {
        let below = self.layers.len().saturating_sub(top);
        self.layers[..below].iter_mut().for_each(|slots| *slots = Default::default());
    }

    /// The lowest block that holds an adapter (the block count when none does): no gradient
    /// is needed below it.
    pub fn lowest_layer(&self) -> usize {
        self.layers.iter().position(|slots| slots.iter().any(Option::is_some)).unwrap_or(self.layers.len())
    }

    /// The blocks that hold an adapter, lowest first.
    pub fn adapted_layers(&self) -> Vec<usize> {
        (0..self.layers.len()).filter(|&l| self.layers[l].iter().any(Option::is_some)).collect()
    }

    /// A fresh adapter as PEFT initializes one: `A` uniform in ±1/sqrt(in) (Kaiming-uniform with
    /// a = sqrt(5)), `B` zero, so the adapted model starts equal to the base model.
    pub fn new(config: &LlamaConfig, rank: usize, alpha: f64, dropout: f64, targets: &[LoraTarget], seed: u64) -> Self {
        let mut rng = SplitMix(seed ^ 0x005E_ED0F_10AA);
        let layers = (0..config.layers)
            .map(|_| {
                let mut slots: [Option<LoraPair<T>>; 7] = Default::default();
                for &t in targets {
                    let (out, inp) = target_dims(config, t);
                    let bound = 1.0 / (inp as f64).sqrt();
                    let a = (0..rank * inp)
                        .map(|_| T::from_f64((rng.unit() * 2.0 - 1.0) * bound).expect("finite"))
                        .collect();
                    slots[target_index(t)] = Some(LoraPair { a, b: vec![T::zero(); out * rank] });
                }
                slots
            })
            .collect();
        let mut targets = targets.to_vec();
        targets.sort();
        targets.dedup();
        Self { rank, alpha, dropout, targets, layers }
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> T {
        T::from_f64(self.alpha / self.rank as f64).expect("finite")
    }

    /// Zeros shaped like this adapter (for gradients and optimizer moments).
    pub fn zeros_like(&self) -> Self {
        let mut z = self.clone();
        z.for_each_mut(|v| v.iter_mut().for_each(|x| *x = T::zero()));
        z
    }

    /// Visit every parameter buffer in a fixed order.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut Vec<T>)) {
        for layer in &mut self.layers {
            for pair in layer.iter_mut().flatten() {
                f(&mut pair.a);
                f(&mut pair.b);
            }
        }
    }

    /// Visit every parameter buffer in the same order as [`LoraAdapter::for_each_mut`].
    pub fn for_each(&self, mut f: impl FnMut(&[T])) {
        for layer in &self.layers {
            for pair in layer.iter().flatten() {
                f(&pair.a);
                f(&pair.b);
            }
        }
    }

    /// Every parameter buffer, mutably, in the order of [`LoraAdapter::for_each_mut`].
    pub fn buffers_mut(&mut self) -> Vec<&mut Vec<T>> {
        self.layers.iter_mut().flat_map(|l| l.iter_mut().flatten()).flat_map(|p| [&mut p.a, &mut p.b]).collect()
    }

    /// Every parameter buffer, in the order of [`LoraAdapter::for_each`].
    pub fn buffers(&self) -> Vec<&Vec<T>> {
        self.layers.iter().flat_map(|l| l.iter().flatten()).flat_map(|p| [&p.a, &p.b]).collect()
    }

    /// Number of trainable parameters.
    pub fn parameters(&self) -> usize {
        let mut n = 0;
        self.for_each(|v| n += v.len());
        n
    }
}

/// Seeded randomness for initialization and dropout masks.
pub use trex_sdk::rng::SplitMix64 as SplitMix;
