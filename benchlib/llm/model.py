"""Llama-shaped decoders: the named shapes, their byte and FLOP counts, and the reference model.

The reference model is plain PyTorch with seeded random weights (no downloads): RMSNorm, rotary
position embeddings (RoPE on interleaved pairs, Meta's layout, applied in place in the model dtype
with real arithmetic so ``torch.compile`` can fuse it), grouped-query attention through
``torch.nn.functional.scaled_dot_product_attention`` (query head ``g * kv_heads + k`` reads KV head
``k``, which lets the decode step pass each KV head's query group as SDPA's query length and get
its output back in the O projection's layout) and a SwiGLU MLP. Q/K/V are one fused matmul
and gate/up another; the residual adds ride on the output matmuls (``addmm_``). Llama 3's RoPE
frequency scaling is left out: it changes values, not cost.

A :class:`Session` owns everything a decode step touches: the static KV cache
``[layers, batch, 2 * kv_heads, max_seq, head_dim]`` (K heads then V heads, so one write stores
both; :attr:`Session.k_cache` / :attr:`Session.v_cache` are the ``[layers, batch, kv_heads,
max_seq, head_dim]`` views), the current tokens, per-row positions, the step counter and the output
buffer. Given ``kv_pool_tokens`` (:func:`kv_pool_tokens`: a share of the free memory, as serving
engines size their cache) the cache is the front of a pool of that many tokens, allocated whole and
held for the session like an engine's block pool: the batch works on the positions it needs, so a
larger pool holds more memory without changing a decode step's work. :meth:`Session.decode_step` allocates nothing the caller keeps, takes its positions from a
device tensor and builds its attention mask from it, so it can be captured in a CUDA graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Bytes per element of each supported dtype.
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
#: Cache lengths are rounded up to this, so attention masks stay aligned for the fused kernels.
SEQ_ALIGN = 64
INIT_STD = 0.02  # the Hugging Face Llama initializer range


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Llama-architecture decoder."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.heads // self.kv_heads

    @property
    def layer_matmul_params(self) -> int:
        """Weights of the matmuls in all layers (QKV, O, gate/up, down)."""
        d = self.head_dim
        attention = self.hidden * (self.heads + 2 * self.kv_heads) * d + self.heads * d * self.hidden
        return self.layers * (attention + 3 * self.hidden * self.intermediate)

    @property
    def lm_head_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        """All parameters; a tied LM head shares the embedding."""
        norms = (2 * self.layers + 1) * self.hidden
        head = 0 if self.tied_embeddings else self.lm_head_params
        return self.vocab * self.hidden + self.layer_matmul_params + norms + head

    def kv_bytes_per_token(self, dtype: str) -> int:
        """K and V of one position in every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * DTYPE_BYTES[dtype]

    def decode_weight_bytes(self, dtype: str) -> int:
        """Weight bytes a decode step must read: every matmul, the LM head and the norms."""
        norms = (2 * self.layers + 1) * self.hidden
        return (self.layer_matmul_params + self.lm_head_params + norms) * DTYPE_BYTES[dtype]

    def prefill_flop(self, prompt_len: int) -> float:
        """FLOP of one prompt's prefill: 2 per matmul weight per token, causal attention, LM head once."""
        attention = 2.0 * self.layers * self.heads * self.head_dim * prompt_len**2
        return 2.0 * self.layer_matmul_params * prompt_len + attention + 2.0 * self.lm_head_params


SHAPES: dict[str, ModelShape] = {
    shape.name: shape
    for shape in (
        ModelShape("tiny", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512,
                   tied_embeddings=True),
        # Llama 3.2 1B and 3B, Llama 3.1 8B (dimensions from their published configs).
        ModelShape("llama-1b", hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=128256,
                   tied_embeddings=True),
        ModelShape("llama-3b", hidden=3072, layers=28, heads=24, kv_heads=8, intermediate=8192, vocab=128256,
                   tied_embeddings=True),
        ModelShape("llama-8b", hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=128256,
                   tied_embeddings=False),
    )
}


