#!/usr/bin/env python3
"""PyTorch reference for the C++ MIMO training step (single rank, fp32).

Reads a dump written by bench/reference_dump.cc (config.json, init.bin, batches.bin, losses.json),
rebuilds the model from the same math as mimo/*.cc and kernels/*, trains it from the same initial
values on the same packed micro-batches with the same objective, clipping, schedule and AdamW as
worker/trainer.cc (ModelPart::kWhole) and mimo/optimizer.cc, and compares every step's loss with
the C++ run's.

    python3 bench/reference/mimo_reference.py DUMP_DIR [--steps N] [--rtol R]

Exit status: 0 when every checked step's loss agrees within rtol, 1 otherwise, 2 on a bad dump.

Comments name the C++ file (and function) each piece mirrors. Comments starting with "UNSURE:"
mark places where the dump or the C++ left a choice this script had to make.
"""

import argparse
import json
import math
import mmap
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

MAGIC = b"MIMOTEN1"
NORM_EPS = 1e-20  # kernels/moe_router_math.h: kNormEps


def f32(x):
    """A Python float rounded to float32 (the C++ configs hold floats)."""
    return float(np.float32(x))


class DumpError(Exception):
    pass


# ------------------------------------------------------------------------------------------------
# Tensor archives: "MIMOTEN1", then per tensor: uint32 name length, name, uint8 dtype (0 f32,
# 1 i32), uint8 ndim, ndim int64 dims, row-major little-endian data.
# ------------------------------------------------------------------------------------------------
class Archive:
    def __init__(self, path):
        self.path = path
        self._file = open(path, "rb")
        size = os.fstat(self._file.fileno()).st_size
        if size < len(MAGIC):
            raise DumpError("%s: too short for an archive" % path)
        self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        mm = self._mm
        if mm[: len(MAGIC)] != MAGIC:
            raise DumpError("%s: bad magic %r" % (path, bytes(mm[: len(MAGIC)])))
        self.index = {}
        off = len(MAGIC)
        while off < size:
            if off + 4 > size:
                raise DumpError("%s: truncated record header at byte %d" % (path, off))
            (n,) = struct.unpack_from("<I", mm, off)
            off += 4
            if off + n + 2 > size:
                raise DumpError("%s: truncated record name at byte %d" % (path, off))
            name = mm[off : off + n].decode("utf-8")
            off += n
            dtype, ndim = struct.unpack_from("<BB", mm, off)
            off += 2
            if dtype not in (0, 1):
                raise DumpError("%s: %s has unknown dtype %d" % (path, name, dtype))
            if off + 8 * ndim > size:
                raise DumpError("%s: %s: truncated dims" % (path, name))
            dims = tuple(struct.unpack_from("<%dq" % ndim, mm, off)) if ndim else ()
            off += 8 * ndim
            if any(d < 0 for d in dims):
                raise DumpError("%s: %s has negative dims %s" % (path, name, dims))
            count = int(np.prod(dims, dtype=np.int64)) if dims else 1
            if off + 4 * count > size:
                raise DumpError("%s: %s: truncated data" % (path, name))
            if name in self.index:
                raise DumpError("%s: %s appears twice" % (path, name))
            self.index[name] = (dtype, dims, off, count)
            off += 4 * count

    def __contains__(self, name):
        return name in self.index

    def names(self):
        return list(self.index.keys())

    def shape(self, name):
        return self.index[name][1]

    def get(self, name):
        if name not in self.index:
            raise DumpError("%s: no tensor %s" % (self.path, name))
        dtype, dims, off, count = self.index[name]
        np_dtype = np.dtype("<f4") if dtype == 0 else np.dtype("<i4")
        if count == 0:
            return np.zeros(dims, dtype=np_dtype)
        return np.frombuffer(self._mm, dtype=np_dtype, count=count, offset=off).reshape(dims).copy()

    def dtype_of(self, name):
        return "float32" if self.index[name][0] == 0 else "int32"


# ------------------------------------------------------------------------------------------------
# Configuration, resolved as mimo/transformer_config.h's helpers and the builders resolve it.
# ------------------------------------------------------------------------------------------------
class TransformerCfg:
    def __init__(self, d):
        self.num_layers = int(d["num_layers"])
        self.hidden = int(d["hidden_size"])
        self.heads = int(d["num_attention_heads"])
        groups = int(d.get("num_query_groups", 0) or 0)
        self.groups = groups if groups != 0 else self.heads  # query_groups()
        kv = int(d.get("kv_channels", 0) or 0)
        self.head_dim = kv if kv != 0 else self.hidden // self.heads  # head_dim()
        self.ffn = int(d["ffn_hidden_size"])
        self.norm = d.get("norm", "rmsnorm")
        self.eps = f32(d.get("norm_epsilon", 1e-5))
        self.activation = d.get("activation", "swiglu")
        self.bias = bool(d.get("add_bias_linear", True))
        # C++: self_attention.cc Create: bias on QKV when add_bias_linear || add_qkv_bias.
        self.qkv_bias = self.bias or bool(d.get("add_qkv_bias", False))
        self.causal = bool(d.get("causal", True))
        self.rotary = bool(d.get("rotary", True))
        rd = int(d.get("rotary_dim", 0) or 0)
        self.rotary_dim = rd if rd != 0 else self.head_dim  # self_attention.cc: 0 -> head_dim
        self.rotary_base = float(d.get("rotary_base", 10000.0))
        # UNSURE: config.json carries no hidden_dropout; worker/model_spec.cc never sets it (C++
        # default 0), so dropout is taken to be off. A dump with a nonzero value is refused.
        if float(d.get("hidden_dropout", 0.0) or 0.0) != 0.0:
            raise NotImplementedError("hidden_dropout > 0 (the C++ Philox dropout mask)")
        if self.norm not in ("rmsnorm", "layernorm"):
            raise DumpError("unknown norm %r" % self.norm)
        if self.activation not in ("swiglu", "gelu", "gelu_tanh"):
            raise DumpError("unknown activation %r" % self.activation)
        if self.heads % self.groups != 0:
            raise DumpError("num_query_groups must divide num_attention_heads")
        if self.rotary and (self.rotary_dim % 2 != 0 or self.rotary_dim > self.head_dim):
            raise DumpError("bad rotary_dim %d for head_dim %d" % (self.rotary_dim, self.head_dim))


