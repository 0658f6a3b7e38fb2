#!/usr/bin/env python3
"""Check evop's Qwen2 tokenizer (GGUF `tokenizer.ggml.pre = qwen2`) against two independent references.

References, both built from the GGUF (no tokenizer.json ships with it):
  (a) Hugging Face transformers' own GGUF conversion: AutoTokenizer.from_pretrained(dir, gguf_file=...).
  (b) A `tokenizers` tokenizer spelled out here from the GGUF vocab/merges/token types (read with the
      `gguf` package) and the pre-tokenizer of Qwen2's original tokenizer.json: normalizer NFC;
      Sequence[Split(QWEN2_REGEX, isolated), ByteLevel(add_prefix_space=False, use_regex=False)];
      ByteLevel decoder; control tokens (type 3) special, user-defined tokens (type 4) plain added tokens.

The corpus is mixed text of several categories (Wikipedia leads, Python stdlib source, Rust crate source,
numbers, whitespace runs, non-Latin scripts, NFC edge cases, emoji, contractions in mixed case, special
tokens, random mixtures). The script encodes every segment with (a) and (b), reports every difference with
its explanation, checks decode(encode(x)) == NFC(x) with (b), and writes:
  --full FILE     every segment with (b)'s ids (JSON lines) for the Rust test run by hand:
                  EVOP_QWEN2_TOKENIZER_REFERENCE=FILE cargo test --release -p evop-model --test qwen2_tokenizer -- --ignored
  --fixture DIR   ~250 short segments covering every category (the committed fixture, segments.jsonl)

Run:  python3 scripts/check_qwen2_tokenizer.py --full /tmp/qwen2_full.jsonl \
          --fixture crates/evop-model/tests/fixtures/qwen2_tokenizer
Needs: gguf, tokenizers, transformers (and torch for transformers' import). Defaults read the GGUF and the
Wikipedia leads from evop's asset cache (`evop assets fetch qwen2.5-coder-0.5b`, `evop assets fetch`).
"""
import argparse
import glob
import hashlib
import json
import os
import random
import sys
import tempfile
import time
import unicodedata

QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
HELLO = ("Hello world, this is a test. 12345 fn main() {}",
         [9707, 1879, 11, 419, 374, 264, 1273, 13, 220, 16, 17, 18, 19, 20, 5168, 1887, 368, 4687])


def cache_root():
    for var, sub in (("EVOP_CACHE_DIR", ""), ("XDG_CACHE_HOME", "evop"), ("HOME", ".cache/evop")):
        if os.environ.get(var):
            return os.path.join(os.environ[var], sub)
    return ".cache/evop"


# ------------------------------------------------------------------------------------------------
# References
# ------------------------------------------------------------------------------------------------

def read_gguf_tokenizer(path):
    from gguf import GGUFReader

    r = GGUFReader(path)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def ints(key):
        f = r.fields[key]
        return [int(f.parts[i][0]) for i in f.data]

    pre = bytes(r.fields["tokenizer.ggml.pre"].parts[r.fields["tokenizer.ggml.pre"].data[0]]).decode()
    return {"pre": pre, "tokens": strings("tokenizer.ggml.tokens"), "merges": strings("tokenizer.ggml.merges"),
            "types": ints("tokenizer.ggml.token_type")}


def spelled_out_tokenizer(g):
    """Reference (b): Qwen2's tokenizer.json pipeline around the GGUF's vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    assert g["pre"] == "qwen2", g["pre"]
    vocab = {t: i for i, t in enumerate(g["tokens"])}
    merges = [tuple(m.split(" ")) for m in g["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                               continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                               byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t, ty in zip(g["tokens"], g["types"]) if ty == 3])
    tok.add_tokens([AddedToken(t, normalized=False, special=False)
                    for t, ty in zip(g["tokens"], g["types"]) if ty == 4])
    return tok


def hf_gguf_tokenizer(gguf_path):
    """Reference (a): transformers' GGUF tokenizer conversion."""
    from transformers import AutoTokenizer

    d = tempfile.mkdtemp(prefix="qwen2tok")
    os.symlink(os.path.abspath(gguf_path), os.path.join(d, "model.gguf"))
    return AutoTokenizer.from_pretrained(d, gguf_file="model.gguf")


