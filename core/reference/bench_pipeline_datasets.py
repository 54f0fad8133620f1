"""Hugging Face `datasets` baseline for `trex-host bench pipeline`: the same four steps over the
same JSON-lines file, with the same semantics as the trex plugins.

    python core/reference/bench_pipeline_datasets.py --input records.jsonl --output kept.jsonl

1. normalize (as `clean-text`): Unicode NFC, control characters other than line breaks and tabs
   removed, runs of spaces/tabs collapsed, each line and the whole text trimmed;
2. length filter (as `filter-length`): keep 20 <= characters <= 1000;
3. exact dedup (as `dedup-exact` with `normalize`): lowercased, whitespace-collapsed text, first
   occurrence kept;
4. near dedup (as `dedup-near`): MinHash (datasketch, 128 32-bit permutations) over lowercased word
   3-shingles, LSH with 16 bands of 8 rows, a candidate confirmed when the estimated Jaccard
   similarity is >= 0.8, first occurrence kept.

The parallel steps (1, 2 and the MinHash signatures) use `num_proc` = the CPU count; the two
dedup passes are sequential, as their state is global. Prints one JSON line: seconds per step,
records after each step, and the total (reading the input and writing the output included).
"""
import argparse, json, os, re, shutil, tempfile, time, unicodedata

import numpy as np
from datasets import disable_caching, disable_progress_bars, load_dataset
from datasketch import MinHash, MinHashLSH

p = argparse.ArgumentParser()
p.add_argument("--input", required=True)
p.add_argument("--output", required=True)
p.add_argument("--num-proc", type=int, default=os.cpu_count() or 1)
a = p.parse_args()
disable_progress_bars()
# Every run starts cold: no Arrow cache from an earlier run, no cached map results.
disable_caching()
CACHE = tempfile.mkdtemp(prefix="trex-bench-datasets-")
NUM_PROC = a.num_proc if a.num_proc > 1 else None

CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
SPACES = re.compile("[ \t\u00a0]+")


def clean(text):
    text = CONTROL.sub("", unicodedata.normalize("NFC", text))
    return "\n".join(SPACES.sub(" ", line).strip() for line in text.split("\n")).strip()


def normalize_batch(batch):
    return {"text": [clean(t) for t in batch["text"]]}


def length_ok(batch):
    return [20 <= len(t) <= 1000 for t in batch["text"]]


def shingles(text):
    words = text.lower().split()
    if len(words) <= 3:
        return [" ".join(words).encode()]
    return [" ".join(words[i : i + 3]).encode() for i in range(len(words) - 2)]


def signatures(batch):
    mins = MinHash.bulk([shingles(t) for t in batch["text"]], num_perm=128)
    return {"sig": [m.hashvalues for m in mins]}


times, counts = {}, {}
start = time.perf_counter()
t = time.perf_counter()
ds = load_dataset("json", data_files=a.input, split="train", cache_dir=CACHE)
times["read"] = time.perf_counter() - t
counts["read"] = len(ds)

t = time.perf_counter()
ds = ds.map(normalize_batch, batched=True, num_proc=NUM_PROC)
times["normalize"] = time.perf_counter() - t
counts["normalize"] = len(ds)

t = time.perf_counter()
ds = ds.filter(length_ok, batched=True, num_proc=NUM_PROC)
times["length filter"] = time.perf_counter() - t
counts["length filter"] = len(ds)

t = time.perf_counter()
seen = set()
keep = []
for text in ds["text"]:
    key = " ".join(text.lower().split())
    keep.append(key not in seen)
    seen.add(key)
ds = ds.select([i for i, k in enumerate(keep) if k])
times["exact dedup"] = time.perf_counter() - t
counts["exact dedup"] = len(ds)

t = time.perf_counter()
with_sig = ds.map(signatures, batched=True, batch_size=1000, num_proc=NUM_PROC)
lsh = MinHashLSH(num_perm=128, params=(16, 8))
kept_sigs, keep = {}, []
for i, sig in enumerate(with_sig.with_format("numpy")["sig"]):
    m = MinHash(num_perm=128, hashvalues=sig, scheme="affine32")
    dup = any(m.jaccard(kept_sigs[c]) >= 0.8 for c in lsh.query(m))
    keep.append(not dup)
    if not dup:
        lsh.insert(i, m)
        kept_sigs[i] = m
ds = ds.select([i for i, k in enumerate(keep) if k])
times["near dedup"] = time.perf_counter() - t
counts["near dedup"] = len(ds)

t = time.perf_counter()
ds.to_json(a.output, lines=True)
times["write"] = time.perf_counter() - t
times["total"] = time.perf_counter() - start
shutil.rmtree(CACHE, ignore_errors=True)
print(json.dumps({"seconds": times, "records": counts, "num_proc": a.num_proc}))
