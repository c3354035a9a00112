"""TransformerLens 4.x backend: ``TransformerBridge`` over the Hugging Face model (the default backend).

Canonical site -> bridge hook (aliases resolved by the bridge):

================  =====================================================================================
``resid_pre``     ``blocks.{l}.hook_resid_pre``        ``resid_mid`` ``blocks.{l}.hook_resid_mid``
``resid_post``    ``blocks.{l}.hook_resid_post``       ``attn_out``  ``blocks.{l}.hook_attn_out``
``mlp_out``       ``blocks.{l}.hook_mlp_out``          ``z``         ``blocks.{l}.attn.hook_z``
``q``             ``blocks.{l}.attn.hook_q``           ``k``          ``blocks.{l}.attn.hook_k``
``v``             ``blocks.{l}.attn.hook_v``           ``pattern``   ``blocks.{l}.attn.hook_pattern``
``rot_q/rot_k``   ``q``/``k`` + ``blocks.{l}.attn.hook_cos/hook_sin`` -> :func:`apply_rotary`
``logits``        the forward's return value
================  =====================================================================================

``hook_rot_q``/``hook_rot_k`` fire for Llama/Mistral/Phi but never for GPT-NeoX, so post-RoPE q/k are always
rebuilt from the pre-RoPE hooks and the cos/sin the attention actually received (tests check the rebuild
against ``hook_rot_k`` where it fires and against the model's own attention output everywhere).

The bridge always runs its own eager attention (T x T scores per head, even with no hooks): about 1.1-1.2x
plain HF time at short contexts, ~2x time and memory at 2k tokens (BACKENDS.md). Booting rewires the HF
model in place, and ``enable_compatibility_mode()`` would fold norms into weights; geoprobe never calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from geoprobe.backends.attention import apply_rotary
from geoprobe.backends.handle import CapturePlan, Edit, Emit, ModelHandle, final_rows_pre_hook
from geoprobe.backends.info import ModelInfo
from geoprobe.backends.layout import AttentionWeights
from geoprobe.backends.sites import layer_index
from geoprobe.logs import quiet_libraries

_HOOKS = {
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "z": "blocks.{l}.attn.hook_z",
    "q": "blocks.{l}.attn.hook_q",
    "k": "blocks.{l}.attn.hook_k",
    "v": "blocks.{l}.attn.hook_v",
    "pattern": "blocks.{l}.attn.hook_pattern",
    "cos": "blocks.{l}.attn.hook_cos",
    "sin": "blocks.{l}.attn.hook_sin",
}
_END = "blocks.{l}.hook_resid_post"  # fires last in a block: the layer's captures are assembled there


def _raw_needs(site: str, rotary: bool) -> list[str]:
    if site in ("rot_q", "rot_k"):
        return [site[-1], "cos", "sin"] if rotary else [site[-1]]
    return [site]


class BridgeHandle(ModelHandle):
    """:class:`ModelHandle` over a ``transformer_lens.model_bridge.TransformerBridge``."""

    backend = "transformer_lens"

    def __init__(self, bridge: Any, info: ModelInfo, tokenizer: Any, device: torch.device, dtype: torch.dtype,
                 manifest: dict[str, Any] | None = None) -> None:
        super().__init__(info, tokenizer, device, dtype, manifest)
        self.bridge = bridge
        self.bridge.eval()

    @property
    def model(self) -> Any:
        return self.bridge

    @property
    def hf_model(self) -> torch.nn.Module:
        """The (bridge-rewired) HF model."""
        return self.bridge.original_model

    @property
    def attention_implementation(self) -> str:
        return "eager (TransformerBridge)"

    def _name(self, raw: str, layer: int) -> str:
        return _HOOKS[raw].format(l=layer)

    def _forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor, plan: CapturePlan, emit: Emit,
                 edits: Sequence[Edit]) -> torch.Tensor | None:
        rotary = self.info.positional == "rotary"
        hooks: list[tuple[str, Callable]] = []
        for e in edits:  # edits first: captures on the same hook point then see the edited value
            if plan.stop_at_layer is not None and e.layer >= plan.stop_at_layer:
                continue
            hooks.append((self._name(e.site, e.layer), lambda x, hook, _f=e.fn: _f(x)))
        raw: dict[int, dict[str, torch.Tensor]] = {}
        for layer in plan.layers:
            needed: list[str] = []
            for s in plan.layer_sites:
                needed += [r for r in _raw_needs(s, rotary) if r not in needed and r != "resid_post"]
            for r in needed:
                def grab(x: torch.Tensor, hook: Any, _l=layer, _r=r) -> torch.Tensor:
                    raw.setdefault(_l, {})[_r] = x
                    return x

                hooks.append((self._name(r, layer), grab))

            def assemble(x: torch.Tensor, hook: Any, _l=layer) -> torch.Tensor:
                got = raw.pop(_l, {})
                got["resid_post"] = x
                for s in plan.layer_sites:
                    if s in ("rot_q", "rot_k"):
                        pre = got[s[-1]]
                        emit(s, _l, apply_rotary(pre.float(), got["cos"], got["sin"]) if rotary else pre)
                    else:
                        emit(s, _l, got[s])
                return x

            hooks.append((_END.format(l=layer), assemble))
        head_hook = None
        head = getattr(getattr(self.bridge, "unembed", None), "original_component", None)
        if plan.stop_at_layer is None and plan.final_logits_only and isinstance(head, torch.nn.Module):
            head_hook = head.register_forward_pre_hook(final_rows_pre_hook(attention_mask))  # final rows only
        try:
            out = self.bridge.run_with_hooks(tokens, fwd_hooks=hooks, attention_mask=attention_mask,
                                             stop_at_layer=plan.stop_at_layer, return_type="logits")
        finally:
            if head_hook is not None:
                head_hook.remove()
        return out if plan.stop_at_layer is None else None

    def attention_weights(self, layer: int) -> AttentionWeights:
        a = self.bridge.blocks[layer_index(layer, self.info.n_layers)].attn
        H, Hkv, d, dm = self.info.n_heads, self.info.n_kv_heads, self.info.d_head, self.info.d_model
        dev = a.W_Q.device

        def w(x: torch.Tensor, heads: int) -> torch.Tensor:  # bridge layout [heads, d_model, d_head]
            x = x.detach().float()
            if x.ndim == 2:
                x = x.reshape(dm, heads, d).permute(1, 0, 2)
            return x.permute(1, 0, 2).contiguous()

        def b(x: torch.Tensor | None, heads: int) -> torch.Tensor:
            return (torch.zeros(heads, d, device=dev) if x is None else x.detach().float().reshape(heads, d))

        W_O = a.W_O.detach().float().reshape(H, d, dm)
        b_O = a.b_O
        return AttentionWeights(
            W_Q=w(a.W_Q, H), W_K=w(a.W_K, Hkv), W_V=w(a.W_V, Hkv), W_O=W_O,
            b_Q=b(a.b_Q, H), b_K=b(a.b_K, Hkv), b_V=b(a.b_V, Hkv),
            b_O=torch.zeros(dm, device=dev) if b_O is None else b_O.detach().float().reshape(dm),
        )

    def input_norm(self, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        blk = self.bridge.blocks[layer_index(layer, self.info.n_layers)]
        ln = blk.ln1 if hasattr(blk, "ln1") else blk.norm

        def f(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return ln(x.to(self.dtype)).float()

        return f


@quiet_libraries()
def boot_bridge(src: Any, info: ModelInfo, tokenizer: Any, device: torch.device, dtype: torch.dtype, *,
                trust_remote_code: bool = False, **kwargs: Any) -> BridgeHandle:
    """Boot ``TransformerBridge`` on the resolved local folder (never the network); ``trust_remote_code`` is
    passed explicitly (off unless the caller turns it on)."""
    import contextlib
    import io

    from geoprobe.backends.errors import UnsupportedModelError

    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        raise UnsupportedModelError("the transformer_lens backend needs transformer-lens>=4.3") from None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            bridge = TransformerBridge.boot_transformers(str(src.model_dir), device=str(device), dtype=dtype,
                                                         tokenizer=tokenizer,
                                                         trust_remote_code=bool(trust_remote_code), **kwargs)
    except Exception as exc:
        raise UnsupportedModelError(f"TransformerBridge cannot boot {src.name}: "
                                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                                    ) from None
    return BridgeHandle(bridge, info, tokenizer, device, dtype, manifest=src.manifest)