# ------------------------------------------------------------------------------------------------
# Corpus: (category, source, text)
# ------------------------------------------------------------------------------------------------

PY_LIB = os.path.dirname(os.__file__)
CARGO_SRC = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/")))


def source_files(roots, ext, exclude, budget_chars, cap_chars):
    """Source files in a fixed pseudo-random order (by sha1 of the path), each cut to `cap_chars`,
    until `budget_chars` characters."""
    paths = []
    for root in roots:
        for dp, dn, fn in os.walk(root):
            if any(x in dp for x in exclude):
                continue
            paths += [(root, os.path.join(dp, f)) for f in fn if f.endswith(ext)]
    paths.sort(key=lambda rp: hashlib.sha1(os.path.relpath(rp[1], rp[0]).encode()).hexdigest())
    out, total = [], 0
    for root, p in paths:
        try:
            text = open(p, encoding="utf-8", newline="").read()[:cap_chars]
        except (UnicodeDecodeError, OSError):
            continue
        if not text:
            continue
        out.append((os.path.relpath(p, root), text))
        total += len(text)
        if total >= budget_chars:
            break
    return out


# Short handwritten sentences (our own text) for the scripts with little text on this machine.
HANDWRITTEN = {
    "zh": ["北京是中华人民共和国的首都，也是全国的政治和文化中心。", "我今天学习了三个小时的编程，感觉很累但是很充实！",
           "机器学习模型需要大量的数据进行训练。", "请在函数中添加注释：这个变量表示用户的年龄。"],
    "ja": ["東京は日本の首都であり、世界有数の大都市です。", "このプログラムはファイルを読み込んで、結果を表示します。",
           "ひらがなとカタカナと漢字を混ぜて書きます。", "明日の天気は晴れのち曇りでしょう。"],
    "ko": ["서울은 대한민국의 수도입니다.", "이 함수는 두 개의 숫자를 더해서 반환합니다.", "한국어 형태소 분석은 어렵습니다."],
    "ru": ["Москва — столица России, крупнейший по численности населения город страны.",
           "Эта функция возвращает сумму двух чисел.", "ПРИВЕТ, МИР! Как дела? Всё хорошо.", "Съешь же ещё этих мягких французских булок, да выпей чаю."],
    "uk": ["Київ — столиця України.", "Ґанок, їжак, єнот і йорж."],
    "ar": ["القاهرة هي عاصمة جمهورية مصر العربية وأكبر مدنها.", "هذه الدالة تعيد مجموع عددين.",
           "اللغة العربية تكتب من اليمين إلى اليسار، وفيها ٢٨ حرفاً."],
    "fa": ["تهران پایتخت ایران است."],
    "he": ["ירושלים היא עיר הבירה של ישראל."],
    "hi": ["भारत दक्षिण एशिया में स्थित एक विशाल देश है।", "नई दिल्ली भारत की राजधानी है और इसकी जनसंख्या बहुत अधिक है।",
           "यह फ़ंक्शन दो संख्याओं का योग लौटाता है।", "हिन्दी देवनागरी लिपि में लिखी जाती है। १२३ ४५६"],
    "mr": ["महाराष्ट्राची राजधानी मुंबई आहे."],
    "ne": ["काठमाडौं नेपालको राजधानी हो।"],
    "bn": ["বাংলাদেশের রাজধানী ঢাকা।"],
    "ta": ["தமிழ் ஒரு பழமையான மொழி."],
    "th": ["กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย"],
    "el": ["Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.", "ΑΘΗΝΑ — Ελληνική Δημοκρατία"],
    "ka": ["თბილისი საქართველოს დედაქალაქია."],
    "am": ["አዲስ አበባ የኢትዮጵያ ዋና ከተማ ናት።"],
    "vi": ["Hà Nội là thủ đô của nước Cộng hòa Xã hội chủ nghĩa Việt Nam."],
}


