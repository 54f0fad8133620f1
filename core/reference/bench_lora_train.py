"""PyTorch + PEFT baseline for `trex-host bench train`: LoRA training tokens/s on a Llama-shaped
model with random weights (the speed does not depend on the values).

Run with the same shape, batch, sequence length, rank and targets as the trex side, on the same
machine, in the same session:

    python core/reference/bench_lora_train.py --seq 512 --batch 2 --rank 16 --steps 4 --threads 2

Prints one JSON line: tokens/s (median over the timed steps), peak RSS in MiB.

On a GPU, the same baseline in bf16, eager and compiled:

    python core/reference/bench_lora_train.py --device cuda --dtype bf16 --seq 2048 --batch 4 --steps 10
    python core/reference/bench_lora_train.py --device cuda --dtype bf16 --seq 2048 --batch 4 --steps 10 --compile
"""
import argparse, json, resource, statistics, time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--seq", type=int, default=512)
p.add_argument("--batch", type=int, default=2)
p.add_argument("--rank", type=int, default=16)
p.add_argument("--steps", type=int, default=4)
p.add_argument("--warmup", type=int, default=1)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--device", default="cpu", help="cpu or cuda")
p.add_argument("--dtype", default="f32", choices=["f32", "bf16"], help="dtype of the frozen model (LoRA weights stay f32)")
p.add_argument("--compile", action="store_true", help="torch.compile the model")
p.add_argument("--completion-fraction", type=float, default=1.0, help="fraction of positions with a label (the rest are -100)")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, vocab_size=49152, rms_norm_eps=1e-5, rope_theta=100000.0,
                  max_position_embeddings=8192, tie_word_embeddings=True)
model = LlamaForCausalLM(cfg)
if a.dtype == "bf16":
    model = model.to(torch.bfloat16)
model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0,
                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
for n, prm in model.named_parameters():
    if prm.requires_grad:
        prm.data = prm.data.float()
model = model.to(a.device)
if a.compile:
    model = torch.compile(model)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device=a.device)
labels = ids.clone()
cut = int(a.seq * (1 - a.completion_fraction))
labels[:, :cut] = -100
times = []
for step in range(a.warmup + a.steps):
    t = time.perf_counter()
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    opt.step()
    opt.zero_grad()
    if a.device == "cuda":
        torch.cuda.synchronize()
    if step >= a.warmup:
        times.append(time.perf_counter() - t)
tok = a.batch * a.seq


def model_flops_per_token(seq, rank, with_loss):
    """Same convention as trex's `model_flops_per_token`: frozen linears forward + input gradient
    (4 FLOPs per weight), causal attention (half the square), LoRA, the LM head where there is a loss."""
    d, f, q, kv, layers, vocab = 576, 1536, 9 * 64, 3 * 64, 30, 49152
    linear = d * q + 2 * d * kv + q * d + 3 * d * f
    lora_io = (q + d) + 2 * (kv + d) + (d + q) + 2 * (f + d) + (d + f)
    attention = 12 * (seq + 1) / 2 * q
    return layers * (4 * linear + attention + 8 * rank * lora_io) + 4 * vocab * d * with_loss


tps = tok / statistics.median(times)
extra = {}
if a.device == "cuda":
    name = torch.cuda.get_device_name()
    peaks = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}
    peak = next((v for k, v in peaks.items() if k in name.upper()), None)
    with_loss = (labels[:, 1:] != -100).sum().item() / labels.numel()
    flops = model_flops_per_token(a.seq, a.rank, with_loss)
    extra = {"gpu": name, "model_tflops": tps * flops / 1e12,
             "mfu": (tps * flops / peak) if peak else None}
print(json.dumps({"impl": "pytorch+peft" + (" compiled" if a.compile else ""), "device": a.device, "dtype": a.dtype,
                  "torch": torch.__version__, "tokens_per_s": tok / statistics.median(times),
                  "step_s_min": min(times), "step_s_max": max(times),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}))
