#!/usr/bin/python3
"""Train a tiny Llama (stories260K's shape) on the license texts every Debian machine has, so the demo has a model
with trained weights when ../shared/data is absent.

The text: the files of /usr/share/common-licenses (Debian's base-files package, always installed). Each blank-line
separated paragraph has its whitespace collapsed and is cut after sentence or clause ends into passages of at most
240 bytes (about 120 tokens, within the model's 128-token context). Two whole files unrelated to the others
(Apache-2.0 and Artistic) are held out for evaluation, and the few short passages they share with other files
("Preamble", ...) are dropped from the training text, so no held-out passage is ever trained on. Calibration text
for the quantizers is a seeded sample of training passages.

The tokenizer is llama2.c's tokenizer.bin format, as lwq's C++ tokenizer and lwq.llama2c read it: ids 0..2
are <unk>, <s>, </s>, ids 3..258 the byte pieces <0x00>..<0xFF>, then one piece per character of the training text,
then byte-pair merges learned from the training text (within space-led words, as SentencePiece pieces are), with
scores falling in the order they were learned. The encoder (a dummy-prefix space, characters, then "merge the
adjacent pair whose concatenation is the best-scoring piece") is the one in lwq/llama2c.py / src/text/tokenizer.cpp;
the training tokens are produced by that very encoder, so training and lwq eval see the same ids.

Training: seeded init and batches, AdamW with warmup and cosine decay, a fixed number of steps (so the result does
not depend on the machine's speed). A window is BOS followed by the token stream of the passages (each encoded on
its own, so each starts with its dummy-prefix space) from a random passage on, --seq-len tokens in all (the model's
context). BOS only ever starts a window: the model never learns to predict it, so greedy text does not stop at it
(lwq generate, like llama2.c's run.c, ends at BOS) and the demo's decode runs measure full-length runs. The held-out NLL is computed as `lwq eval` does it (BOS + passage,
each scored on its own), before and after training. One thread by default (--threads).

Writes into --out:
  model.bin      llama2.c legacy checkpoint (positive vocab size: the classifier is the token embedding)
  tokenizer.bin  llama2.c tokenizer
  train.txt      the training passages, blank-line separated
  heldout.txt    the held-out passages (evaluation text)
  calib.txt      training passages for calibration (a seeded sample, in shuffled order)
  train.json     settings, corpus digest, losses, held-out NLL, uniform NLL, seconds

Usage: /usr/bin/python3 scripts/train_tiny_llama.py --out DIR [--steps N] [--seed S] [--threads N]
"""

import argparse
import collections
import hashlib
import json
import math
import os
import random
import re
import struct
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

from lwq import llama, llama2c  # noqa: E402

LICENSES_DIR = "/usr/share/common-licenses"
HELD_OUT_FILES = ("Apache-2.0", "Artistic")  # unrelated to the other texts: no shared boilerplate
CHUNK_BYTES = 240  # sentences are packed into passages of at most this many bytes (about 120 tokens)
SPECIAL_PIECES = [b"<unk>", b"\n<s>\n", b"\n</s>\n"]  # as llama2.c's tokenizers spell them
CALIB_PASSAGES = 400


def model_config(vocab_size: int, seq_len: int) -> llama.LlamaConfig:
    """stories260K's shape (dim 64, hidden 172, 5 blocks, 8 heads, 4 key/value heads), tied embeddings."""
    return llama.LlamaConfig(dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=vocab_size,
                                 max_seq_len=seq_len, tied_embeddings=True)


# ----------------------------------------------------------------------------------------------------------------
# Text


def passages(paragraph: str) -> List[str]:
    """A paragraph cut after punctuation (sentence and clause ends) into passages of at most CHUNK_BYTES bytes,
    packed greedily (a longer clause is a passage of its own), so that one passage fits the model's context."""
    out: List[str] = []
    for clause in re.split(r"(?<=[.;:!?,])\s+", paragraph):
        if out and len(out[-1]) + 1 + len(clause) <= CHUNK_BYTES:
            out[-1] += " " + clause
        else:
            out.append(clause)
    return out