def multilingual(rng):
    out = []
    icu = glob.glob(os.path.join(CARGO_SRC[0] if CARGO_SRC else "/nonexistent", "icu_normalizer-*/benches/data/*.txt"))
    for p in sorted(icu):
        if p.endswith("README.md"):
            continue
        out.append(("script", os.path.basename(p), open(p, encoding="utf-8").read()))
    for p in sorted(glob.glob(os.path.join(PY_LIB, "test/cjkencodings/*-utf8.txt"))):
        out.append(("script", "cjkencodings/" + os.path.basename(p), open(p, encoding="utf-8", errors="replace").read()))
    for lang, sents in HANDWRITTEN.items():
        for i, s in enumerate(sents):
            out.append(("script", f"handwritten-{lang}-{i}", s))
        out.append(("script", f"handwritten-{lang}-joined", " ".join(sents) + "\n\n" + "\n".join(sents)))
    blocks = {"cjk": (0x4E00, 0x9FFF), "hangul": (0xAC00, 0xD7A3), "hiragana": (0x3041, 0x3096),
              "katakana": (0x30A1, 0x30FA), "cyrillic": (0x0400, 0x04FF), "arabic": (0x0600, 0x06FF),
              "devanagari": (0x0900, 0x097F), "thai": (0x0E01, 0x0E5B), "hebrew": (0x05D0, 0x05EA),
              "greek": (0x0370, 0x03FF)}
    for name, (lo, hi) in blocks.items():
        for i in range(40):
            words = ["".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8))) for _ in range(rng.randint(1, 12))]
            seps = [" ", "  ", "\n", ", ", "。", "، ", "\t", ""]
            out.append(("script", f"random-{name}-{i}", "".join(w + rng.choice(seps) for w in words)))
    return out


def nfc_cases():
    out = []
    tests = glob.glob(os.path.join(CARGO_SRC[0] if CARGO_SRC else "/nonexistent", "icu_normalizer-*/tests/data/NormalizationTest.txt"))
    if tests:
        rows = []
        for line in open(tests[0], encoding="utf-8"):
            if line.startswith(("#", "@")) or ";" not in line:
                continue
            cols = line.split(";")
            rows.append("".join(chr(int(h, 16)) for h in cols[0].split()))
            rows.append("".join(chr(int(h, 16)) for h in cols[2].split()))  # NFD form
        for i in range(0, len(rows), 60):
            out.append(("nfc", f"NormalizationTest:{i}", " ".join(rows[i:i + 60])))
    handmade = ["Cafe\u0301 de\u0301ja\u0300 vu", "A\u030angstro\u0308m \u212b \u2126 \u212a", "\u1100\u1161\u11a8 \u1112\u1161\u11ab",
                "\uf900\uf901 \u2f800", "e\u0301e\u0301e\u0301", "n\u0303o\u0308\u0301", "\u0915\u093c \u0958 \u0929",
                "re\u0301sume\u0301 na\u0131\u0308ve"]
    out += [("nfc", f"handmade-{i}", s) for i, s in enumerate(handmade)]
    return out


def numbers(rng):
    out = []
    for i in range(3000):
        kind = i % 12
        if kind == 0:
            s = str(rng.randint(0, 10 ** rng.randint(1, 30)))
        elif kind == 1:
            s = f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 8)}f}"
        elif kind == 2:
            s = f"{rng.randint(1, 999):,}{rng.randint(0, 999999):,}.{rng.randint(0, 99):02d}"
        elif kind == 3:
            s = f"{rng.uniform(0, 10):.3e}"
        elif kind == 4:
            s = hex(rng.getrandbits(rng.randint(4, 64)))
        elif kind == 5:
            s = f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
        elif kind == 6:
            s = f"+{rng.randint(1, 99)} ({rng.randint(100, 999)}) {rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
        elif kind == 7:
            s = "".join(rng.choice("０１２３４５６７８９٠١٢٣٤٥٦٧٨٩०१२३४५६७८९²³¹½¼ⅫⅣ①") for _ in range(rng.randint(1, 10)))
        elif kind == 8:
            s = f"v{rng.randint(0, 9)}.{rng.randint(0, 99)}.{rng.randint(0, 999)} ({rng.randint(1, 100)}%)"
        elif kind == 9:
            s = " ".join(str(rng.randint(0, 10 ** 6)) for _ in range(rng.randint(2, 10)))
        elif kind == 10:
            s = f"x{rng.randint(0, 99)} = {rng.randint(0, 9999)}*y{rng.randint(0, 9)} - {rng.random():.4f}"
        else:
            s = f"In {rng.randint(1000, 2024)}, {rng.randint(2, 10**9):,} people ({rng.uniform(0, 100):.1f}%) lived there."
        out.append(("numbers", f"gen-{i}", s))
    return out