def shape_from_hf_config(config: dict[str, Any], name: str) -> ModelShape:
    """The shape of a Hugging Face Llama checkpoint (its ``config.json``), for byte and FLOP counts."""
    heads = config["num_attention_heads"]
    return ModelShape(
        name=name, hidden=config["hidden_size"], layers=config["num_hidden_layers"], heads=heads,
        kv_heads=config.get("num_key_value_heads", heads), intermediate=config["intermediate_size"],
        vocab=config["vocab_size"], tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        rope_theta=float(config.get("rope_theta", 500000.0)), norm_eps=float(config.get("rms_norm_eps", 1e-5)),
    )


def torch_dtype(dtype: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def aligned_seq_len(tokens: int) -> int:
    return -(-tokens // SEQ_ALIGN) * SEQ_ALIGN


def kv_pool_tokens(free_bytes: int, fraction: float, shape: ModelShape, dtype: str,
                   max_tokens: int | None = None) -> int:
    """Tokens a KV cache of ``fraction`` of ``free_bytes`` holds (K and V of every layer per token),
    at most ``max_tokens``: TensorRT-LLM's ``free_gpu_memory_fraction`` and ``max_tokens``."""
    tokens = int(fraction * free_bytes) // shape.kv_bytes_per_token(dtype)
    return max(0, min(tokens, max_tokens) if max_tokens is not None else tokens)


@dataclass
class LayerWeights:
    attn_norm: Any  # [hidden]
    qkv: Any  # [(heads + 2 kv_heads) * head_dim, hidden]
    o: Any  # [hidden, heads * head_dim]
    mlp_norm: Any  # [hidden]
    gate_up: Any  # [2 * intermediate, hidden]: gate rows, then up rows
    down: Any  # [hidden, intermediate]


class ReferenceModel:
    """Seeded random weights of ``shape`` on ``device`` and the math of prefill and decode."""

    def __init__(self, shape: ModelShape, dtype: str, device: str, seed: int):
        import torch

        self.shape, self.dtype, self.device = shape, dtype, device
        generator = torch.Generator(device=device).manual_seed(seed)
        tdtype = torch_dtype(dtype)

        def normal(*size: int):
            return torch.randn(size, generator=generator, device=device, dtype=tdtype) * INIT_STD

        def ones(size: int):
            return torch.ones(size, device=device, dtype=tdtype)

        s, d = shape, shape.head_dim
        self.embed = normal(s.vocab, s.hidden)
        self.layers = [
            LayerWeights(ones(s.hidden), normal((s.heads + 2 * s.kv_heads) * d, s.hidden),
                         normal(s.hidden, s.heads * d), ones(s.hidden), normal(2 * s.intermediate, s.hidden),
                         normal(s.hidden, s.intermediate))
            for _ in range(s.layers)
        ]
        self.final_norm = ones(s.hidden)
        self.lm_head = self.embed if s.tied_embeddings else normal(s.vocab, s.hidden)

    def rope_tables(self, length: int) -> tuple[Any, Any]:
        """``cos`` and signed ``sin`` ``[length, head_dim]`` for positions 0..length-1 (pairs interleaved)."""
        import torch

        d = self.shape.head_dim
        inv_freq = 1.0 / self.shape.rope_theta ** (torch.arange(0, d, 2, device=self.device, dtype=torch.float32) / d)
        angles = torch.outer(torch.arange(length, device=self.device, dtype=torch.float32), inv_freq)
        cos = angles.cos().repeat_interleave(2, dim=-1)
        sin = torch.stack((-angles.sin(), angles.sin()), dim=-1).flatten(-2)
        dtype = torch_dtype(self.dtype)
        return cos.to(dtype), sin.to(dtype)

    def norm(self, x, weight):
        import torch.nn.functional as F

        return F.rms_norm(x, (self.shape.hidden,), weight, self.shape.norm_eps)

    def mlp_(self, x, layer: LayerWeights) -> None:
        """x += down(silu(gate(norm x)) * up(norm x)), in place on the 2-D residual ``x``."""
        import torch.nn.functional as F

        gate_up = self.norm(x, layer.mlp_norm) @ layer.gate_up.t()
        gate, up = gate_up.split(self.shape.intermediate, dim=-1)
        x.addmm_(F.silu(gate).mul_(up), layer.down.t())

    def head(self, hidden):
        """Logits of the final hidden states ``[..., hidden]``."""
        return self.norm(hidden, self.final_norm) @ self.lm_head.t()

    def hidden_states(self, tokens, rope: tuple[Any, Any], cache_layers: list | None = None):
        """Full causal forward over ``tokens [batch, length]`` (prefill); returns ``[batch, length, hidden]``.

        With ``cache_layers`` (one ``[batch, 2 * kv_heads, max_seq, head_dim]`` view per layer) the
        K/V of positions 0..length-1 are written there.
        """
        import torch.nn.functional as F

        s = self.shape
        batch, length = tokens.shape
        x = F.embedding(tokens, self.embed).view(batch * length, s.hidden)
        cos, sin = (table[:length][None, :, None, :] for table in rope)
        for index, layer in enumerate(self.layers):
            qkv = self.norm(x, layer.attn_norm) @ layer.qkv.t()
            qkv = qkv.view(batch, length, s.heads + 2 * s.kv_heads, s.head_dim)
            rotate_(qkv[:, :, : s.heads + s.kv_heads], cos, sin)
            kv = qkv[:, :, s.heads :].transpose(1, 2)
            if cache_layers is not None:
                cache_layers[index][:, :, :length].copy_(kv)
            # SDPA's GQA reads KV head j // group for query head j: order the query heads KV-major
            query = qkv[:, :, : s.heads].unflatten(2, (s.group, s.kv_heads)).transpose(2, 3).flatten(2, 3)
            attention = F.scaled_dot_product_attention(
                query.transpose(1, 2), kv[:, : s.kv_heads], kv[:, s.kv_heads :], is_causal=True, enable_gqa=True,
            )
            heads_out = attention.transpose(1, 2).unflatten(2, (s.kv_heads, s.group)).transpose(2, 3)
            x.addmm_(heads_out.reshape(batch * length, s.heads * s.head_dim), layer.o.t())
            self.mlp_(x, layer)
        return x.view(batch, length, s.hidden)


def rotate_(x, cos, sin) -> None:
    """RoPE in place on ``x [..., heads, head_dim]``: pair (a, b) -> (a cos - b sin, b cos + a sin)."""
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    x.mul_(cos).addcmul_(swapped, sin)


class Session:
    """Static buffers for one batch size: KV cache, tokens, positions, step counter, outputs."""

    def __init__(self, model: ReferenceModel, batch: int, max_tokens: int, max_new_tokens: int,
                 fused: bool = False, overlap: bool | None = None, attention_split_len: int | None = None,
                 tiles: Any = None, kv_pool_tokens: int | None = None):
        """``kv_pool_tokens``: allocate the cache as a pool of that many tokens (None: exactly what
        the batch needs); ``fused``: the decode step through :mod:`benchlib.llm.kernels`; ``overlap``: their
        programmatic dependent launch (None: wherever :func:`kernels.overlap_unavailable` allows);
        ``attention_split_len``: cache positions per attention program (None: the kernels' choice);
        ``tiles``: the products' :class:`benchlib.llm.tiles.TileChoice` (None: the measured tiles
        of this GPU where known, without searching, else the defaults; given apart from ``overlap``
        only to compare the two launch modes on the same arithmetic)."""
        import torch

        s, device = model.shape, model.device
        self.model, self.batch, self.fused, self.overlap = model, batch, fused, False
        self.max_seq = aligned_seq_len(max_tokens)
        dtype = torch_dtype(model.dtype)
        self.kv_pool, self.kv = self._allocate_cache(s, batch, kv_pool_tokens, device, dtype)
        self.kv_layers = list(self.kv.unbind(0))
        self.rope = model.rope_tables(self.max_seq)
        self.tokens = torch.zeros(batch, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.step = torch.ones(1, dtype=torch.long, device=device)
        self.out = torch.zeros((batch, max_new_tokens), dtype=torch.long, device=device)
        self.logits = torch.zeros((batch, s.vocab), device=device, dtype=dtype)
        self.rows = torch.arange(batch, device=device)
        self.positions = torch.arange(self.max_seq, device=device)
        self.mask_values = (torch.zeros((), device=device, dtype=dtype),
                            torch.full((), float("-inf"), device=device, dtype=dtype))
        if fused:  # the fused kernels' outputs: QKV of the new token, attention, silu(gate) * up
            self.qkv = torch.zeros((batch, (s.heads + 2 * s.kv_heads) * s.head_dim), device=device, dtype=dtype)
            self.mlp_hidden = torch.zeros((batch, s.intermediate), device=device, dtype=dtype)
            self.attention_out = torch.zeros((batch, s.heads * s.head_dim), device=device, dtype=dtype)
            from . import kernels
            from . import tiles as tile_table

            unavailable = kernels.overlap_unavailable(device)
            if overlap and unavailable:
                raise ValueError(f"overlap was asked for but {unavailable}")
            self.overlap = unavailable is None if overlap is None else overlap
            self.tile_choice = tiles or tile_table.for_session(s, model.dtype, batch, self.overlap, device)
            if self.tile_choice.key.bucket != tile_table.batch_bucket(batch):
                raise ValueError(f"tiles for {self.tile_choice.key.label()} do not serve batch {batch}")
            # QKV, O, gate/up, down; the LM head's tiles live in its Argmax
            self.tiles = tuple(self.tile_choice.tiles[name] for name in ("qkv", "o", "gate_up", "down"))
            self.attention_split_len = attention_split_len or kernels.attention_split_len(self.max_seq)
            splits = kernels.attention_splits(self.max_seq, self.attention_split_len)  # per-split softmax states
            self.attention_partials = torch.empty((batch, s.heads, splits, s.head_dim + 2), device=device,
                                                  dtype=torch.float32) if splits > 1 else None
            self.argmax = kernels.Argmax(batch, s.vocab, device, self.tile_choice.tiles["lm_head"])

    def _allocate_cache(self, s: ModelShape, batch: int, pool_tokens: int | None, device: str, dtype: Any):
        """(pool, cache): the cache alone, or the front of a pool of ``pool_tokens`` tokens."""
        import torch

        layout = (s.layers, batch, 2 * s.kv_heads, self.max_seq, s.head_dim)
        if pool_tokens is None:
            cache = torch.zeros(layout, device=device, dtype=dtype)
            return cache, cache
        needed = batch * self.max_seq
        if pool_tokens < needed:
            raise RuntimeError(f"the KV cache sized by free memory holds {pool_tokens} tokens, fewer than this batch "
                               f"needs ({batch} x {self.max_seq} = {needed}); free memory, or lower batch, input_len "
                               "or output_len")
        per_token = s.layers * 2 * s.kv_heads * s.head_dim
        pool = torch.empty(pool_tokens * per_token, device=device, dtype=dtype)  # held whole, like an engine's pool
        return pool, pool[: needed * per_token].view(layout).zero_()

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens the cache (or its pool) holds, all rows together."""
        s = self.model.shape
        return self.kv_pool.numel() // (s.layers * 2 * s.kv_heads * s.head_dim)

    @property
    def k_cache(self):
        return self.kv[:, :, : self.model.shape.kv_heads]

    @property
    def v_cache(self):
        return self.kv[:, :, self.model.shape.kv_heads :]

    @property
    def kv_bytes(self) -> int:
        return self.kv_pool.numel() * self.kv_pool.element_size()

    def reset(self) -> None:
        """Positions and step counter back to the start (before capture warm-up)."""
        self.pos.zero_()
        self.step.fill_(1)

    def prefill(self, tokens, lengths) -> None:
        """One forward over right-padded prompts ``[batch, length]``; the first token goes to ``out[:, 0]``.

        Padding positions write K/V past a row's prompt; decode overwrites each before attending to it.
        """
        import torch

        hidden = self.model.hidden_states(tokens, self.rope, self.kv_layers)
        last = hidden[self.rows, lengths - 1]
        torch.matmul(self.model.norm(last, self.model.final_norm), self.model.lm_head.t(), out=self.logits)
        first = self.logits.argmax(dim=-1)
        self.out[:, 0] = first
        self.tokens.copy_(first)
        self.pos.copy_(lengths)
        self.step.fill_(1)

    def decode_step(self) -> None:
        """One token for every row: reads ``tokens``/``pos``, writes ``logits``, ``out``, advances both."""
        import torch
        import torch.nn.functional as F

        model, s, batch = self.model, self.model.shape, self.batch
        x = F.embedding(self.tokens, model.embed)  # [batch, hidden]
        if self.fused:
            self._fused_layers(x)
            return
        mask = torch.where(self.positions[None, :] <= self.pos[:, None], *self.mask_values)[:, None, None, :]
        self._torch_layers(x, mask)
        token = self.logits.argmax(dim=-1)
        self.out.index_copy_(1, self.step, token[:, None])
        self.tokens.copy_(token)
        self.pos.add_(1)
        self.step.add_(1)

    def _attention(self, qkv, cache, mask):
        """SDPA of the new queries over the cache, in the O projection's input layout ``[batch, heads * D]``."""
        import torch.nn.functional as F

        s, batch = self.model.shape, self.batch
        # the group of query heads sharing KV head k sits in SDPA's query-length dimension
        query = qkv[:, : s.heads].view(batch, s.group, s.kv_heads, s.head_dim).transpose(1, 2)
        keys, values = cache[:, : s.kv_heads], cache[:, s.kv_heads :]
        attention = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
        # fused attention kernels return [batch, group, kv_heads, head_dim] in memory: no copy here
        return attention.transpose(1, 2).reshape(batch, s.heads * s.head_dim)

    def _fused_layers(self, x) -> None:
        """The layers, the LM head and the step's end (token, positions, step counter) through
        :mod:`benchlib.llm.kernels`: five launches per layer, six when the cache holds more positions
        than one attention split."""
        from . import kernels

        model, s, batch = self.model, self.model.shape, self.batch
        eps, qkv, overlap = s.norm_eps, self.qkv.view(batch, s.heads + 2 * s.kv_heads, s.head_dim), self.overlap
        qkv_tiles, o_tiles, gate_up_tiles, down_tiles = self.tiles
        for layer, cache in zip(model.layers, self.kv_layers):
            kernels.gemv(x, layer.qkv, self.qkv, norm_weight=layer.attn_norm, eps=eps, config=qkv_tiles,
                         overlap=overlap)
            kernels.decode_attention_(qkv, *self.rope, self.pos, cache, self.attention_out, s.heads, s.kv_heads,
                                      partials=self.attention_partials, split_len=self.attention_split_len,
                                      overlap=overlap)
            kernels.gemv(self.attention_out, layer.o, x, residual=True, config=o_tiles, overlap=overlap)
            kernels.gemv(x, layer.gate_up, self.mlp_hidden, norm_weight=layer.mlp_norm, eps=eps, swiglu=True,
                         config=gate_up_tiles, overlap=overlap)
            kernels.gemv(self.mlp_hidden, layer.down, x, residual=True, config=down_tiles, overlap=overlap)
        kernels.gemv(x, model.lm_head, self.logits, norm_weight=model.final_norm, eps=eps, argmax=self.argmax,
                     overlap=overlap)
        kernels.finish_step_(self.argmax, self.tokens, self.pos, self.step, self.out, overlap)

    def _torch_layers(self, x, mask) -> None:
        """The layers and the LM head op by op in PyTorch: about 15 kernels per layer."""
        import torch

        model, s, batch = self.model, self.model.shape, self.batch
        cos, sin = (table[self.pos][:, None, :] for table in self.rope)
        for layer, cache in zip(model.layers, self.kv_layers):
            qkv = (model.norm(x, layer.attn_norm) @ layer.qkv.t()).view(batch, s.heads + 2 * s.kv_heads, s.head_dim)
            rotate_(qkv[:, : s.heads + s.kv_heads], cos, sin)
            cache[self.rows, :, self.pos] = qkv[:, s.heads :]
            x.addmm_(self._attention(qkv, cache, mask), layer.o.t())
            model.mlp_(x, layer)
        torch.matmul(model.norm(x, model.final_norm), model.lm_head.t(), out=self.logits)
