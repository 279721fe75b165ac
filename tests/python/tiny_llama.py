#!/usr/bin/python3
"""A tiny random Llama of the model contract (scripts/lwq_llama.py's LlamaModel) and a tiny llama2.c tokenizer, for
the tests of `lwq eval` and `lwq generate` that must run without ../shared/data (the real check exports
stories260K with scripts/export_llama.py).

Writes into --out:
  model.pt           torch.jit.script of the model with EMPTY (meta) parameters and real rotary buffers
  model.safetensors  its weights by qualified parameter name
  config.json        the contract's config fields
  tokenizer.bin      llama2.c format: <unk>, BOS, EOS, the 256 byte pieces, characters and a few merges
  text.txt           a few blank-line separated paragraphs (CRLF line ends, a whitespace-only separator line)
  reference.json     what the Python reference gives with the eager model: the segments, the mean NLL
                     (lwq_llama.sequence_nll) at two sequence lengths, greedy tokens (lwq_llama.generate_greedy,
                     run.c's loop) and the text run.c would print

Run with /usr/bin/python3 (Debian's python3-torch).
"""
import argparse
import json
import pathlib
import struct
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))
import llama2c  # noqa: E402  (the Python reference tokenizer and text protocol)
import lwq_llama  # noqa: E402
from make_test_models import write_safetensors  # noqa: E402

MAX_SEQ_LEN = 64

CHARS = list(" abcdefghijklmnopqrstuvwxyz.,'") + ["é"]
MERGES = [" t", "he", " the", " a", "an", "nd", " and", "in", " s", "er", " w", "as", " was", "on", "ed", "re"]

TEXT = ("the cat sat on the mat. it was warm and the sun was out.\r\n"
        "a dog ran in and sat there.\r\n"
        "\r\n"
        "  she went to the river, and the water was cold.  \r\n"
        "  \t \r\n"
        "he said: “café!” 日本 was far.\r\n"
        "\r\n\r\n\r\n"
        "the end\r\n")


def tokenizer_pieces():
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [b"<0x%02X>" % b for b in range(256)]
    scores = [0.0] * len(pieces)
    pieces += [m.encode() for m in MERGES]
    scores += [-float(i) for i in range(len(MERGES))]
    pieces += [c.encode() for c in CHARS]
    scores += [-100.0 - i for i in range(len(CHARS))]
    return pieces, scores


def write_tokenizer(path: pathlib.Path) -> int:
    pieces, scores = tokenizer_pieces()
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(len(p) for p in pieces)))
        for p, s in zip(pieces, scores):
            f.write(struct.pack("<fi", s, len(p)))
            f.write(p)
    return len(pieces)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(args.out / "tokenizer.bin")
    (args.out / "text.txt").write_bytes(TEXT.encode("utf-8"))

    cfg = lwq_llama.LlamaConfig(dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab,
                                max_seq_len=MAX_SEQ_LEN, tied_embeddings=False)
    torch.set_num_threads(1)
    model = lwq_llama.random_model(cfg, args.seed)
    write_safetensors(args.out / "model.safetensors", dict(model.named_parameters()))
    torch.jit.script(lwq_llama.LlamaModel(cfg, device="meta").eval()).save(str(args.out / "model.pt"))
    config = dict(cfg.to_json(), dtype="fp32", source="tests/python/tiny_llama.py")
    (args.out / "config.json").write_text(json.dumps(config, indent=2))

    tok = llama2c.Tokenizer(str(args.out / "tokenizer.bin"))
    segments = llama2c.read_segments(str(args.out / "text.txt"))
    reference = {"segments": segments}
    for seq_len in (MAX_SEQ_LEN, 8):
        total, count = lwq_llama.sequence_nll(model, llama2c.eval_sequences(tok, segments, seq_len))
        reference[f"nll_seq_len_{seq_len}"] = total / count
        reference[f"tokens_seq_len_{seq_len}"] = count
    prompt = tok.encode("the cat", bos=True)
    tokens = lwq_llama.generate_greedy(model, 40, prompt)
    reference["greedy"] = {"steps": 40, "prompt": "the cat", "tokens": tokens,
                           "printed": tok.decode(tokens, as_printed=True) + "\n"}
    (args.out / "reference.json").write_text(json.dumps(reference, indent=1))


if __name__ == "__main__":
    main()