def whitespace(rng):
    alphabet = [" ", " ", " ", "\t", "\n", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2003", "\x0b", "\x0c",
                "a", "word", "1", ".", "{", "}", "#", "é", "中"]
    out = []
    for i in range(2500):
        n = rng.randint(1, 40)
        out.append(("whitespace", f"gen-{i}", "".join(rng.choice(alphabet) for _ in range(n))))
    for n in range(1, 70):  # long pure runs
        for ch in (" ", "\t", "\n", "\r\n", " \n"):
            out.append(("whitespace", f"run-{n}-{ord(ch[-1])}-{len(ch)}", "x" + ch * n + "y"))
            out.append(("whitespace", f"run-{n}-{ord(ch[-1])}-{len(ch)}-edge", ch * n))
    return out


def emoji(rng):
    try:
        from rich._emoji_codes import EMOJI
        pool = sorted(set(EMOJI.values()))
    except ImportError:
        pool = [chr(c) for c in range(0x1F600, 0x1F650)]
    extra = ["👨‍👩‍👧‍👦", "🏳️‍🌈", "👍🏽", "🇯🇵🇺🇸🇩🇪", "1️⃣#️⃣", "❤️", "🧑🏿‍💻", "✌🏻", "☺︎", "👩‍❤️‍💋‍👨"]
    out = []
    words = ["great", "job", "Hello", "party", "ok", "lol", "rust", "python", "love", "no"]
    for i in range(1500):
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            parts.append(rng.choice(pool) if r < 0.5 else rng.choice(extra) if r < 0.6 else rng.choice(words))
            parts.append(rng.choice(["", " ", "  ", "\n", "!", ", "]))
        out.append(("emoji", f"gen-{i}", "".join(parts)))
    return out


def contractions(rng):
    subjects = ["I", "you", "we", "they", "he", "she", "it", "that", "there", "John", "who"]
    tails = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "n't", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D", "'Re",
             "'rE", "'lL", "’s", "’LL", "'ſ", "''s", "'", "'x"]
    fixed = ["DON'T", "I'M", "You'Re", "WE'LL", "She'D", "It'S", "can't", "CAN'T", "Y'all'd've", "rock'n'roll",
             "'tis", "'Twas", "O'Neill's", "don'T", "I'm", "I'M here and WON'T go", "'s'S'T't", "x's", "5's", "é's"]
    out = [("contractions", f"fixed-{i}", s) for i, s in enumerate(fixed)]
    for i in range(2000):
        words = []
        for _ in range(rng.randint(1, 8)):
            w = rng.choice(subjects) + rng.choice(tails)
            w = rng.choice([w, w.upper(), w.lower(), w.title(), "".join(c.upper() if rng.random() < .5 else c for c in w)])
            words.append(w + rng.choice([" ", " ", ", ", ".", "\n", ""]))
        out.append(("contractions", f"gen-{i}", "".join(words)))
    return out


SPECIAL_SAMPLES = [
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite quicksort in Rust.<|im_end|>\n<|im_start|>assistant\n",
    "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n    return c<|fim_middle|>",
    "<|repo_name|>evop\n<|file_sep|>src/main.rs\nfn main() {}\n<|endoftext|>",
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
    "text<|endoftext|>more text<|endoftext|><|endoftext|>",
    "<|im_start|><|im_end|><|object_ref_start|>x<|object_ref_end|><|box_start|>(1,2)<|box_end|>",
    "<|quad_start|><|quad_end|><|vision_start|><|vision_pad|><|image_pad|><|video_pad|><|vision_end|><|fim_pad|>",
    " <|im_start|> user <|im_end|> ",
    "<|im_start|user|> <|im_end <tool_call <|endoftext|",
    "[PAD151665] [PAD151700]",
]