def read_corpus(directory: str) -> Tuple[Dict[str, List[str]], str]:
    """{file name: passages} for the regular files of `directory` (symlinks to another file there skipped), sorted
    by name, and a sha256 of the passages (the text the model depends on). Each blank-line separated paragraph has
    its whitespace collapsed and is cut into passages at sentence ends."""
    files: Dict[str, List[str]] = {}
    digest = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n[ \t\f]*\n", text)]
        files[name] = [c for p in paragraphs if p for c in passages(p)]
        digest.update(name.encode() + b"\0" + "\n\n".join(files[name]).encode() + b"\0")
    if any(name not in files for name in HELD_OUT_FILES) or len(files) <= len(HELD_OUT_FILES):
        raise SystemExit(f"train_tiny_llama.py: {directory} must hold {', '.join(HELD_OUT_FILES)} and other texts "
                         f"(Debian's base-files package); found {sorted(files)}")
    return files, digest.hexdigest()


def learn_tokenizer(paragraphs: Sequence[str], vocab_size: int) -> Tuple[List[bytes], List[float]]:
    """Pieces and scores: specials, byte pieces, every character of the text, then BPE merges of the most frequent
    adjacent pair within words (a word is a maximal run of non-spaces with the space before it, the encoder's
    dummy prefix making the first word of a paragraph space-led too); ties go to the smaller pair, so the result is
    deterministic."""
    words = collections.Counter()
    for p in paragraphs:
        words.update(re.findall(r" [^ ]*", " " + p))
    chars = sorted({c for w in words for c in w})
    pieces = SPECIAL_PIECES + [b"<0x%02X>" % b for b in range(256)]
    scores = [0.0] * len(pieces)
    pieces += [c.encode("utf-8") for c in chars]
    scores += [-1e6] * len(chars)  # below every merge: only a merged piece's score matters to the encoder
    if len(pieces) > vocab_size:
        raise SystemExit(f"train_tiny_llama.py: vocab size {vocab_size} is below the {len(pieces)} special, byte "
                         f"and character pieces")
    known = set(pieces)
    # Each distinct word as a list of symbols, with its count.
    corpus = [(list(w), n) for w, n in words.items()]
    while len(pieces) < vocab_size:
        pairs = collections.Counter()
        for symbols, n in corpus:
            for a, b in zip(symbols, symbols[1:]):
                pairs[a, b] += n
        if not pairs:
            break
        best_count = max(pairs.values())
        a, b = min(pair for pair, count in pairs.items() if count == best_count)
        merged = a + b
        for symbols, _ in corpus:
            i = 0
            while i < len(symbols) - 1:
                if symbols[i] == a and symbols[i + 1] == b:
                    symbols[i:i + 2] = [merged]
                i += 1
        if merged.encode("utf-8") not in known:  # the same string can come from two different splits
            known.add(merged.encode("utf-8"))
            pieces.append(merged.encode("utf-8"))
            scores.append(-float(len(pieces)))
    return pieces, scores


def write_tokenizer(path: str, pieces: Sequence[bytes], scores: Sequence[float]) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(len(p) for p in pieces)))
        for piece, score in zip(pieces, scores):
            f.write(struct.pack("<fi", score, len(piece)))
            f.write(piece)


