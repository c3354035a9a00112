"""Add your own probe from a script and run it beside a built-in one in the same forward pass.

The probe below measures, per layer, how much of the final token's attention goes to the prompt's first real
token (an "attention sink"): for head h of layer l,

    m_{l,h} = a_{l,h}(t_final, j_first)      (the final query's attention row at the first real key)

averaged over heads per prompt, then over prompts. It reads the attention pattern, reduced on the fly to the
[batch, heads] numbers it needs, so memory never holds [batch, heads, T, T] across batches. The built-in
``attention_focusing`` probe reads the same site, so both are served by ONE forward pass per batch
(attention_focusing then runs its two null models on passes of their own: the same config at initialisation and
the shuffled-context control).

    python examples/add_your_own_probe.py --model path/to/hf-folder-or-gguf   # any model gp.load_model takes
    python examples/add_your_own_probe.py --smoke                            # a tiny random Llama, seconds
"""

from __future__ import annotations

import argparse

import torch

import geoprobe as gp

NAME = "first_token_attention"


def first_token_mass(act: gp.backends.sites.SiteActivation) -> torch.Tensor:
    """``[b, heads]``: the final query's attention on each row's first real token (the pattern has all
    positions here: ``[b, heads, T_q, T_k]``)."""
    dev = act.value.device
    rows = torch.arange(act.value.shape[0], device=dev)
    first = act.attention_mask.long().argmax(dim=1).to(dev)  # first real token (left or right padding)
    final_row = act.value[rows, :, act.final_index.to(dev)]  # [b, heads, T_k]
    return final_row[rows, :, first]


def needs(state: gp.ProbeState) -> list[gp.Need]:
    return [gp.Need("pattern", state.all_layers, positions="first_token_mass", reduce=first_token_mass)]


def run(state: gp.ProbeState, acts: gp.Collected) -> gp.ProbeOutput:
    mass = acts.get("pattern", "first_token_mass")  # {layer: [N prompts, heads]}
    rows = [gp.ResultRow(NAME, "first_token_attention_mass", float(m.mean()), layer=layer,
                         meta={"n_prompts": int(m.shape[0]), "aggregate": "mean over heads, then prompts",
                               "site_name": "pattern"})  # rows then carry the TransformerLens hook name
            for layer, m in sorted(mass.items())]
    peak = max(rows, key=lambda r: r.value)
    return gp.ProbeOutput(rows, {"peak_layer": peak.layer, "peak_mass": peak.value})


PROBE = gp.Probe(name=NAME, run=run, needs=needs, kinds=("llm",),
                 description="final-token attention on the first real token, per layer")


def tiny_llama_with_tokenizer():
    """A random 2-layer Llama (rotary positions) and a whitespace word-level tokenizer (nothing downloaded)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    names = ["<pad>", "<unk>", "<bos>"] + [f"w{i}" for i in range(3, 48)]
    tok = Tokenizer(models.WordLevel(vocab={n: i for i, n in enumerate(names)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                                     bos_token="<bos>")
    cfg = transformers.LlamaConfig(vocab_size=len(names), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64, bos_token_id=2, eos_token_id=2, pad_token_id=0)
    transformers.set_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval(), tokenizer


PROMPTS = [" ".join(f"w{3 + (5 * i + 7 * j) % 44}" for j in range(3 + i % 6)) for i in range(12)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="anything gp.load_model accepts (folder, hub id, GGUF file)")
    ap.add_argument("--smoke", action="store_true", help="use a tiny random Llama (seconds)")
    args = ap.parse_args()
    if args.smoke:
        model, tokenizer = tiny_llama_with_tokenizer()
        handle = gp.load_model(model, tokenizer=tokenizer)  # the object itself, not reloaded
        prompts = PROMPTS
    elif args.model:
        handle = gp.load_model(args.model, device="cpu")
        prompts = None  # geoprobe's built-in mixed prompt set
    else:
        ap.error("give --model or --smoke")

    gp.register_probe(PROBE, replace=True)  # replace: re-running the script in one session is fine
    report = gp.run_probes(handle, [NAME, "attention_focusing"], gp.ProbeOptions(n_boot=100),
                           prompts=prompts, n=None if prompts else 24, batch_size=8)
    print(report.manifest["forward_passes"]["shared"])
    mine = report.rows[report.rows["probe"] == NAME][["layer", "statistic", "value", "hook"]]
    print(mine.to_string(index=False, float_format=lambda v: f"{v:.6f}"))
    print(f"peak layer {report.summary[NAME]['peak_layer']}; focusing "
          f"{report.summary['attention_focusing']['focusing_percent']:.1f}%")


if __name__ == "__main__":
    main()
