"""Shared fixtures: tiny random Hugging Face models saved to temporary folders, plus the shared-data path.

Every builder writes a real ``save_pretrained`` folder with a locally built word-level tokenizer beside it
(nothing is downloaded), so the TransformerLens bridge and nnsight boot them offline exactly as they boot a
hub checkpoint. The folders are session-scoped: each family is built once per test session.

Families and what each one exercises:

=========  ==================================================================================
gpt2       the wind-tunnel transformer: Conv1D fused ``c_attn``, learned positions, pre-LN
neox       GPT-NeoX (Pythia): fused ``query_key_value`` in [heads, 3, d_head] order, partial rotary
           (25 %), parallel attention + MLP
phi        Phi: separate q/k/v/dense, partial rotary (50 %), parallel block with one LayerNorm
llama      Llama with grouped-query attention (4 query / 2 KV heads), tied embeddings, RMSNorm
mistral    Mistral with grouped-query attention and a real sliding window (4) shorter than the tests'
           sequences
mamba      Mamba-1: attention-free
=========  ==================================================================================
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: the project's shared reference folder (models, data); tests skip when it is absent
SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"

TINY_VOCAB = 48  # word-level vocabulary: <pad>, <unk>, <bos>, w3 ... w47
TINY_CTX = 32


def build_word_tokenizer(folder: Path, vocab_size: int = TINY_VOCAB) -> None:
    """Save a whitespace word-level tokenizer (``<pad>``=0, ``<unk>``=1, ``<bos>``=2, ``w3``...)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = ["<pad>", "<unk>", "<bos>"] + [f"w{i}" for i in range(3, vocab_size)]
    tok = Tokenizer(models.WordLevel(vocab={n: i for i, n in enumerate(names)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<bos>")
    fast.save_pretrained(folder)


def _tiny_config(family: str):
    import transformers as tf

    common = dict(vocab_size=TINY_VOCAB, bos_token_id=2, eos_token_id=2, pad_token_id=0)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=TINY_CTX,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
                             **common)
    if family == "neox":
        return tf.GPTNeoXConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=128, max_position_embeddings=TINY_CTX, rotary_pct=0.25,
                                use_parallel_residual=True, tie_word_embeddings=False, **common)
    if family == "phi":
        return tf.PhiConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=TINY_CTX,
                            partial_rotary_factor=0.5, resid_pdrop=0.0, embd_pdrop=0.0,
                            attention_dropout=0.0, **common)
    if family == "llama":
        return tf.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, intermediate_size=64, max_position_embeddings=TINY_CTX,
                              tie_word_embeddings=True, **common)
    if family == "mistral":
        return tf.MistralConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=TINY_CTX,
                                sliding_window=4, tie_word_embeddings=False, **common)
    if family == "mamba":
        return tf.MambaConfig(hidden_size=32, num_hidden_layers=2, state_size=4, expand=2, conv_kernel=3,
                              **common)
    raise KeyError(family)


TINY_FAMILIES = ("gpt2", "neox", "phi", "llama", "mistral", "mamba")


def build_tiny_model(family: str, folder: Path, seed: int = 0) -> Path:
    """Build a tiny random ``family`` causal LM, save it (safetensors) and a tokenizer into ``folder``."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    cfg = _tiny_config(family)
    cls = tf.MambaForCausalLM if family == "mamba" else tf.AutoModelForCausalLM
    model = cls.from_config(cfg) if cls is tf.AutoModelForCausalLM else cls(cfg)
    with torch.no_grad():  # random init has tiny biases/norm gains at exactly 0/1: make every term count
        for p in model.parameters():
            if p.ndim == 1:  # biases and norm gains
                p.add_(0.1 * torch.randn_like(p))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    build_word_tokenizer(folder)
    return folder


def write_tunnel_run(run_dir: Path, model_folder_builder=None, *, arch: str = "transformer") -> Path:
    """A minimal geoprobe wind-tunnel run folder: ``manifest.json`` + ``model/`` (GPT-2 + word tokenizer).

    The task (bijection V=24: 2V = 48 tokens) matches the tiny models' vocabulary, as ``probe`` checks.
    """
    import json

    run_dir.mkdir(parents=True, exist_ok=True)
    (model_folder_builder or (lambda f: build_tiny_model("gpt2", f)))(run_dir / "model")
    manifest = {
        "kind": "geoprobe-tunnel-run",
        "arch": arch,
        "task": {"name": "bijection", "config": {"V": 24, "L": 5}},
        "size": {"n_layers": 2, "n_heads": 4, "d_model": 32, "max_positions": TINY_CTX, "d_mlp": 64},
        "seed": 0,
        "status": "finished",
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return run_dir


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Lazily built tiny model folders, one per family: ``tiny_model_dirs_get("llama")``."""
    root = tmp_path_factory.mktemp("tiny_models")
    return _LazyDirs(root)


