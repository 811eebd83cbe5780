"""The engine's forward pass: a loaded transformers model's weights, run as a compact layer stack.

The three supported architectures (llama, qwen2, qwen3) are the same decoder layer up to biases on the QKV
projection (qwen2) and an RMSNorm of each query and key head (qwen3). Written out here (as gpt-fast does), the
step is what the engine needs and nothing else: the query/key/value projections and the gate/up projections are
each ONE matrix product (their weights concatenated once, the model's own parameters becoming views of the
fused tensors, so no memory is added and the transformers model keeps working), keys and values go straight
into the engine's static cache at the slots it names, attention is a call the engine passes in (the method, or
dense SDPA), and only the positions asked for reach the LM head. Norms, rotary embedding and the MLP's
activation are plain torch, fused by torch.compile where the engine compiles the decode step's pieces
(``compiled=True``). A decode step (``decode_layers``) is two compiled graphs per layer with attention the one
break between them: ``project_qkv`` (fused QKV, head norms, rotary, and the cache write) and ``finish_and_norm``
(output projection, residual, norm, fused gate/up, activation, down projection, residual, and the next layer's
input norm, so that residual and norm are one kernel). Prefill chunks and cache correction run the eager
``layer``. tests/test_forward.py checks the logits against the transformers model's own forward.

Under tensor parallelism (harness/tensor_parallel.py) the stack holds this rank's shard: its query and KV heads
(the cache and the attention see only those), its rows of gate/up and columns of the output and down projections,
its rows of the embedding and the LM head. The output and down projections then give partial sums, all-reduced
between three pieces (``project_out``, ``mlp_partial``, ``add_and_norm``) instead of one ``finish_and_norm``; the
embedding's lookups are summed and the logits all-gathered, so every rank holds the whole hidden state and the
same logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lychee_bench.harness.tensor_parallel import TensorParallel, is_sharded, parallel_of, shard_bounds

SUPPORTED = ("llama", "qwen2", "qwen3")


@dataclass
class LayerWeights:
    """One decoder layer's tensors (the fused ones are the model's own storage)."""

    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: torch.Tensor  # [(Hq + 2 Hkv) * D, hidden]
    qkv_bias: torch.Tensor | None
    out: torch.Tensor  # [hidden, Hq * D]
    out_bias: torch.Tensor | None
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None
    q_norm: torch.Tensor | None  # qwen3: per-head RMSNorm of queries and keys
    k_norm: torch.Tensor | None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm, operation for operation (float32 statistics, scale in the input dtype)."""
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [B, H, T, D] with cos/sin [B, T, D] (transformers' rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def _fuse(modules: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for linears that read the same input; each module's parameters become views of it."""
    weight = torch.cat([m.weight.detach() for m in modules])
    biases = [m.bias for m in modules]
    bias = torch.cat([b.detach() for b in biases]) if all(b is not None for b in biases) else None
    if any(b is not None for b in biases) and bias is None:
        raise ValueError("cannot fuse linears where only some have a bias")
    first = 0
    for module in modules:
        rows = module.weight.shape[0]
        module.weight = torch.nn.Parameter(weight[first : first + rows], requires_grad=False)
        if bias is not None:
            module.bias = torch.nn.Parameter(bias[first : first + rows], requires_grad=False)
        first += rows
    return weight, bias


def _fused_weights(
    modules: list[torch.nn.Linear], fused: dict[int, tuple[torch.Tensor, torch.Tensor | None]]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused weight of `modules`, fused once per model: `fused` (kept on the model) maps the storage of a
    fused tensor to it, so a second stack over the same model finds the views and reuses their storage."""
    known = fused.get(modules[0].weight.untyped_storage().data_ptr())
    if known is not None and known[0].shape[0] == sum(m.weight.shape[0] for m in modules):
        return known
    weight, bias = _fuse(modules)
    fused[weight.untyped_storage().data_ptr()] = (weight, bias)
    return weight, bias


def project_qkv(
    x: torch.Tensor,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    q_norm: torch.Tensor | None,
    k_norm: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    eps: float,
    store: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normed input x [B, T, hidden] -> query [B, Hq, T, D], key and value [B, Hkv, T, D] (rotary applied).

    `store` = (key cache, value cache, slots [T]): the keys and values are also written there, inside this
    piece (compiled, the write is fused with the rotary instead of being two more launches per layer). Tensors,
    not a LayerWeights, are the arguments: one compiled graph then serves every layer."""
    batch, tokens, _ = x.shape
    qkv = torch.nn.functional.linear(x, qkv_weight, qkv_bias)
    head_dim = qkv.shape[-1] // (num_heads + 2 * num_kv_heads)
    q, k, v = qkv.view(batch, tokens, -1, head_dim).split([num_heads, num_kv_heads, num_kv_heads], dim=2)
    if q_norm is not None:
        q = rms_norm(q, q_norm, eps)
        k = rms_norm(k, k_norm, eps)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    q, k, v = rotate(q, cos, sin), rotate(k, cos, sin), v.contiguous()
    if store is not None:
        key_cache, value_cache, slots = store
        key_cache.index_copy_(2, slots, k)
        value_cache.index_copy_(2, slots, v)
    return q, k, v


def attention_inputs(
    hidden: torch.Tensor, norm: torch.Tensor, eps: float, *project_args: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [B, T, hidden] -> query [B, Hq, T, D], key and value [B, Hkv, T, D]: the input norm, then
    `project_qkv(normed, *project_args)`."""
    return project_qkv(rms_norm(hidden, norm, eps), *project_args)


def finish_layer(
    hidden: torch.Tensor,
    attended: torch.Tensor,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor | None,
    norm: torch.Tensor,
    gate_up_weight: torch.Tensor,
    gate_up_bias: torch.Tensor | None,
    down_weight: torch.Tensor,
    down_bias: torch.Tensor | None,
    eps: float,
    activation: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """hidden [B, T, hidden] (the layer's input) + attention output [B, Hq, T, D] -> the layer's output."""
    batch, _, tokens, _ = attended.shape
    attended = attended.transpose(1, 2).reshape(batch, tokens, -1)
    hidden = hidden + torch.nn.functional.linear(attended, out_weight, out_bias)
    x = rms_norm(hidden, norm, eps)
    gate, up = torch.nn.functional.linear(x, gate_up_weight, gate_up_bias).chunk(2, dim=-1)
    return hidden + torch.nn.functional.linear(activation(gate) * up, down_weight, down_bias)


def finish_and_norm(next_norm: torch.Tensor, *finish_args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """`finish_layer(*finish_args)`, then the next layer's input norm `next_norm` (the final norm after the last
    layer): (output, normed output). Compiled, the last residual add and the norm are one kernel."""
    hidden = finish_layer(*finish_args)
    return hidden, rms_norm(hidden, next_norm, finish_args[-2])


def project_out(attended: torch.Tensor, out_weight: torch.Tensor) -> torch.Tensor:
    """Attention output [B, Hq, T, D] -> its output projection [B, T, hidden], bias left out: under tensor
    parallelism the rank's heads' partial sum, which the caller all-reduces."""
    batch, _, tokens, _ = attended.shape
    return torch.nn.functional.linear(attended.transpose(1, 2).reshape(batch, tokens, -1), out_weight)


def mlp_partial(
    hidden: torch.Tensor,
    projected: torch.Tensor,
    out_bias: torch.Tensor | None,
    norm: torch.Tensor,
    gate_up_weight: torch.Tensor,
    gate_up_bias: torch.Tensor | None,
    down_weight: torch.Tensor,
    eps: float,
    activation: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """After the reduced output projection: the residual (and the replicated output bias), the norm and the rank's
    share of the MLP. (hidden, the down projection without its bias: a partial sum the caller all-reduces)."""
    hidden = hidden + projected
    if out_bias is not None:
        hidden = hidden + out_bias
    x = rms_norm(hidden, norm, eps)
    gate, up = torch.nn.functional.linear(x, gate_up_weight, gate_up_bias).chunk(2, dim=-1)
    return hidden, torch.nn.functional.linear(activation(gate) * up, down_weight)


def add_and_norm(
    hidden: torch.Tensor, reduced: torch.Tensor, bias: torch.Tensor | None, next_norm: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's last residual (the reduced down projection and its replicated bias), then the next norm."""
    hidden = hidden + reduced
    if bias is not None:
        hidden = hidden + bias
    return hidden, rms_norm(hidden, next_norm, eps)


def unsupported_reasons(config: object) -> list[str]:
    """Why the compact forward cannot run a model with this config (empty: it can)."""
    reasons = []
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        reasons.append(f"the engine runs architectures {', '.join(SUPPORTED)}, not {model_type!r}")
    layer_types = getattr(config, "layer_types", None) or []
    if getattr(config, "use_sliding_window", False) and "sliding_attention" in layer_types:
        reasons.append("sliding-window attention layers are not supported; use a config with use_sliding_window off")
    return reasons


class LayerStack:
    """The model's decoder as the engine runs it: embed, per-layer (attention inputs, attention, finish), head.

    `compiled` routes the per-layer pieces through torch.compile (decode steps: one graph per piece serves every
    layer, since the weights are arguments); prefill chunks call the eager pieces (their shapes vary per chunk,
    and a prefill is bound by its matrix products, not by launches).
    """

    def __init__(self, model: torch.nn.Module, compiled: bool = False):
        config = model.config
        reasons = unsupported_reasons(config)
        if reasons:
            raise ValueError("; ".join(reasons))
        inner = model.model
        self.model = model
        self.config = config
        # Under tensor parallelism this rank's heads, rows and columns (harness/tensor_parallel.py).
        self.parallel: TensorParallel | None = parallel_of(model)
        if self.parallel is None and is_sharded(model):
            raise ValueError(
                "this model's parameters are DTensor shards (transformers' tp_plan); load it through "
                "harness/tensor_parallel.load_model, which gives the engine this process's local shards"
            )
        self.world = 1 if self.parallel is None else self.parallel.world
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads // self.world
        self.num_kv_heads = config.num_key_value_heads // self.world
        self.vocab_size = config.vocab_size
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.eps = config.rms_norm_eps
        self.embedding = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.final_norm = inner.norm
        self.lm_head = model.lm_head
        self.layers: list[LayerWeights] = []
        # Every layer's MLP has the same activation: one object, so one compiled graph serves all layers.
        self.activation: Callable[[torch.Tensor], torch.Tensor] = inner.layers[0].mlp.act_fn
        fused = model.__dict__.setdefault("_lychee_bench_fused", {})
        with torch.no_grad():
            for layer in inner.layers:
                attn, mlp = layer.self_attn, layer.mlp
                qkv, qkv_bias = _fused_weights([attn.q_proj, attn.k_proj, attn.v_proj], fused)
                gate_up, gate_up_bias = _fused_weights([mlp.gate_proj, mlp.up_proj], fused)
                q_norm = getattr(attn, "q_norm", None)
                k_norm = getattr(attn, "k_norm", None)
                self.layers.append(
                    LayerWeights(
                        input_norm=layer.input_layernorm.weight,
                        post_norm=layer.post_attention_layernorm.weight,
                        qkv=qkv,
                        qkv_bias=qkv_bias,
                        out=attn.o_proj.weight,
                        out_bias=attn.o_proj.bias,
                        gate_up=gate_up,
                        gate_up_bias=gate_up_bias,
                        down=mlp.down_proj.weight,
                        down_bias=mlp.down_proj.bias,
                        q_norm=None if q_norm is None else q_norm.weight,
                        k_norm=None if k_norm is None else k_norm.weight,
                    )
                )
        self.scaling = inner.layers[0].self_attn.scaling
        self.compiled = compiled
        # The decode step's pieces (decode_layers): compiled on request, one graph per piece for every layer.
        self._norm, self._project_qkv, self._finish_and_norm = rms_norm, project_qkv, finish_and_norm
        self._head = self._head_of_normed
        self._project_out, self._mlp_partial, self._add_and_norm = project_out, mlp_partial, add_and_norm
        if compiled:
            self._norm = torch.compile(rms_norm, fullgraph=True)
            self._project_qkv = torch.compile(project_qkv, fullgraph=True)
            self._finish_and_norm = torch.compile(finish_and_norm, fullgraph=True)
            self._head = torch.compile(self._head_of_normed, fullgraph=True)
            if self.parallel is not None:  # the all-reduces run between these, outside any graph torch compiles
                self._project_out = torch.compile(project_out, fullgraph=True)
                self._mlp_partial = torch.compile(mlp_partial, fullgraph=True)
                self._add_and_norm = torch.compile(add_and_norm, fullgraph=True)
        self.vocab_rows = (0, self.vocab_size)
        if self.parallel is not None:
            self.vocab_rows = shard_bounds(self.vocab_size, self.world, self.parallel.rank)
            rows = self.vocab_rows[1] - self.vocab_rows[0]
            if self.embedding.weight.shape[0] != rows or self.lm_head.weight.shape[0] != rows:
                raise ValueError(
                    f"rank {self.parallel.rank} should hold vocabulary rows {self.vocab_rows} of the embedding and "
                    f"the LM head, but holds {self.embedding.weight.shape[0]} and {self.lm_head.weight.shape[0]}"
                )

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        if self.parallel is None:
            return self.embedding(token_ids)
        # Vocabulary-parallel: the ids in this rank's rows are looked up here, the others give zeros; the sum over
        # the ranks is every id's row (exactly: each id is non-zero on one rank only).
        first, end = self.vocab_rows
        inside = (token_ids >= first) & (token_ids < end)
        rows = torch.nn.functional.embedding((token_ids - first).clamp(0, end - first - 1), self.embedding.weight)
        return self.parallel.all_reduce_(rows * inside[..., None].to(rows.dtype))

    def rotary_tables(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, T, D] for positions [B, T] (the model's own rotary module: its scaling, e.g. YaRN)."""
        return self.rotary(hidden, positions)

    def layer(
        self,
        index: int,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """One decoder layer, eager (prefill chunks, cache correction); `attend(layer, q, k, v)` stores k/v in the
        cache and returns the attention output [B, Hq, T, D]."""
        w = self.layers[index]
        q, k, v = attention_inputs(
            hidden, w.input_norm, self.eps, w.qkv, w.qkv_bias, w.q_norm, w.k_norm, cos, sin, *self._heads, self.eps
        )
        attended = attend(index, q, k, v)
        if self.parallel is not None:
            return self._finish_parallel(w, hidden, attended, None, eager=True)[0]
        return finish_layer(hidden, attended, *self._finish_weights(w), self.eps, self.activation)

    def decode_layers(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attend: Callable[[int, torch.Tensor], torch.Tensor],
        stores: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Every layer of a decode step, then the final norm: hidden [B, T, hidden] -> normed [B, T, hidden].

        Layer l's keys and values are written into `stores[l]` (key cache, value cache, slots) by its QKV piece;
        `attend(layer, q)` returns the attention output [B, Hq, T, D] over the written cache. Each layer ends
        with the next layer's input norm, so per layer there are two dense pieces and attention between them."""
        weights = self.layers
        normed = self._norm(hidden, weights[0].input_norm, self.eps)
        for index, w in enumerate(weights):
            q, _, _ = self._project_qkv(
                normed, w.qkv, w.qkv_bias, w.q_norm, w.k_norm, cos, sin, *self._heads, self.eps, stores[index]
            )
            attended = attend(index, q)
            following = weights[index + 1].input_norm if index + 1 < len(weights) else self.final_norm.weight
            if self.parallel is not None:
                hidden, normed = self._finish_parallel(w, hidden, attended, following)
                continue
            hidden, normed = self._finish_and_norm(
                following, hidden, attended, *self._finish_weights(w), self.eps, self.activation
            )
        return normed

    def _finish_parallel(
        self,
        w: LayerWeights,
        hidden: torch.Tensor,
        attended: torch.Tensor,
        next_norm: torch.Tensor | None,
        eager: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A layer's end under tensor parallelism: output projection, all-reduce, residual, norm, the rank's MLP
        share, all-reduce, residual (and `next_norm` when given). (output, normed output or None). `eager`: the
        uncompiled pieces (prefill chunks, whose shapes vary)."""
        assert self.parallel is not None
        out_piece, mlp_piece = (project_out, mlp_partial) if eager else (self._project_out, self._mlp_partial)
        projected = self.parallel.all_reduce_(out_piece(attended, w.out))
        hidden, down = mlp_piece(
            hidden, projected, w.out_bias, w.post_norm, w.gate_up, w.gate_up_bias, w.down, self.eps, self.activation
        )
        self.parallel.all_reduce_(down)
        if next_norm is None:
            hidden = hidden + down
            return (hidden if w.down_bias is None else hidden + w.down_bias), None
        return self._add_and_norm(hidden, down, w.down_bias, next_norm, self.eps)

    @property
    def _heads(self) -> tuple[int, int]:
        return self.num_heads, self.num_kv_heads

    @staticmethod
    def _finish_weights(w: LayerWeights) -> tuple[torch.Tensor | None, ...]:
        return (w.out, w.out_bias, w.post_norm, w.gate_up, w.gate_up_bias, w.down, w.down_bias)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, hidden] (the positions that need logits, before the final norm) -> float32 logits [B, V]."""
        return self._whole_vocabulary(self._logits(hidden))

    def logits_of_normed(self, normed: torch.Tensor) -> torch.Tensor:
        """normed [B, hidden] (after the final norm, as decode_layers returns) -> float32 logits [B, vocab]."""
        return self._whole_vocabulary(self._head(normed))

    def _whole_vocabulary(self, logits: torch.Tensor) -> torch.Tensor:
        """Under tensor parallelism every rank's vocabulary rows' logits, gathered (every rank gets all of them)."""
        return logits if self.parallel is None else self.parallel.gather_last(logits, self.vocab_size)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._head_of_normed(self.final_norm(hidden))

    def _head_of_normed(self, normed: torch.Tensor) -> torch.Tensor:
        # The LM head's weight, not its module: under tensor parallelism transformers' hooks on the module would
        # gather through DTensors; the stack gathers itself.
        return torch.nn.functional.linear(normed, self.lm_head.weight, self.lm_head.bias).float()
