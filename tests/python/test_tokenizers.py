"""lwq's tokenizers (`lwq tokenize`) against the reference libraries, id for id: the real Mistral-7B-v0.3
tokenizer.model (vs `sentencepiece`) and tokenizer.json (vs `tokenizers`), byte-level BPE tokenizer.json files
trained here with `tokenizers` on TinyStories (GPT-2 style, and Llama-3 style with a Split pattern, ignore_merges
and NFC), and llama2.c's tok512.bin (vs python/lwq/llama2c.py), on every paragraph of tinystories_val.txt and an
adversarial set. Special tokens are compared with `tokenizers`' encode_special_tokens = True (their spelling in text
is text). Skips when the references or ../shared/data are absent."""
import json

import pytest

from conftest import SHARED_DATA, TEXT, TOKENIZER, fails, lwq, ok

tokenizers = pytest.importorskip("tokenizers", reason="the reference `tokenizers` is not installed (tests/requirements.txt)")
sentencepiece = pytest.importorskip("sentencepiece",
                                    reason="the reference `sentencepiece` is not installed (tests/requirements.txt)")
from lwq import llama2c  # noqa: E402

MISTRAL = SHARED_DATA / "mistral-7b-v0.3"
pytestmark = pytest.mark.skipif(not (MISTRAL / "tokenizer.json").exists() or not TEXT.exists(),
                                reason=f"real test material absent: {MISTRAL} or {TEXT} not found (see ../shared/data)")

ADVERSARIAL = [
    " ", "  ", "\t", "\n", "\n\n\n", "   leading spaces", "trailing spaces   ", "a  b   c\t\td\n\ne \n \t\n",
    "emoji 🙂🙃 family 👩‍👩‍👧‍👦 flags 🇫🇷🇯🇵 skin 👍🏽 keycap 1️⃣", "zero\u200bwidth and\u200djoiner\ufeffbom",
    "日本語のテキスト、中文文本，한국어 텍스트", "combining e\u0301 n\u0303 a\u030a\u0323 \u0915\u094d\u0937",
    "Ångström vs A\u030angstro\u0308m (NFC changes this)", "digits 0123456789 3.14159 1,000,000 ١٢٣ ④ Ⅻ",
    "<s> hello </s>", "<s>", "</s>", "<unk>", "<|endoftext|>", "<|pad|>", "[INST] do it [/INST]", "<|im_start|>user",
    "text<|endoftext|>more", "<0x41> <0xFF>", "'s 're 'VE 'Ll I'M don't", "https://example.com/a?b=c&d=e#f",
    "code: def f(x):\n\treturn x**2  # ok\r\n", "mixed\r\nline\rendings\u2028sep", "\u00a0nbsp\u3000ideographic",
    "ﬁ ligature ① ＦＵＬＬ", "a" * 300, " " * 50, "🙂" * 40, "\x7f\x1b[31mred\x01", "<extra_word> and<extra_word>x",
    "Σίσυφος Ελληνικά кириллица עברית العربية", "\U0001F9D1\U0001F3FF\u200d\U0001F91D\u200d\U0001F9D1\U0001F3FB",
]
INVALID = [b"\xff\xfe bad", b"caf\xc3", b"\xc3\x28 x", b"\xe2\x82", b"ok \xed\xa0\x80 surrogate", b"\xf4\x90\x80\x80",
           b"\x80\x80\x80", b"mixed \xf0\x9f\x99 \xf0\x9f\x99\x82 end"]
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
AGREEMENT = {}  # name -> (texts compared, identical ids, round trips checked, round trips equal)


@pytest.fixture(scope="module")
def paragraphs():
    return llama2c.read_segments(str(TEXT))


