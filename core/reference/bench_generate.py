"""transformers `generate` baseline for `trex-host bench generate`: greedy generation with the
same SmolLM2-135M-Instruct GGUF, the same prompts, the same number of new tokens.

    python core/reference/bench_generate.py --gguf PATH --prompts 8 --new 32 --threads 2

Prints one JSON line per mode (unbatched, batched with left padding): generated tokens/s.
"""
import argparse, json, time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("--gguf", required=True)
p.add_argument("--prompts", type=int, default=8)
p.add_argument("--new", type=int, default=32)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
import os
folder, name = os.path.dirname(a.gguf), os.path.basename(a.gguf)
tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32).eval()
questions = [f"Convert {i + 3} km to m." for i in range(a.prompts)]
texts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False) for q in questions]


def run(batch):
    generated = 0
    t = time.perf_counter()
    for i in range(0, len(texts), batch):
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        enc = tok(texts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=a.new, min_new_tokens=a.new, do_sample=False, pad_token_id=tok.pad_token_id)
        generated += (out.shape[1] - enc.input_ids.shape[1]) * out.shape[0]
    return generated / (time.perf_counter() - t)


run(len(texts))  # warm-up
for batch in (1, len(texts)):
    print(json.dumps({"impl": "transformers.generate", "batch": batch, "prompts": len(texts), "new_tokens": a.new,
                      "tokens_per_s": run(batch)}))
