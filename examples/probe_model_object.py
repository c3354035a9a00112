"""Probe a model object you already hold (e.g. one you just fine-tuned in this session).

``gp.load_model`` takes the object itself (a ``transformers`` model with its tokenizer, a TransformerLens
``TransformerBridge`` or an nnsight ``LanguageModel``): nothing is saved, copied or reloaded, and the handle
runs the very module you hold (``handle.hf_model is model``). ``gp.run_probes`` takes the handle (or the object
and ``tokenizer=``) and the prompts.

    python examples/probe_model_object.py --model EleutherAI/pythia-70m     # any causal LM you can load
    python examples/probe_model_object.py --smoke                          # a tiny random GPT-2, seconds
"""

from __future__ import annotations

import argparse

import transformers

import geoprobe as gp
from geoprobe.report_text import summary_table

PROMPTS = [f"w{3 + i % 7} w{5 + (3 * i) % 11} w{4 + (5 * i) % 13} w{6 + i % 5} w{3 + (7 * i) % 17}"
           for i in range(24)]


def tiny_gpt2_with_tokenizer():
    """A random 2-layer GPT-2 and a whitespace word-level tokenizer (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    names = ["<pad>", "<unk>", "<bos>"] + [f"w{i}" for i in range(3, 48)]
    tok = Tokenizer(models.WordLevel(vocab={n: i for i, n in enumerate(names)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                                     bos_token="<bos>")
    cfg = transformers.GPT2Config(vocab_size=len(names), n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                  bos_token_id=2, eos_token_id=2, pad_token_id=0)
    transformers.set_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval(), tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="hub id or folder to load as 'the model you hold' (not needed with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="use a tiny random GPT-2 (seconds)")
    args = ap.parse_args()
    if args.smoke:
        model, tokenizer = tiny_gpt2_with_tokenizer()
        prompts = PROMPTS
    elif args.model:
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model)
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
        prompts = None  # geoprobe's built-in mixed prompt set
    else:
        ap.error("give --model or --smoke")

    # --- the part that matters: hand the in-memory model to geoprobe -------------------------------------
    handle = gp.load_model(model, tokenizer=tokenizer)  # backend "torch": plain hooks on your module
    print(f"{handle!r}; runs the object you hold: {handle.hf_model is model}")
    report = gp.run_probes(handle, ["key_orthogonality", "attention_focusing", "value_manifold"],
                           gp.ProbeOptions(n_boot=100), prompts=prompts, n=None if prompts else 48)
    # the same in one call: gp.run_probes(model, [...], tokenizer=tokenizer, prompts=prompts)
    print(summary_table(report.summary), end="")
    print(report.rows.groupby("probe").size().to_string())


if __name__ == "__main__":
    main()