def special(rng):
    out = [("special", f"sample-{i}", s) for i, s in enumerate(SPECIAL_SAMPLES)]
    toks = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
            "<tool_call>", "</tool_call>", "<|file_sep|>", "<|repo_name|>"]
    for i in range(300):
        parts = [rng.choice(toks + ["hello", " world", "\n", "  ", "x=1", "é", "<", "|>", "DON'T"]) for _ in range(rng.randint(1, 10))]
        out.append(("special", f"gen-{i}", "".join(parts)))
    return out


def mixed(rng, pools):
    """Random concatenations of slices of the other categories plus random code points."""
    out = []
    for i in range(1500):
        parts = []
        for _ in range(rng.randint(2, 6)):
            if rng.random() < 0.15:
                cps = [rng.randint(0x20, 0x2FFFF) for _ in range(rng.randint(1, 10))]
                parts.append("".join(chr(c) for c in cps if not 0xD800 <= c <= 0xDFFF))
            else:
                text = rng.choice(rng.choice(pools))[2]
                a = rng.randint(0, max(0, len(text) - 1))
                parts.append(text[a:a + rng.randint(1, 80)])
        out.append(("mixed", f"gen-{i}", "".join(parts)))
    return out


def build_corpus(wiki_path, code_budget):
    rng = random.Random(20250219)
    wiki = json.load(open(wiki_path, encoding="utf-8"))
    cats = {"wiki": [("wiki", title, v["extract"]) for title, v in wiki.items()]}
    cats["python"] = [("python", p, t) for p, t in source_files(
        [PY_LIB], ".py", ["site-packages", "__pycache__"], code_budget, 30_000)]
    cats["rust"] = [("rust", p, t) for p, t in source_files(CARGO_SRC, ".rs", ["/target/"], code_budget, 30_000)]
    cats["numbers"] = numbers(rng)
    cats["whitespace"] = whitespace(rng)
    cats["script"] = multilingual(rng)
    cats["nfc"] = nfc_cases()
    cats["emoji"] = emoji(rng)
    cats["contractions"] = contractions(rng)
    cats["special"] = special(rng)
    cats["mixed"] = mixed(rng, [cats[k] for k in ("wiki", "python", "rust", "script", "emoji", "whitespace", "nfc")])
    return cats


# ------------------------------------------------------------------------------------------------
# Comparison
# ------------------------------------------------------------------------------------------------

def first_diff(a, b):
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return n


def differing_tokens(a, b):
    """Tokens of (b) outside the blocks (a) and (b) share (difflib)."""
    import difflib

    same = sum(m.size for m in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks())
    return len(b) - same