class _LazyDirs(dict):
    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, family: str) -> Path:
        path = build_tiny_model(family, self.root / family)
        self[family] = path
        return path


@pytest.fixture(scope="session")
def tunnel_run_dir(tmp_path_factory) -> Path:
    """A geoprobe run folder holding a tiny GPT-2 wind-tunnel model."""
    return write_tunnel_run(tmp_path_factory.mktemp("runs") / "tunnel")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared reference folder {SHARED_DIR} is absent")
    return SHARED_DIR


@pytest.fixture(scope="session")
def tiny_handle(tiny_model_dirs):
    """``tiny_handle(family, backend="transformer_lens")``: a loaded handle, cached for the session."""
    cache: dict[tuple[str, str], object] = {}

    def get(family: str, backend: str = "transformer_lens"):
        from geoprobe.backends import load_model

        key = (family, backend)
        if key not in cache:
            cache[key] = load_model(tiny_model_dirs[family], backend=backend, device="cpu")
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_hf(tiny_model_dirs):
    """``tiny_hf(family)``: the plain HF model (eager attention) of a tiny folder, as an independent reference."""
    cache: dict[str, object] = {}

    def get(family: str):
        import transformers as tf

        if family not in cache:
            cls = tf.MambaForCausalLM if family == "mamba" else tf.AutoModelForCausalLM
            cache[family] = cls.from_pretrained(tiny_model_dirs[family], attn_implementation="eager").eval()
        return cache[family]

    return get


#: the real tier's model: SmolLM2-135M-Instruct (Llama, 30 layers, 9 query / 3 KV heads); tests skip when absent.
#: The first conversion dequantises (~20 s on 2 cores) and caches a plain HF folder under $GEOPROBE_CACHE_DIR
#: (default here: <tmp>/geoprobe-test-cache); later loads take about a second.
SMOLLM2_GGUF = SHARED_DIR / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF file; sets ``GEOPROBE_CACHE_DIR`` for the session when the caller has not."""
    if not SMOLLM2_GGUF.is_file():
        pytest.skip(f"{SMOLLM2_GGUF} is absent")
    pytest.importorskip("gguf")
    os.environ.setdefault("GEOPROBE_CACHE_DIR", str(Path(tempfile.gettempdir()) / "geoprobe-test-cache"))
    return SMOLLM2_GGUF


@pytest.fixture(scope="session")
def smollm2_cache_dir(smollm2_gguf) -> Path:
    return Path(os.environ["GEOPROBE_CACHE_DIR"])


@pytest.fixture(scope="session")
def smollm2_torch(smollm2_gguf, smollm2_cache_dir):
    """The model on the plain-torch backend (CPU, float32), loaded once per session."""
    from geoprobe.backends import load_model

    return load_model(smollm2_gguf, backend="torch", device="cpu", cache_dir=smollm2_cache_dir)


def word_pool(domain: str, n: int, seed: int = 0):
    """A scan prompt pool of random ``wN`` words that the tiny word-level tokenizer reads (the built-in pools are
    English, all ``<unk>`` to it): ``n`` distinct texts of 3-12 words, a function of (domain, seed) only."""
    import numpy as np

    from geoprobe.scan.pools.base import Candidate

    rng = np.random.default_rng([seed, sum(map(ord, domain))])
    out, seen = [], set()
    while len(out) < n:
        text = " ".join(f"w{int(i)}" for i in rng.integers(3, TINY_VOCAB, size=int(rng.integers(3, 13))))
        if text not in seen:
            seen.add(text)
            out.append(Candidate(f"{domain}-{len(out)}", text, domain, domain))
    return out