class MoeCfg:
    def __init__(self, d, transformer):
        self.experts = int(d["experts"])
        self.top_k = int(d["top_k"])
        self.score = d.get("score", "softmax")
        if self.score not in ("softmax", "sigmoid"):
            raise DumpError("unknown router score %r" % self.score)
        self.normalize = bool(d.get("normalize", True))
        self.scaling_factor = f32(d.get("scaling_factor", 1.0))
        self.num_groups = int(d.get("num_groups", 0) or 0)
        self.group_top_k = int(d.get("group_top_k", 0) or 0)
        self.aux_coeff = f32(d.get("aux_loss_coeff", 0.0))
        self.per_sequence = bool(d.get("per_sequence_aux_loss", False))
        self.z_coeff = f32(d.get("z_loss_coeff", 0.0))
        ffn = int(d.get("expert_ffn_hidden_size", 0) or 0)
        self.ffn = ffn if ffn != 0 else transformer.ffn  # moe_layer.cc Create
        self.shared_ffn = int(d.get("shared_expert_ffn_hidden_size", 0) or 0)
        self.capacity_factor = float(d.get("capacity_factor", 0.0) or 0.0)
        # UNSURE: config.json has no drop_policy; worker/model_spec.cc never sets it, so the C++
        # default kProbs (mimo/moe_config.h) is assumed.
        self.drop_policy = d.get("drop_policy", "probs")
        self.expert_bias = bool(d.get("expert_bias", False))
        # UNSURE: config.json has no expert_bias_update_rate; the C++ default 1e-3
        # (mimo/moe_config.h) is assumed. Only matters with expert_bias, which the spec never sets.
        self.expert_bias_rate = f32(d.get("expert_bias_update_rate", 1e-3))
        if self.num_groups != 0:
            if self.experts % self.num_groups != 0 or self.group_top_k < 1 or (
                self.top_k % self.group_top_k != 0
            ):
                raise DumpError("bad group-limited routing config")

    def normalizes(self):
        # C++: kernels/moe_router_math.h Normalizes(): a sigmoid router with one choice keeps its
        # raw score.
        return self.normalize and not (self.score == "sigmoid" and self.top_k == 1)


