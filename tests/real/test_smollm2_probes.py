"""The real tier for the probe suite: SmolLM2-135M (Llama, GQA 9q/3kv) from the shared GGUF file."""

from __future__ import annotations

import pytest

from geoprobe.probes.suite import ProbeOptions, run_probes
from geoprobe.probes.targets import llm_target

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smol_target(smollm2_gguf):
    return llm_target(str(smollm2_gguf), n=24, device="cpu", batch_size=12)


def test_smollm2_llm_probes(smol_target):
    assert smol_target.n == 24
    # next-token entropy at the final token: finite, within [0, log2 vocab]
    assert float(smol_target.final_entropy.min()) >= 0
    assert float(smol_target.final_entropy.max()) <= 15.6
    report = run_probes(smol_target, ["key_orthogonality", "attention_focusing", "value_manifold"],
                        ProbeOptions(n_boot=100))
    df = report.rows
    ko = df[(df.probe == "key_orthogonality") & (df.variant == "weights") & df["head"].notna()]
    assert len(ko) == 30 * 3  # per KV head under grouped-query attention
    assert ((ko["value"] > 0) & (ko["value"] < 1)).all()
    att = report.summary["attention_focusing"]
    assert 0 < att["first_layer_entropy_bits"] <= 6.0  # at most log2(64 tokens) = 6 bits
    vm = report.summary["value_manifold"]
    assert vm["d"] == 3 * 64 and vm["n"] == 24 and vm["layer"] == 29
    assert vm["pc1_share"] > vm["isotropic_null_pc1"]  # trained values are far from isotropic
    assert report.summary["verdict"]["of"] == 3
    # focusing against its nulls under the same code: fresh weights do not focus, the shuffled-context control
    # focuses less but still passes the paper's 30% (so the paper's rule is vacuous on its own); the model
    # beats both (paired CIs over prompts)
    assert abs(att["init_focusing_percent"]) < 5 and att["focusing_percent"] > 30
    assert att["shuffled_focusing_percent"] > 30 and att["focusing_minus_shuffled"]["ci"][0] > 0
    assert att["focusing_above_null"] is True
    v = report.summary["verdict"]
    assert "attention_focusing" in v["vacuous"] and v["details"]["attention_focusing"]["nulls"]["shuffled"]["passed"]
    assert v["calibrated"]["by_criterion"]["attention_focusing (vs initial weights and shuffled prompts)"] is True