def write_paragraphs(path: str, paragraphs: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join(paragraphs) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# Model


def init_weights(model: llama.LlamaModel, cfg: llama.LlamaConfig, gen: torch.Generator) -> None:
    """llama2.c's init: N(0, 0.02) everywhere, the residual output projections scaled by 1/sqrt(2 * n_layers),
    norms at 1; the classifier is the embedding."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                p.fill_(1.0)
            else:
                std = 0.02 / math.sqrt(2 * cfg.n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) \
                    else 0.02
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    model.lm_head.weight = model.embed_tokens.weight


def write_llama2c(path: str, model: llama.LlamaModel, cfg: llama.LlamaConfig) -> None:
    """llama2.c's legacy checkpoint (the layout llama2c.Checkpoint reads): header, then each array stacked over the
    layers, then the rotary tables; positive vocab size = shared classifier."""
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    L = cfg.n_layers

    def stacked(suffix: str) -> List[torch.Tensor]:
        return [state[f"layers.{i}.{suffix}"] for i in range(L)]

    cos, sin = llama.rotary_tables(cfg)
    arrays = [state["embed_tokens.weight"]]
    for suffix in ["input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                   "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
                   "mlp.gate_proj.weight", "mlp.down_proj.weight", "mlp.up_proj.weight"]:
        arrays += stacked(suffix)
    arrays += [state["norm.weight"], cos, sin]
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<7i", cfg.dim, cfg.hidden_dim, L, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size,
                            cfg.max_seq_len))
        for a in arrays:
            f.write(a.numpy().tobytes())
    os.replace(tmp, path)


def batch_windows(stream: torch.Tensor, starts: torch.Tensor, batch: int, seq_len: int,
                  gen: torch.Generator) -> torch.Tensor:
    """[batch, seq_len + 1] windows: BOS, then seq_len tokens of the stream from a randomly drawn passage start."""
    pick = starts[torch.randint(len(starts), (batch,), generator=gen)]
    bos = torch.full((1,), llama2c.BOS, dtype=torch.long)
    return torch.stack([torch.cat((bos, stream[s:s + seq_len])) for s in pick.tolist()])


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def previous_run_matches(out: str, settings: Dict[str, object], corpus_sha: str, script_sha: str) -> bool:
    try:
        with open(os.path.join(out, "train.json")) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        return False
    outputs = ["model.bin", "tokenizer.bin", "train.txt", "heldout.txt", "calib.txt"]
    return (previous.get("settings") == settings and previous.get("corpus", {}).get("sha256") == corpus_sha
            and previous.get("script_sha256") == script_sha and previous.get("torch") == torch.__version__
            and all(os.path.isfile(os.path.join(out, name)) for name in outputs))


# ----------------------------------------------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--steps", type=int, default=600, help="optimizer steps (default 600)")
    p.add_argument("--batch", type=int, default=16, help="windows per step (default 16)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per window = the model's max_seq_len "
                   "(default 128)")
    p.add_argument("--lr", type=float, default=4e-3, help="peak learning rate (default 4e-3)")
    p.add_argument("--vocab-size", type=int, default=512, help="tokenizer pieces (default 512, as stories260K)")
    p.add_argument("--seed", type=int, default=0, help="seed of init and batches (default 0)")
    # One thread by default: a step is many small ops at dim 64, where a second thread gains little, and on a shared
    # 2-core machine 2 threads measured 1.2x to 6x slower per step than 1 (OpenMP threads waiting on each other).
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--licenses", default=LICENSES_DIR, help=f"text directory (default {LICENSES_DIR})")
    p.add_argument("--reuse", action="store_true", help="do nothing when --out already holds a model trained by this "
                   "script (same source) with the same settings on the same text")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    files, corpus_sha = read_corpus(args.licenses)
    settings = {k: getattr(args, k) for k in ("steps", "batch", "seq_len", "lr", "vocab_size", "seed", "threads")}
    with open(os.path.abspath(__file__), "rb") as f:
        script_sha = hashlib.sha256(f.read()).hexdigest()
    if args.reuse and previous_run_matches(args.out, settings, corpus_sha, script_sha):
        log(f"{args.out} already holds this model (same script, settings and text): reused")
        return 0
    if os.path.exists(os.path.join(args.out, "train.json")):  # written last: its presence marks a finished run
        os.remove(os.path.join(args.out, "train.json"))

    heldout = [para for name in HELD_OUT_FILES for para in files[name]]
    # Short passages such as "Preamble" occur in several files: held out means absent from the training text.
    heldout_set = set(heldout)
    train = [para for name, paras in files.items() if name not in HELD_OUT_FILES for para in paras
             if para not in heldout_set]
    calib = random.Random(args.seed).sample(train, min(CALIB_PASSAGES, len(train)))

    pieces, scores = learn_tokenizer(train, args.vocab_size)
    tok_path = os.path.join(args.out, "tokenizer.bin")
    write_tokenizer(tok_path, pieces, scores)
    tokenizer = llama2c.Tokenizer(tok_path)  # the reference encoder (the C++ tool gives the same ids)
    write_paragraphs(os.path.join(args.out, "train.txt"), train)
    write_paragraphs(os.path.join(args.out, "heldout.txt"), heldout)
    write_paragraphs(os.path.join(args.out, "calib.txt"), calib)

    # The passages' tokens one after the other; a window starts at a passage start that leaves a full window.
    ids: List[int] = []
    starts: List[int] = []
    for para in train:
        starts.append(len(ids))
        ids += tokenizer.encode(para)
    stream = torch.tensor(ids, dtype=torch.long)
    starts_t = torch.tensor([s for s in starts if s + args.seq_len <= len(ids)], dtype=torch.long)
    n_bytes = sum(len(p.encode()) for p in train)
    log(f"text: {len(train)} training passages ({n_bytes:,} bytes, {len(ids):,} tokens, "
        f"{n_bytes / len(ids):.2f} bytes/token), {len(heldout)} held-out passages ({', '.join(HELD_OUT_FILES)}); "
        f"{len(pieces)} pieces; {time.perf_counter() - start:.1f} s")

    cfg = model_config(len(pieces), args.seq_len)
    model = llama.LlamaModel(cfg)
    gen = torch.Generator().manual_seed(args.seed)
    init_weights(model, cfg, gen)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warmup = max(1, min(100, args.steps // 10))
    heldout_seqs = llama2c.eval_sequences(tokenizer, heldout, cfg.max_seq_len)

    def heldout_nll() -> float:
        model.eval()
        total, count = llama.sequence_nll(model, heldout_seqs)
        model.train()
        return total / count

    initial_heldout = heldout_nll()
    losses: List[float] = []
    train_start = time.perf_counter()
    model.train()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup)
        batch = batch_windows(stream, starts_t, args.batch, args.seq_len, gen)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            recent = losses[-100:]
            log(f"step {step + 1}/{args.steps}: train loss {sum(recent) / len(recent):.3f}, "
                f"{time.perf_counter() - train_start:.0f} s")
    train_seconds = time.perf_counter() - train_start

    model.eval()
    final_heldout = heldout_nll()
    write_llama2c(os.path.join(args.out, "model.bin"), model, cfg)
    window = max(1, min(50, len(losses) // 5))  # the mean of the last steps' losses
    summary = {
        "model": "llama (stories260K shape)", "config": cfg.to_json(),
        "corpus": {"directory": args.licenses, "sha256": corpus_sha, "files": sorted(files),
                   "held_out": list(HELD_OUT_FILES), "train_passages": len(train), "train_tokens": len(ids),
                   "heldout_passages": len(heldout),
                   "heldout_tokens": sum(len(s) - 1 for s in heldout_seqs)},
        "settings": settings, "script_sha256": script_sha, "torch": torch.__version__,
        "first_loss": losses[0] if losses else None,
        "final_loss": sum(losses[-window:]) / window if losses else None,
        "heldout_nll_initial": initial_heldout, "heldout_nll": final_heldout,
        "uniform_nll": math.log(cfg.vocab_size),
        "train_seconds": train_seconds, "seconds": time.perf_counter() - start,
    }
    with open(os.path.join(args.out, "train.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    log(f"held-out NLL {final_heldout:.3f} nats/token (untrained {initial_heldout:.3f}, uniform "
        f"{summary['uniform_nll']:.3f}); trained {args.steps} steps in {train_seconds:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