class EncoderCfg:
    def __init__(self, d, language_hidden):
        self.input = d["input"]
        if self.input not in ("images", "audio"):
            raise DumpError("unknown encoder input %r" % self.input)
        self.image_size = int(d.get("image_size", 0) or 0)
        self.patch_size = int(d.get("patch_size", 0) or 0)
        self.num_channels = int(d.get("num_channels", 3) or 0)
        self.num_mel_bins = int(d.get("num_mel_bins", 0) or 0)
        self.frames_per_token = int(d.get("frames_per_token", 1) or 0)
        self.max_frames = int(d.get("max_frames", 0) or 0)
        self.transformer = TransformerCfg(d["transformer"])
        p = d.get("projector") or {}
        self.projector_kind = p.get("kind", "mlp")
        if self.projector_kind not in ("mlp", "linear"):
            raise DumpError("unknown projector kind %r" % self.projector_kind)
        self.projector_hidden = int(p.get("hidden_size", 0) or 0)
        out = int(d.get("output_size", 0) or 0)
        self.output_size = out if out != 0 else language_hidden
        if self.output_size != language_hidden:
            raise DumpError("encoder output_size %d != language hidden %d"
                            % (self.output_size, language_hidden))

    def max_tokens(self):  # modality_encoder.cc ModalityEncoderConfig::max_tokens
        if self.input == "images":
            return (self.image_size // self.patch_size) ** 2 if self.patch_size > 0 else 0
        return self.max_frames // self.frames_per_token if self.frames_per_token > 0 else 0

    def token_features(self):  # ModalityEncoderConfig::token_features
        if self.input == "images":
            return self.num_channels * self.patch_size * self.patch_size
        return self.num_mel_bins * self.frames_per_token

    def projector_width(self):  # projector.cc Create: H = hidden_size (mlp, > 0) or out
        if self.projector_kind == "mlp" and self.projector_hidden > 0:
            return self.projector_hidden
        return self.output_size


class OptimizerCfg:
    def __init__(self, d):
        self.lr = f32(d.get("lr", 3e-4))
        self.min_lr = f32(d.get("min_lr", 0.0))
        self.weight_decay = f32(d.get("weight_decay", 0.01))
        self.beta1 = f32(d.get("beta1", 0.9))
        self.beta2 = f32(d.get("beta2", 0.999))
        self.eps = f32(d.get("eps", 1e-8))
        self.clip_grad = f32(d.get("clip_grad", 1.0))
        self.warmup_steps = int(d.get("warmup_steps", 0))
        self.decay_steps = int(d.get("decay_steps", 0))


class Config:
    def __init__(self, d):
        self.seed = d.get("seed")
        self.steps = int(d["steps"])
        self.micro_batches = int(d["micro_batches"])
        self.micro_batch_size = int(d.get("micro_batch_size", 1))
        self.seq_length = int(d.get("seq_length", 0))
        self.optimizer = OptimizerCfg(d["optimizer"])
        lang = d["language"]
        self.language = TransformerCfg(lang["transformer"])
        self.vocab = int(lang["vocab_size"])
        self.moe_layer_freq = int(lang.get("moe_layer_freq", 1) or 1)
        self.moe = MoeCfg(lang["moe"], self.language) if lang.get("moe") else None
        h = self.language.hidden
        self.vision = EncoderCfg(d["vision"], h) if d.get("vision") else None
        self.audio = EncoderCfg(d["audio"], h) if d.get("audio") else None


# ------------------------------------------------------------------------------------------------
# Parameter specs: names, shapes and weight decay exactly as the C++ builders create them.
# ------------------------------------------------------------------------------------------------
def spec_linear(specs, prefix, out, inp, bias):
    # mimo/linear_weights.cc LinearWeights::Create: weight (out, in) with weight decay, bias
    # (out,) without.
    specs[prefix + ".weight"] = ((out, inp), True)
    if bias:
        specs[prefix + ".bias"] = ((out,), False)


def spec_norm(specs, prefix, cfg, features):
    # mimo/norm.cc Norm::Create: weight (ones), LayerNorm bias; neither decays.
    specs[prefix + ".weight"] = ((features,), False)
    if cfg.norm == "layernorm":
        specs[prefix + ".bias"] = ((features,), False)


def spec_attention(specs, prefix, cfg):
    # mimo/self_attention.cc Create: fused QKV (all query rows, then key rows, then value rows).
    h, g, d = cfg.heads, cfg.groups, cfg.head_dim
    spec_linear(specs, prefix + ".linear_qkv", (h + 2 * g) * d, cfg.hidden, cfg.qkv_bias)
    spec_linear(specs, prefix + ".linear_proj", cfg.hidden, h * d, cfg.bias)


def spec_dense_mlp(specs, prefix, cfg, ffn):
    # mimo/dense_mlp.cc Create: fc1 (2F, C) for SwiGLU (gate rows, then up rows) or (F, C).
    rows = 2 * ffn if cfg.activation == "swiglu" else ffn
    spec_linear(specs, prefix + ".linear_fc1", rows, cfg.hidden, cfg.bias)
    spec_linear(specs, prefix + ".linear_fc2", cfg.hidden, ffn, cfg.bias)


def spec_moe(specs, prefix, cfg, moe):
    # mimo/moe_layer.cc Create: router (E, C) without bias; mimo/experts.cc BuildExperts: stacked
    # (E, F1, C) and (E, C, F), no biases, weight decay; shared experts a DenseMlp.
    e, f = moe.experts, moe.ffn
    spec_linear(specs, prefix + ".router", e, cfg.hidden, False)
    f1 = 2 * f if cfg.activation == "swiglu" else f
    specs[prefix + ".experts.linear_fc1.weight"] = ((e, f1, cfg.hidden), True)
    specs[prefix + ".experts.linear_fc2.weight"] = ((e, cfg.hidden, f), True)
    if moe.shared_ffn > 0:
        spec_dense_mlp(specs, prefix + ".shared_experts", cfg, moe.shared_ffn)


def is_moe_layer(layer, moe, freq):
    # mimo/language_model.cc InterleavedMlpBuilder: layer_number % freq == 0 -> MoE.
    return moe is not None and layer % freq == 0


def spec_block(specs, prefix, cfg, moe=None, freq=1):
    # mimo/transformer_block.cc / transformer_layer.cc Create.
    for i in range(cfg.num_layers):
        p = "%s.layers.%d" % (prefix, i)
        spec_norm(specs, p + ".input_layernorm", cfg, cfg.hidden)
        spec_attention(specs, p + ".self_attention", cfg)
        spec_norm(specs, p + ".pre_mlp_layernorm", cfg, cfg.hidden)
        if is_moe_layer(i, moe, freq):
            spec_moe(specs, p + ".mlp", cfg, moe)
        else:
            spec_dense_mlp(specs, p + ".mlp", cfg, cfg.ffn)
    spec_norm(specs, prefix + ".final_layernorm", cfg, cfg.hidden)


def spec_encoder(specs, prefix, e):
    # mimo/modality_encoder.cc Create; mimo/projector.cc Create.
    t = e.transformer
    spec_linear(specs, prefix + ".embeddings.input_projection", t.hidden, e.token_features(), True)
    specs[prefix + ".embeddings.position_embedding.weight"] = ((e.max_tokens(), t.hidden), True)
    spec_block(specs, prefix + ".encoder", t)
    h = e.projector_width()
    spec_linear(specs, prefix + ".projector.linear_fc1", h, t.hidden, True)
    if e.projector_kind == "mlp":
        spec_linear(specs, prefix + ".projector.linear_fc2", e.output_size, h, True)


def model_specs(cfg):
    # worker/trainer.cc Trainer::Create: encoders under "vision"/"audio", the language model under
    # "language" (no prefix above them).
    specs = {}
    if cfg.vision is not None:
        spec_encoder(specs, "vision", cfg.vision)
    if cfg.audio is not None:
        spec_encoder(specs, "audio", cfg.audio)
    t = cfg.language
    specs["language.embedding.word_embeddings.weight"] = ((cfg.vocab, t.hidden), True)
    spec_block(specs, "language.decoder", t, cfg.moe, cfg.moe_layer_freq)
    specs["language.output_layer.weight"] = ((cfg.vocab, t.hidden), True)
    return specs


# ------------------------------------------------------------------------------------------------
# Packed sequences (mimo/packed_sequences.cc): cu_seqlens and per-token positions restarting at 0
# in every sequence.
# ------------------------------------------------------------------------------------------------
class Sequences:
    def __init__(self, lengths, device):
        self.lengths = [int(n) for n in lengths]
        if not self.lengths or any(n < 0 for n in self.lengths) or sum(self.lengths) == 0:
            raise DumpError("bad sequence lengths %s" % self.lengths)
        self.cu = [0]
        for n in self.lengths:
            self.cu.append(self.cu[-1] + n)
        self.tokens = self.cu[-1]
        pos = np.concatenate([np.arange(n, dtype=np.int64) for n in self.lengths])
        self.positions = torch.from_numpy(pos).to(device)
        self.device = device
        self._rope = {}

    def rope(self, rotary_dim, base):
        """cos, sin (T, rotary_dim / 2) fp32 from angles computed in float64 (kernels/rope_cpu.cc:
        theta = p * base^(-2i / rotary_dim) in double, cos/sin rounded to float)."""
        key = (rotary_dim, base)
        if key not in self._rope:
            half = rotary_dim // 2
            i = torch.arange(half, dtype=torch.float64, device=self.device)
            inv = torch.pow(torch.tensor(base, dtype=torch.float64, device=self.device),
                            -2.0 * i / rotary_dim)
            theta = self.positions.to(torch.float64)[:, None] * inv[None, :]
            self._rope[key] = (torch.cos(theta).to(torch.float32),
                               torch.sin(theta).to(torch.float32))
        return self._rope[key]


# ------------------------------------------------------------------------------------------------
# The blocks.
# ------------------------------------------------------------------------------------------------
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


class MoeState:
    """Per MoE layer: the aux-loss-free selection bias and the step's per-expert load."""

    def __init__(self, experts, device):
        self.bias = torch.zeros(experts, dtype=torch.float32, device=device)
        self.load = torch.zeros(experts, dtype=torch.int64, device=device)


def route(moe, scores, bias):
    """kernels/moe_router_math.h Choose: the top_k experts by score + bias, best first, ties to the
    lower index; group-limited routing first picks group_top_k groups by the sum of their
    top_k / group_top_k best (biased) scores."""
    T, E = scores.shape
    biased = scores + bias if bias is not None else scores
    cand = biased
    if moe.num_groups != 0:
        ng = moe.num_groups
        size = E // ng
        per_group = moe.top_k // moe.group_top_k
        best = torch.sort(biased.reshape(T, ng, size), dim=-1, descending=True,
                          stable=True).values
        group_score = best[..., 0]
        for j in range(1, per_group):  # summed best first in float, as the C++ loop
            group_score = group_score + best[..., j]
        chosen = torch.sort(group_score, dim=-1, descending=True, stable=True).indices
        allowed = torch.zeros(T, ng, dtype=torch.bool, device=scores.device)
        allowed.scatter_(1, chosen[:, : moe.group_top_k], True)
        cand = biased.masked_fill(~allowed.repeat_interleave(size, dim=1), float("-inf"))
    # A stable descending sort keeps equal values in index order: the C++ strict '>' picks the
    # lowest index among ties.
    return torch.sort(cand, dim=-1, descending=True, stable=True).indices[:, : moe.top_k]


def capacity_drop(moe, indices, probs):
    """kernels/moe_capacity_cpu.cc (kProbs): each expert keeps its `capacity` pairs of highest
    weight (ties: the earlier pair); the others become -1.

    UNSURE: the rule is exact, but weights within a few ulps of the cut are ranked by values that
    differ in their last bits between the C++ and torch (fp32 summation order), so after some steps
    a pair can flip sides and the runs drift apart (seen after ~25 steps with capacity 0.5 and a
    top-1 sigmoid router: cut margins of ~2e-7). The same holds for router ties in route()."""
    T, k = indices.shape
    E = moe.experts
    if moe.drop_policy != "probs":
        raise NotImplementedError("capacity drop policy %r" % moe.drop_policy)
    capacity = max(4, int(math.ceil(float(T * k) / float(E) * moe.capacity_factor)))
    flat = indices.reshape(-1)
    w = probs.detach().reshape(-1)
    kept = flat.clone()
    for e in range(E):
        pairs = (flat == e).nonzero().squeeze(1)  # pair order
        if pairs.numel() <= capacity:
            continue
        order = torch.sort(w[pairs], descending=True, stable=True).indices
        kept[pairs[order[capacity:]]] = -1
    return kept.reshape(T, k)


def moe_aux_losses(moe, logits, scores, indices, seqs):
    """kernels/moe_router_cpu.cc MoeAuxLossCpu: the load-balancing loss
    aux_coeff * mean over nonempty sequences q of E / (k T_q^2) sum_e c_q[e] sum_{t in q} a[t, e]
    (counts constant; a = s for softmax, s / (sum s + 1e-20) for sigmoid; one sequence unless
    per_sequence_aux_loss) and z = z_coeff * mean_t logsumexp(logits[t])^2."""
    T, E = scores.shape
    k = moe.top_k
    zero = scores.new_zeros(())
    aux = zero
    if moe.aux_coeff != 0.0 and T > 0:
        if moe.score == "softmax":
            a = scores
        else:
            a = scores / (scores.sum(dim=-1, keepdim=True) + NORM_EPS)
        ranges = list(zip(seqs.cu[:-1], seqs.cu[1:])) if moe.per_sequence else [(0, T)]
        terms = []
        for s, e in ranges:
            if e == s:
                continue
            counts = torch.bincount(indices[s:e].reshape(-1), minlength=E).to(torch.float32)
            tq = float(e - s)
            terms.append((counts * a[s:e].sum(dim=0)).sum() * (float(E) / (float(k) * tq * tq)))
        if terms:
            aux = moe.aux_coeff * torch.stack(terms).mean()
    z = zero
    if moe.z_coeff != 0.0 and T > 0:
        z = moe.z_coeff * torch.logsumexp(logits, dim=-1).pow(2).mean()
    return aux, z


class Replay:
    """routing.bin (bench/reference_dump.cc): the C++ run's MoE routing, record after record in
    the order of its forwards (micro-batch by micro-batch, layer by layer), replayed so that the
    comparison survives near-tied choices the two sides break differently; counts the tokens
    whose own choice (choice_flips) or own kept pairs (drop_flips) differed."""

    def __init__(self, archive):
        self.archive = archive
        self.step = 0
        self.next = 0
        self.choice_flips = 0
        self.drop_flips = 0

    def begin_step(self, step):
        self.step, self.next = step, 0
        self.choice_flips = self.drop_flips = 0

    def end_step(self):
        """Every record of the step used: a C++ run with more MoE forwards than the reference
        makes would otherwise go unnoticed."""
        at = "s%d.r%d." % (self.step, self.next)
        if at + "layer" in self.archive:
            raise DumpError("routing.bin has %s beyond the %d records the reference used in "
                            "step %d" % (at, self.next, self.step))

    def take(self, layer, shape, device):
        at = "s%d.r%d." % (self.step, self.next)
        if at + "layer" not in self.archive:
            raise DumpError("routing.bin has no record %s (layer %d)" % (at, layer))
        recorded = int(self.archive.get(at + "layer")[0])
        if recorded != layer:
            raise DumpError("routing.bin record %s is layer %d's, not layer %d's"
                            % (at, recorded, layer))
        out = []
        for what in ("indices", "dispatched"):
            a = self.archive.get(at + what)
            if tuple(a.shape) != tuple(shape):
                raise DumpError("routing.bin %s%s is %s, not %s" % (at, what, a.shape, shape))
            out.append(torch.from_numpy(a.astype(np.int64)).to(device))
        self.next += 1
        return out[0], out[1]


def moe_layer(P, prefix, cfg, moe, state, seqs, x, aux_out, replay=None, layer=0):
    # mimo/moe_layer.cc Forward. With `replay` (Replay), the C++ run's choices (and, under a
    # capacity, its kept pairs) are used instead of this layer's own, which are only counted
    # where they differ.
    T, C = x.shape
    E, k = moe.experts, moe.top_k
    logits = F.linear(x, P[prefix + ".router.weight"])  # fp32 logits, no bias
    if moe.score == "sigmoid":
        scores = torch.sigmoid(logits)
    else:
        scores = torch.softmax(logits, dim=-1)  # over all experts, then top-k
    with torch.no_grad():
        indices = route(moe, scores.detach(), state.bias if moe.expert_bias else None)
        cpp_dispatch = None
        if replay is not None:
            cpp_indices, cpp_dispatch = replay.take(layer, (T, k), x.device)
            # The same experts in another order route alike: compare the sets.
            differ = cpp_indices.sort(dim=1).values != indices.sort(dim=1).values
            replay.choice_flips += int(differ.any(dim=1).sum())
            indices = cpp_indices
        # Training forwards count every choice (before any dropping) into the step's load.
        state.load += torch.bincount(indices.reshape(-1), minlength=E)
    chosen = scores.gather(1, indices)  # raw (unbiased) scores of the choices
    if moe.normalizes():
        # probs = scaling * s / (sum of the chosen s + 1e-20); its autograd equals
        # moe_router_math.h Backward (the choice itself constant).
        probs = chosen * (moe.scaling_factor / (chosen.sum(dim=-1, keepdim=True) + NORM_EPS))
    else:
        probs = chosen * moe.scaling_factor
    aux, z = moe_aux_losses(moe, logits, scores, indices, seqs)
    aux_out.append((aux, z))
    dispatch = indices
    if moe.capacity_factor > 0.0:
        dispatch = capacity_drop(moe, indices, probs)
    if cpp_dispatch is not None:
        replay.drop_flips += int((cpp_dispatch != dispatch).any(dim=1).sum())
        dispatch = cpp_dispatch
    # The experts: each (token, choice) pair through its expert's MLP, weighted by its prob and
    # summed per token (the C++ permutation and padding change nothing in the math).
    w1 = P[prefix + ".experts.linear_fc1.weight"]  # (E, F1, C)
    w2 = P[prefix + ".experts.linear_fc2.weight"]  # (E, C, F)
    flat = dispatch.reshape(-1)
    valid = (flat >= 0).nonzero().squeeze(1)
    expert_of = flat[valid]
    order = torch.argsort(expert_of, stable=True)
    pairs = valid[order]
    counts = torch.bincount(expert_of, minlength=E).tolist()
    tokens = pairs // k
    xs = x.index_select(0, tokens)
    outs = []
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        h = F.linear(xs[start : start + n], w1[e])
        # mimo/experts.cc: SwiGLU op, exact GELU for "gelu", tanh GELU otherwise.
        outs.append(F.linear(activation(cfg.activation, h, moe.ffn), w2[e]))
        start += n
    y = torch.zeros_like(x)
    if outs:
        weighted = torch.cat(outs, dim=0) * probs.reshape(-1).index_select(0, pairs)[:, None]
        y = y.index_add(0, tokens, weighted)
    if moe.shared_ffn > 0:
        y = y + dense_mlp(P, prefix + ".shared_experts", cfg, moe.shared_ffn, x)
    return y


def transformer_block(P, prefix, cfg, seqs, x, moe=None, freq=1, moe_states=None, aux_out=None,
                      replay=None):
    # mimo/transformer_layer.cc: h = x + attn(norm1(x)); y = h + mlp(norm2(h)); then the final
    # norm (transformer_block.cc).
    for i in range(cfg.num_layers):
        p = "%s.layers.%d" % (prefix, i)
        h = x + self_attention(P, p + ".self_attention", cfg, seqs,
                               norm(P, p + ".input_layernorm", cfg, x))
        n2 = norm(P, p + ".pre_mlp_layernorm", cfg, h)
        if is_moe_layer(i, moe, freq):
            m = moe_layer(P, p + ".mlp", cfg, moe, moe_states[i], seqs, n2, aux_out, replay, i)
        else:
            m = dense_mlp(P, p + ".mlp", cfg, cfg.ffn, n2)
        x = h + m
    return norm(P, prefix + ".final_layernorm", cfg, x)


def encoder_forward(P, prefix, e, inp, frames, device):
    """mimo/modality_encoder.cc Forward: patches or stacked frames -> input projection + position
    embeddings (positions restart per sample) -> bidirectional block (each sample attends within
    itself) -> projector."""
    t = e.transformer
    if e.input == "images":
        n, c, hgt, wid = inp.shape
        if c != e.num_channels or hgt != e.image_size or wid != e.image_size:
            raise DumpError("images %s for a (N, %d, %d, %d) encoder"
                            % (tuple(inp.shape), e.num_channels, e.image_size, e.image_size))
        p = e.patch_size
        g = e.image_size // p
        # kernels/patchify.h: patches[b][py * g + px][(c * p + dy) * p + dx]
        #                     = images[b][c][py * p + dy][px * p + dx]
        rows = inp.reshape(n, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(
            n * g * g, c * p * p)
        lengths = [g * g] * n
    else:
        if inp.dim() != 2 or inp.shape[1] != e.num_mel_bins:
            raise DumpError("audio %s for (F, %d)" % (tuple(inp.shape), e.num_mel_bins))
        fpt = e.frames_per_token
        for f in frames:
            if f < fpt or f > e.max_frames or f % fpt != 0:
                raise DumpError("an audio clip of %d frames" % f)
        if sum(frames) != inp.shape[0]:
            raise DumpError("audio clips of %d frames, input of %d" % (sum(frames), inp.shape[0]))
        # Stacking frames_per_token consecutive frames is a row-major view.
        rows = inp.reshape(inp.shape[0] // fpt, e.num_mel_bins * fpt)
        lengths = [f // fpt for f in frames]
    seqs = Sequences(lengths, device)
    x = linear(P, prefix + ".embeddings.input_projection", rows)
    x = x + F.embedding(seqs.positions, P[prefix + ".embeddings.position_embedding.weight"])
    h = transformer_block(P, prefix + ".encoder", t, seqs, x)
    # mimo/projector.cc: fc1, and for "mlp" an exact GELU then fc2 (biases on both).
    y = linear(P, prefix + ".projector.linear_fc1", h)
    if e.projector_kind == "mlp":
        y = linear(P, prefix + ".projector.linear_fc2", F.gelu(y))
    return y


# ------------------------------------------------------------------------------------------------
# The whole model and the training step.
# ------------------------------------------------------------------------------------------------
class Reference:
    def __init__(self, cfg, init, device):
        self.cfg = cfg
        self.device = device
        self.specs = model_specs(cfg)
        names = set(init.names())
        want = set(self.specs)
        problems = []
        for n in sorted(want - names):
            problems.append("init.bin lacks %s %s" % (n, self.specs[n][0]))
        for n in sorted(names - want):
            problems.append("init.bin has %s %s the reference does not build"
                            % (n, init.shape(n)))
        for n in sorted(want & names):
            if tuple(init.shape(n)) != tuple(self.specs[n][0]):
                problems.append("%s: init.bin %s, reference %s"
                                % (n, init.shape(n), self.specs[n][0]))
            elif init.dtype_of(n) != "float32":
                problems.append("%s is not float32" % n)
        if problems:
            raise DumpError("parameters do not match:\n  " + "\n  ".join(problems))
        self.P = {}
        self.decay = {}
        for n, (shape, decay) in self.specs.items():
            self.P[n] = torch.from_numpy(init.get(n)).to(device).requires_grad_(True)
            self.decay[n] = decay
        self.m = {n: torch.zeros_like(p) for n, p in self.P.items()}
        self.v = {n: torch.zeros_like(p) for n, p in self.P.items()}
        self.steps_done = 0  # mimo/optimizer.cc steps_
        self.replay = None  # A Replay of the C++ routing, or None: the reference routes itself.
        self.moe_states = {}
        if cfg.moe is not None:
            for i in range(cfg.language.num_layers):
                if is_moe_layer(i, cfg.moe, cfg.moe_layer_freq):
                    self.moe_states[i] = MoeState(cfg.moe.experts, device)

    def numel(self):
        return sum(p.numel() for p in self.P.values())

    def language_forward(self, seqs, tokens, labels, embeddings, positions, aux_out):
        """mimo/language_model.cc Forward: returns the summed CE of the labelled tokens."""
        cfg = self.cfg
        P = self.P
        table = P["language.embedding.word_embeddings.weight"]
        # kernels/embedding_cpu.cc: ids outside [0, V) embed as zeros (LanguageModel passes no
        # bad_ids counter, so the C++ does not fail on them). UNSURE: the CUDA kernel's behaviour
        # for such ids was not read; the synthetic data never makes them.
        bad = (tokens < 0) | (tokens >= cfg.vocab)
        x = F.embedding(tokens.clamp(0, cfg.vocab - 1), table)
        if bool(bad.any()):
            x = x.masked_fill(bad[:, None], 0.0)
        if embeddings is not None:
            # The modality rows replace their placeholders' rows (which then give the token
            # embedding no gradient).
            x = x.index_copy(0, positions, embeddings)
        h = transformer_block(P, "language.decoder", cfg.language, seqs, x, cfg.moe,
                              cfg.moe_layer_freq, self.moe_states, aux_out, self.replay)
        logits = F.linear(h, P["language.output_layer.weight"])  # untied, no bias
        # kernels/cross_entropy.h: loss = logsumexp - target logit; targets < 0 ignored.
        valid = labels >= 0
        lse = torch.logsumexp(logits, dim=-1)
        target = logits.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
        token_loss = torch.where(valid, lse - target, torch.zeros_like(lse))
        return token_loss.sum()

    def step(self, batches, step):
        """worker/trainer.cc Trainer::Step + LanguageStep (kWhole, one replica)."""
        cfg = self.cfg
        dev = self.device
        for p in self.P.values():
            p.grad = None
        mb = cfg.micro_batches
        if self.replay is not None:
            self.replay.begin_step(step)

        def name(i, what):
            return "s%d.m%d.%s" % (step, i, what)

        # Every micro-batch's labels first: the loss is averaged over the whole step's labels.
        labelled = 0
        for i in range(mb):
            labelled += int((batches.get(name(i, "labels")) >= 0).sum())
        loss_grad = f32(1.0 / f32(labelled)) if labelled > 0 else 0.0  # 1.0f / float(labelled)
        loss_scale = f32(1.0 / f32(mb))  # StepContext::loss_scale = 1 / (micro_batches * 1)
        loss_sum = 0.0
        aux_metric = 0.0
        for i in range(mb):
            tokens_np = batches.get(name(i, "tokens"))
            labels_np = batches.get(name(i, "labels"))
            lengths = batches.get(name(i, "lengths")).tolist()
            seqs = Sequences(lengths, dev)
            if tokens_np.shape != (seqs.tokens,) or labels_np.shape != (seqs.tokens,):
                raise DumpError("%s: tokens %s, labels %s for %d packed tokens"
                                % (name(i, ""), tokens_np.shape, labels_np.shape, seqs.tokens))
            tokens = torch.from_numpy(tokens_np.astype(np.int64)).to(dev)
            labels = torch.from_numpy(labels_np.astype(np.int64)).to(dev)
            parts, positions = [], []
            # Vision rows first, then audio rows (mimo/mimo_model.cc, worker/trainer.cc).
            if name(i, "vision_positions") in batches:
                pos = batches.get(name(i, "vision_positions"))
                if pos.size > 0:
                    if cfg.vision is None:
                        raise DumpError("vision positions without a vision encoder")
                    images = torch.from_numpy(batches.get(name(i, "images"))).to(dev)
                    rows = encoder_forward(self.P, "vision", cfg.vision, images, None, dev)
                    if rows.shape[0] != pos.size:
                        raise DumpError("vision encoder made %d rows for %d placeholders"
                                        % (rows.shape[0], pos.size))
                    parts.append(rows)
                    positions.append(pos)
            if name(i, "audio_positions") in batches:
                pos = batches.get(name(i, "audio_positions"))
                if pos.size > 0:
                    if cfg.audio is None:
                        raise DumpError("audio positions without an audio encoder")
                    audio = torch.from_numpy(batches.get(name(i, "audio"))).to(dev)
                    frames = [int(f) for f in batches.get(name(i, "audio_frames")).tolist()]
                    rows = encoder_forward(self.P, "audio", cfg.audio, audio, frames, dev)
                    if rows.shape[0] != pos.size:
                        raise DumpError("audio encoder made %d rows for %d placeholders"
                                        % (rows.shape[0], pos.size))
                    parts.append(rows)
                    positions.append(pos)
            embeddings, pos_t = None, None
            if parts:
                embeddings = torch.cat(parts, dim=0)
                pos_np = np.concatenate(positions).astype(np.int64)
                if (pos_np.min() < 0 or pos_np.max() >= seqs.tokens
                        or np.unique(pos_np).size != pos_np.size):
                    raise DumpError("embedding positions outside [0, T) or repeated")
                pos_t = torch.from_numpy(pos_np).to(dev)
            aux = []
            ce_sum = self.language_forward(seqs, tokens, labels, embeddings, pos_t, aux)
            # The objective whose gradient the C++ backward computes: d/d(loss_sum) = 1 / the
            # step's labelled tokens (LanguageModel::Backward's loss_sum_grad); the MoE losses'
            # gradients scaled by loss_scale (MoeAuxLoss's loss_grad).
            objective = ce_sum * loss_grad
            for a, z in aux:
                objective = objective + (a + z) * loss_scale
            objective.backward()
            loss_sum += float(ce_sum.detach())
            for a, z in aux:
                aux_metric += (float(a.detach()) + float(z.detach())) / float(mb)
        if self.replay is not None:
            self.replay.end_step()
        loss = loss_sum / labelled if labelled > 0 else 0.0
        grad_norm, lr, skipped = self.optimizer_step()
        # FinishExpertLoadStep: after the optimizer (skipped or not), the bias updates.
        for st in self.moe_states.values():
            if cfg.moe.expert_bias:
                load = st.load.to(torch.float64)
                offset = load.mean() - load
                rate = cfg.moe.expert_bias_rate
                st.bias += (torch.sign(offset) * rate).to(torch.float32)
            st.load.zero_()
        flips = (self.replay.choice_flips, self.replay.drop_flips) if self.replay else None
        return {"loss": loss, "aux_loss": aux_metric, "grad_norm": grad_norm, "lr": lr,
                "skipped": skipped, "labelled": labelled, "flips": flips}

    def learning_rate(self, step):
        # mimo/optimizer.cc LearningRate.
        o = self.cfg.optimizer
        if step <= o.warmup_steps:
            return o.lr * float(step) / float(o.warmup_steps)
        if o.decay_steps == 0:
            return o.lr
        t = min(1.0, float(step - o.warmup_steps) / float(o.decay_steps))
        return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + math.cos(math.pi * t))

    @torch.no_grad()
    def optimizer_step(self):
        """mimo/optimizer.cc Apply + kernels/adamw_cpu.cc AdamWCpu."""
        o = self.cfg.optimizer
        grads = {}
        squared = 0.0
        for n, p in self.P.items():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            grads[n] = g
            # SumSquares per parameter (accumulated in double on the CPU twin), rounded to float.
            # UNSURE: the C++ then sums the per-parameter floats with an fp32 GEMM
            # (mimo/optimizer.cc SumSquares); here in double, then rounded: last-bit differences.
            squared += f32(float(g.double().pow(2).sum()))
        squared = f32(squared)  # the float total the trainer reads
        step = self.steps_done + 1
        lr = self.learning_rate(step)
        grad_norm = math.sqrt(squared)
        if not math.isfinite(grad_norm):
            return grad_norm, lr, True
        self.steps_done = step
        scale = 1.0
        if o.clip_grad > 0:
            coeff = o.clip_grad / (grad_norm + 1e-6)
            if coeff < 1.0:
                scale = f32(coeff)
        lr32 = f32(lr)
        c1 = f32(1.0 - math.pow(o.beta1, step))  # float(1 - pow(double(beta1), step))
        c2 = f32(1.0 - math.pow(o.beta2, step))
        one_minus_b1 = f32(1.0 - o.beta1)
        one_minus_b2 = f32(1.0 - o.beta2)
        for n, p in self.P.items():
            g = grads[n] * scale
            m = self.m[n]
            v = self.v[n]
            m.mul_(o.beta1).add_(g * one_minus_b1)
            v.mul_(o.beta2).add_(g * g * one_minus_b2)
            wd = o.weight_decay if self.decay[n] else 0.0
            update = (m / c1) / (torch.sqrt(v / c2) + o.eps) + wd * p
            p.sub_(lr32 * update)
        return grad_norm, lr, False


# ------------------------------------------------------------------------------------------------
def num(x):
    """A losses.json number (nlohmann writes NaN and infinities as null)."""
    return float("nan") if x is None else float(x)


def rel_diff(a, b):
    if math.isnan(a) or math.isnan(b):
        return float("nan")
    if a == b:
        return 0.0
    denom = max(abs(a), abs(b))
    return abs(a - b) / denom if denom > 0 else 0.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dump_dir", metavar="DUMP_DIR")
    ap.add_argument("--steps", type=int, default=0, help="check only the first N steps")
    ap.add_argument("--rtol", type=float, default=0.01,
                    help="largest relative loss difference allowed (default 0.01)")
    ap.add_argument("--grad-rtol", type=float, default=None,
                    help="also fail when a grad norm differs by more than this (default: report)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None,
                    help="default: cuda when available")
    ap.add_argument("--own-routing", action="store_true",
                    help="route every MoE layer itself instead of replaying the C++ choices "
                         "from routing.bin (near ties then part the runs)")
    args = ap.parse_args(argv)

    # Plain fp32 GEMMs (the C++ uses CUBLAS_COMPUTE_32F): no TF32.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    try:
        with open(os.path.join(args.dump_dir, "config.json")) as f:
            cfg = Config(json.load(f))
        with open(os.path.join(args.dump_dir, "losses.json")) as f:
            cpp = json.load(f)
        init = Archive(os.path.join(args.dump_dir, "init.bin"))
        batches = Archive(os.path.join(args.dump_dir, "batches.bin"))
        steps = len(cpp)
        if args.steps > 0:
            steps = min(steps, args.steps)
        if steps == 0:
            raise DumpError("losses.json has no steps")
        model = Reference(cfg, init, device)
        routing = os.path.join(args.dump_dir, "routing.bin")
        if cfg.moe is not None and not args.own_routing:
            if not os.path.exists(routing):
                raise DumpError("%s is missing (an older dump? pass --own-routing)" % routing)
            model.replay = Replay(Archive(routing))
    except (DumpError, KeyError, ValueError, NotImplementedError) as e:
        print("error: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 2

    print("reference: %d parameters in %d tensors on %s; %d steps of %d micro-batches; %s"
          % (model.numel(), len(model.P), device, steps, cfg.micro_batches,
             "MoE routing replayed from the C++ run" if model.replay else "own routing"))
    header = "%5s  %12s  %12s  %9s  %11s  %11s  %9s  %11s  %11s  %11s" % (
        "step", "C++ loss", "ref loss", "rel diff", "C++ gnorm", "ref gnorm", "rel diff",
        "C++ aux", "ref aux", "flips")
    print(header)
    print("-" * len(header))
    failures = []
    for s in range(1, steps + 1):
        row = cpp[s - 1]  # entry s - 1 is step s (its "step" lags after a skipped update)
        try:
            r = model.step(batches, s)
        except (DumpError, NotImplementedError) as e:
            print("error: step %d: %s: %s" % (s, type(e).__name__, e), file=sys.stderr)
            return 2
        cpp_loss, cpp_gnorm = num(row.get("loss")), num(row.get("grad_norm"))
        dl = rel_diff(cpp_loss, r["loss"])
        dg = rel_diff(cpp_gnorm, r["grad_norm"])
        flags = []
        if not (dl <= args.rtol):
            flags.append("LOSS")
        if args.grad_rtol is not None and not (dg <= args.grad_rtol):
            flags.append("GRAD")
        if bool(row.get("skipped", False)) != r["skipped"]:
            flags.append("SKIP")
        if not (rel_diff(num(row.get("lr", r["lr"])), r["lr"]) <= 1e-5):
            flags.append("LR")
        # Tokens whose own top-k choice / own kept pairs differed from the replayed C++ ones.
        flips = "%d/%d" % r["flips"] if r["flips"] else "-"
        print("%5d  %12.6f  %12.6f  %9.2e  %11.5f  %11.5f  %9.2e  %11.4e  %11.4e  %11s  %s" % (
            s, cpp_loss, r["loss"], dl, cpp_gnorm, r["grad_norm"], dg,
            num(row.get("aux_loss", 0.0)), r["aux_loss"], flips, " ".join(flags)))
        sys.stdout.flush()
        if "LOSS" in flags or "GRAD" in flags:
            failures.append(s)
    if failures:
        print("FAIL: %d of %d steps outside tolerance (first: step %d)"
              % (len(failures), steps, failures[0]))
        return 1
    print("OK: every step's loss within rtol %g of the C++ run" % args.rtol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