def explain(text, ids_a, ids_b, ref, hf):
    """Why (a) differs from (b)."""
    norm = ref.normalizer.normalize_str(text)
    if norm != text:
        if hf(norm) == ids_b:
            return "nfc: transformers' GGUF conversion has no NFC normalizer (Qwen2's tokenizer.json has)"
        return "nfc+other"
    return "other"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=os.path.join(cache_root(), "qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.gguf"))
    ap.add_argument("--wiki", default=os.path.join(cache_root(), "wikipedia-leads/summaries_en-us.json"))
    ap.add_argument("--code-chars", type=int, default=2_500_000, help="characters of Python and of Rust source each")
    ap.add_argument("--full", help="write every segment with reference (b)'s ids here (JSON lines)")
    ap.add_argument("--fixture", help="write the ~250-segment committed fixture into this directory")
    ap.add_argument("--fixture-per-category", type=int, default=18)
    args = ap.parse_args()

    t0 = time.time()
    g = read_gguf_tokenizer(args.gguf)
    ref = spelled_out_tokenizer(g)
    hf_tok = hf_gguf_tokenizer(args.gguf)

    def enc_ref(texts):
        return [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)]

    def enc_hf(texts):
        return hf_tok(texts, add_special_tokens=False)["input_ids"]

    assert enc_ref([HELLO[0]])[0] == HELLO[1], enc_ref([HELLO[0]])
    assert enc_hf([HELLO[0]])[0] == HELLO[1], enc_hf([HELLO[0]])
    print(f"references ready in {time.time() - t0:.0f} s; both give the expected ids for {HELLO[0]!r}")

    cats = build_corpus(args.wiki, args.code_chars)
    total_tokens, total_mismatch, rt_fail = 0, 0, 0
    reasons, diffs = {}, []
    rows = []
    print(f"{'category':<13} {'segments':>8} {'tokens (b)':>11} {'segments a!=b':>14} {'tokens of b not in a':>21}")
    for cat, segs in cats.items():
        texts = [t for _, _, t in segs]
        ids_b = enc_ref(texts)
        ids_a = enc_hf(texts)
        n_tok = sum(len(x) for x in ids_b)
        bad_seg, bad_tok = 0, 0
        for (c, src, text), a, b in zip(segs, ids_a, ids_b):
            row = {"category": c, "source": src, "text": text, "ids": b}
            if a != b:
                bad_seg += 1
                # tokens that differ: everything from the first differing position, over the longer sequence
                bad_tok += differing_tokens(a, b)
                why = explain(text, a, b, ref, lambda s: enc_hf([s])[0])
                reasons[why] = reasons.get(why, 0) + 1
                row["hf_ids"] = a
                if reasons[why] <= (3 if why.startswith("nfc:") else 50):
                    k = first_diff(a, b)
                    diffs.append((c, src, why, text[:120], a[k:k + 8], b[k:k + 8]))
            decoded = ref.decode(b, skip_special_tokens=False)
            norm = ref.normalizer.normalize_str(text)
            if decoded != norm:
                rt_fail += 1
                print(f"  ROUND TRIP FAILS: {c} {src}: {text[:80]!r}")
            if norm != text:
                row["decoded"] = norm
            rows.append(row)
        total_tokens += n_tok
        total_mismatch += bad_tok
        print(f"{cat:<13} {len(segs):>8} {n_tok:>11,} {bad_seg:>14} {bad_tok:>21}")
    print(f"{'total':<13} {len(rows):>8} {total_tokens:>11,} {sum(reasons.values()):>14} {total_mismatch:>21}")
    print(f"round trip decode(encode(x)) == NFC(x) with (b): {len(rows) - rt_fail}/{len(rows)}")
    print("differences (a) vs (b) by explanation:", reasons or "none")
    for c, src, why, text, a, b in diffs:
        print(f"  [{c}] {src}: {why}\n     text {text!r}\n     hf {a} ... ref {b} ...")

    if args.full:
        with open(args.full, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"wrote {len(rows)} segments to {args.full}")
    if args.fixture:
        write_fixture(args.fixture, cats, rows, enc_ref, enc_hf, ref, args.fixture_per_category)
    print(f"done in {time.time() - t0:.0f} s")
    return 1 if rt_fail or reasons.get("other") or reasons.get("nfc+other") else 0


def write_fixture(out_dir, cats, rows, enc_ref, enc_hf, ref, per_cat):
    """About 250 short segments: the hand-picked cases, then per category the segments where (a) and (b)
    differ first and a deterministic spread of the rest; long texts cut to 400 characters (and re-encoded)."""
    rng = random.Random(7)
    chosen = []
    by_cat = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r)
    # Hand-picked cases always go in: special-token samples, fixed contractions, NFC cases, one
    # handwritten paragraph per language.
    chosen += [r for r in rows if r["source"].startswith(("sample-", "fixed-", "handmade-"))
               or (r["source"].startswith("handwritten-") and r["source"].endswith("-joined"))]
    for cat in cats:
        rs = by_cat.get(cat, [])
        differ = [r for r in rs if "hf_ids" in r]
        rest = [r for r in rs if "hf_ids" not in r]
        rng.shuffle(rest)
        take = differ[: per_cat // 3] + rest
        chosen += take[:per_cat]
    chosen.append({"category": "hello", "source": "brief", "text": HELLO[0]})
    seen, out = set(), []
    for r in chosen:
        text = r["text"]
        if len(text) > 400:
            start = rng.randint(0, len(text) - 400)
            text = text[start:start + 400]
        if text in seen:
            continue
        seen.add(text)
        b = enc_ref([text])[0]
        a = enc_hf([text])[0]
        row = {"category": r["category"], "source": r["source"], "text": text, "ids": b}
        if a != b:
            row["hf_ids"] = a
        norm = ref.normalizer.normalize_str(text)
        if norm != text:
            row["decoded"] = norm
        out.append(row)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "segments.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for r in out:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(out)} fixture segments ({os.path.getsize(path):,} bytes) to {path}")


if __name__ == "__main__":
    sys.exit(main())