def train(path, texts, style):
    """A byte-level BPE tokenizer.json of ~3000 tokens with two special tokens and one non-special added token."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    if style == "gpt2":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:  # Llama-3's split pattern, then bytes; ignore_merges as Llama-3; NFC as Qwen2
        tok = Tokenizer(models.BPE(ignore_merges=True))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=["<|endoftext|>", "<|pad|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens(["<extra_word>"])
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, paragraphs):
    d = tmp_path_factory.mktemp("tok")
    out = {}
    for style in ("gpt2", "llama3"):
        (d / style).mkdir()
        out[style] = train(d / style / "tokenizer.json", paragraphs, style)
    return out


def run_lwq(tok, texts):
    """ids, decoded text and round_trip of each text (bytes), from one `lwq tokenize --null --json` run."""
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".txt") as f:
        f.write(b"\0".join(texts))
        f.flush()
        r = ok(lwq("tokenize", "--tokenizer", tok, "--file", f.name, "--null", "--json", timeout=300))
    out = json.loads(r.stdout)["texts"]
    assert len(out) == len(texts)
    return out


def compare(name, tok, texts, ref_encode, ref_decode):
    """Asserts lwq's ids equal the reference's on every text, and that lwq round-trips where the reference does."""
    got = run_lwq(tok, [t.encode("utf-8") for t in texts])
    same = trips = trips_equal = 0
    wrong = []
    for text, g in zip(texts, got):
        ref = ref_encode(text)
        if g["ids"] == ref:
            same += 1
        else:
            wrong.append((text[:60], ref[:20], g["ids"][:20]))
        if ref_decode(ref) == text:
            trips += 1
            trips_equal += g["round_trip"]
    AGREEMENT[name] = (len(texts), same, trips, trips_equal)
    print(f"\n{name}: {same}/{len(texts)} identical ids, {trips_equal}/{trips} round trips")
    assert not wrong, f"{name}: {len(wrong)} texts differ, e.g. {wrong[:3]}"
    assert trips_equal == trips


def hf_reference(path):
    tok = tokenizers.Tokenizer.from_file(str(path))
    tok.encode_special_tokens = True  # lwq's choice: the spelling of a special token in text is text
    return (lambda s: tok.encode(s, add_special_tokens=False).ids), (lambda ids: tok.decode(ids))


def test_mistral_tokenizer_json_matches_tokenizers(paragraphs):
    encode, decode = hf_reference(MISTRAL / "tokenizer.json")
    compare("mistral tokenizer.json", MISTRAL / "tokenizer.json", paragraphs + ADVERSARIAL, encode, decode)


def test_mistral_tokenizer_model_matches_sentencepiece(paragraphs):
    sp = sentencepiece.SentencePieceProcessor(model_file=str(MISTRAL / "tokenizer.model"))
    compare("mistral tokenizer.model", MISTRAL / "tokenizer.model", paragraphs + ADVERSARIAL, sp.encode, sp.decode)


@pytest.mark.parametrize("style", ["gpt2", "llama3"])
def test_trained_byte_level_bpe_matches_tokenizers(trained, paragraphs, style):
    encode, decode = hf_reference(trained[style])
    compare(f"byte-level BPE ({style})", trained[style], paragraphs + ADVERSARIAL, encode, decode)
    # Non-special added tokens are matched in text, special ones are not.
    got = run_lwq(trained[style], [b"a<extra_word>b <|endoftext|>"])[0]["ids"]
    ref = tokenizers.Tokenizer.from_file(str(trained[style]))
    assert ref.token_to_id("<extra_word>") in got and ref.token_to_id("<|endoftext|>") not in got


def test_llama2c_tokenizer_matches_python_reference(paragraphs):
    ref = llama2c.Tokenizer(str(TOKENIZER))
    compare("llama2.c tok512.bin", TOKENIZER, paragraphs + ADVERSARIAL, ref.encode, lambda ids: ref.decode(ids))


@pytest.mark.parametrize("which", ["mistral.json", "mistral.model", "gpt2", "llama3", "tok512"])
def test_invalid_utf8_never_crashes_and_byte_tokens_round_trip(trained, which):
    tok = {"mistral.json": MISTRAL / "tokenizer.json", "mistral.model": MISTRAL / "tokenizer.model",
           "tok512": TOKENIZER, **trained}[which]
    got = run_lwq(tok, INVALID)
    assert all(g["ids"] for g in got)
    if which in ("gpt2", "llama3", "mistral.json", "tok512"):  # every byte has a token: the bytes come back
        assert all(g["round_trip"] for g in got), [(t, g["decoded"]) for t, g in zip(INVALID, got)]
    # tokenizer.model: `sentencepiece` takes only str; lwq passes the bytes to the same library, which replaces
    # invalid UTF-8 with U+FFFD, so only "no crash, some ids" is checked.


def test_model_directory_sets_special_tokens(tmp_path, trained):
    info = json.loads(ok(lwq("tokenize", "--tokenizer", MISTRAL, "--text", "hi", "--json")).stdout)
    assert "tokenizer.json" in info["tokenizer"] and (info["bos"], info["eos"], info["add_bos"]) == (1, [2], True)
    info = json.loads(ok(lwq("tokenize", "--tokenizer", MISTRAL / "tokenizer.model", "--text", "hi", "--json")).stdout)
    assert (info["bos"], info["eos"], info["add_bos"]) == (1, [2], True)
    # A trained tokenizer: no BOS of its own; the configs beside it name them (string or {"content": ...}, list).
    d = trained["gpt2"].parent
    info = json.loads(ok(lwq("tokenize", "--tokenizer", d, "--text", "hi", "--json")).stdout)
    assert (info["bos"], info["eos"], info["add_bos"]) == (-1, [], False)
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": True, "bos_token": {"content": "<|pad|>"}, "eos_token": "<|endoftext|>"}))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 1]}))
    info = json.loads(ok(lwq("tokenize", "--tokenizer", trained["gpt2"], "--text", "hi", "--json")).stdout)
    assert (info["bos"], info["eos"], info["add_bos"]) == (1, [0, 1], True)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 5]}))
    info = json.loads(ok(lwq("tokenize", "--tokenizer", d, "--text", "hi", "--json")).stdout)
    assert info["eos"] == [0, 1, 5]
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<nope>"}))
    fails(lwq("tokenize", "--tokenizer", d, "--text", "hi"), "tokenizer_config.json", "bos_token '<nope>'")
    (d / "tokenizer_config.json").unlink()
    (d / "generation_config.json").unlink()


def test_refusals_name_the_file_and_component(tmp_path):
    fails(lwq("tokenize", "--tokenizer", tmp_path, "--text", "x"), "tokenizer.json", "tokenizer.model", "tokenizer.bin")
    fails(lwq("tokenize", "--tokenizer", tmp_path / "tokenizer.json", "--text", "x"), "no such file")
    base = json.loads((MISTRAL / "tokenizer.json").read_text())
    cases = [("model", {"type": "WordPiece", "vocab": {}}, "model type WordPiece"),
             ("model", {**base["model"], "type": "Unigram"}, "model type Unigram"),
             ("normalizer", {"type": "BertNormalizer"}, "normalizer BertNormalizer"),
             ("pre_tokenizer", {"type": "Whitespace"}, "pre_tokenizer Whitespace"),
             ("decoder", {"type": "WordPiece"}, "decoder WordPiece"),
             ("model", {**base["model"], "dropout": 0.1}, "dropout")]
    for key, value, needle in cases:
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps({**base, key: value}))
        fails(lwq("tokenize", "--tokenizer", path, "--text", "x"), str(path), needle)
    (tmp_path / "bad.json").write_text("{\"model\": ")
    fails(lwq("tokenize", "--tokenizer", tmp_path / "bad.json", "--text", "x"), "not valid JSON")
    (tmp_path / "bad.model").write_bytes(b"\x01\x02garbage")
    fails(lwq("tokenize", "--tokenizer", tmp_path / "bad.model", "--text", "x"), "bad.model", "not a SentencePiece")
    fails(lwq("tokenize", "--tokenizer", MISTRAL, "--decode", "99999"), "id 99999")


def test_decode_prints_the_text_and_skips_special_ids():
    r = ok(lwq("tokenize", "--tokenizer", MISTRAL, "--decode", "1,23325 2294,2"))
    assert r.stdout == "Hello world"


def test_agreement_summary():
    """Prints the counts of the comparisons above (docs/tokenizers.md quotes them)."""
    for name, (n, same, trips, equal) in AGREEMENT.items():
        print(f"{name}: {same}/{n} identical ids, {equal}/{trips} round trips where the reference round-trips")
