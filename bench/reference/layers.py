"""The layers: norms, activations, linears, dense MLPs, RoPE and varlen self-attention."""

import math

import torch
import torch.nn.functional as F

from config import f32


def norm(P, prefix, cfg, x):
    w = P[prefix + ".weight"]
    if cfg.norm == "rmsnorm":
        # kernels/rmsnorm_cpu.cc: y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps).
        rstd = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + cfg.eps)
        return x * rstd * w
    # kernels/layernorm_cpu.cc: biased variance, eps inside the sqrt.
    return F.layer_norm(x, (x.shape[-1],), w, P[prefix + ".bias"], cfg.eps)


def activation(kind, h, ffn):
    if kind == "swiglu":
        # kernels/swiglu.h: x = [gate | up], y = silu(gate) * up.
        return F.silu(h[..., :ffn]) * h[..., ffn:]
    if kind == "gelu":
        # kernels/gelu_cpu.cc: x * erfc(-x / sqrt 2) / 2, the exact GELU.
        return F.gelu(h)
    # gelu_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    return F.gelu(h, approximate="tanh")


def linear(P, prefix, x):
    return F.linear(x, P[prefix + ".weight"], P.get(prefix + ".bias"))


def dense_mlp(P, prefix, cfg, ffn, x):
    # mimo/dense_mlp.cc Forward: fc1, activation (GELU-tanh fused into fc1: same math), fc2.
    a = activation(cfg.activation, linear(P, prefix + ".linear_fc1", x), ffn)
    return linear(P, prefix + ".linear_fc2", a)


def apply_rope(x, cos, sin, rotary_dim):
    # kernels/rope.h: non-interleaved (rotate-half) over the first rotary_dim channels of each
    # head: (a, b) = (x[i], x[i + rd/2]) -> (a cos - b sin, b cos + a sin); the rest unchanged.
    half = rotary_dim // 2
    a = x[..., :half]
    b = x[..., half:rotary_dim]
    c = cos[:, None, :]
    s = sin[:, None, :]
    parts = [a * c - b * s, b * c + a * s]
    if rotary_dim < x.shape[-1]:
        parts.append(x[..., rotary_dim:])
    return torch.cat(parts, dim=-1)


def sdpa(q, k, v, scale, causal):
    """q (B, H, L, D), k and v (B, H, L, D) already expanded to the query heads."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if causal:
        L = q.shape[-2]
        mask = torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1)
        s = s.masked_fill(mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.matmul(p, v)


def varlen_attention(q, k, v, seqs, heads, groups, head_dim, causal):
    """kernels/attention.h: softmax(scale q k^T) v per packed sequence and query head, never across
    sequences; causal: keys at or before the query; query head h reads kv head h / (H / G)."""
    scale = f32(1.0 / math.sqrt(f32(head_dim)))  # self_attention.cc: 1.0f / sqrt(float(D))
    rep = heads // groups
    if rep > 1:
        # h / rep -> repeat_interleave (heads of one group adjacent).
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    T = q.shape[0]
    nonempty = [(s, e) for s, e in zip(seqs.cu[:-1], seqs.cu[1:]) if e > s]
    lens = {e - s for s, e in nonempty}
    if len(lens) == 1:
        # Every sequence the same length (e.g. the vision encoder's images): one batched call.
        L = lens.pop()
        n = T // L

        def split(t):
            return t.reshape(n, L, heads, head_dim).transpose(1, 2)

        o = sdpa(split(q), split(k), split(v), scale, causal)
        return o.transpose(1, 2).reshape(T, heads, head_dim)
    outs = []
    for s, e in nonempty:
        o = sdpa(q[s:e].transpose(0, 1)[None], k[s:e].transpose(0, 1)[None],
                 v[s:e].transpose(0, 1)[None], scale, causal)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs, dim=0)


def self_attention(P, prefix, cfg, seqs, x):
    # mimo/self_attention.cc Forward.
    T = x.shape[0]
    H, G, D = cfg.heads, cfg.groups, cfg.head_dim
    qkv = linear(P, prefix + ".linear_qkv", x)
    q = qkv[:, : H * D].reshape(T, H, D)
    k = qkv[:, H * D : (H + G) * D].reshape(T, G, D)
    v = qkv[:, (H + G) * D :].reshape(T, G, D)
    if cfg.rotary:
        cos, sin = seqs.rope(cfg.rotary_dim, cfg.rotary_base)
        q = apply_rope(q, cos, sin, cfg.rotary_dim)
        k = apply_rope(k, cos, sin, cfg.rotary_dim)
    o = varlen_attention(q, k, v, seqs, H, G, D, cfg.causal)
    return linear(P, prefix + ".linear_proj", o.reshape(T, H * D))

