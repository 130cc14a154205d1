#!/usr/bin/env python3
"""The PyTorch side of bench/train_bench: the training step of bench/specs/mimo-*-1b.yaml in
PyTorch on the same GPU, for issue 7's item 8 (our step at least 1.2x faster).

  python3 bench/torch_mimo_step.py [--dense] [--compile] [--steps 10] [--warmup 5]
                                   [--micro-batch-size 16] [--micro-batches 4]

The model as train_bench builds it from the spec (sizes below are the spec's): a ViT encoder
(patch projection + learned positions, pre-LayerNorm blocks, bidirectional attention per image,
GELU MLP) and a GELU-MLP projector whose rows replace each sample's image placeholder tokens; a
language model (embedding, pre-RMSNorm blocks with fused QKV in grouped-query heads, rotary
embedding, causal attention per sample, SwiGLU MLP or a softmax top-2 MoE of SwiGLU experts with
the load-balancing loss, final norm, untied output layer, cross-entropy over caption tokens).
Mixed precision the PyTorch way: fp32 parameters and gradients, bf16 autocast compute,
fused AdamW, gradient clipping. Each step: 4 micro-batches of 16 samples of 196 image tokens + a
caption of 34 tokens (the synthetic set's mean; ours vary per sample), every sample one
sequence of the same length, so a batch needs no padding and no varlen attention.
Experts: tokens sorted by expert into groups padded to 16 rows and torch._grouped_mm (the
efficient PyTorch MoE), or a loop over experts where _grouped_mm is missing. Prints one JSON line:
median step ms, tokens per second and peak memory. Figures (H200, H100) are in bench/RESULTS.md
("Training step on one GPU"); --tiny checks the script on a CPU (PyTorch 1.13: the expert loop
and the plain attention).
"""
import argparse
import json
import math
import statistics
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dense", action="store_true", help="mimo-dense-1b instead of mimo-moe-1b")
    ap.add_argument("--compile", action="store_true", help="torch.compile the blocks")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="small sizes, to check the script on a CPU")
    ap.add_argument("--micro-batch-size", type=int, default=0, help="samples a micro-batch (16)")
    ap.add_argument("--micro-batches", type=int, default=0, help="micro-batches a step (4)")
    args = ap.parse_args()

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    c = dict(image=224, patch=16, v_layers=12, v_hidden=768, v_heads=12, v_ffn=3072,
             proj_hidden=2048, vocab=32000, layers=16 if args.dense else 12, hidden=2048,
             heads=16, groups=8, ffn=5632, experts=0 if args.dense else 8, top_k=2,
             expert_ffn=2048, samples=16, micro_batches=4, caption=34)
    if args.tiny:
        c.update(image=32, patch=16, v_layers=1, v_hidden=32, v_heads=2, v_ffn=64, proj_hidden=64,
                 vocab=300, layers=2, hidden=64, heads=4, groups=2, ffn=96, expert_ffn=32,
                 samples=2, micro_batches=2, caption=8)
    if args.micro_batch_size > 0:
        c["samples"] = args.micro_batch_size
    if args.micro_batches > 0:
        c["micro_batches"] = args.micro_batches
    P = (c["image"] // c["patch"]) ** 2
    L = P + c["caption"]
    head_dim = c["hidden"] // c["heads"]

    def attention(q, k, v, causal):  # (B, heads, T, d)
        if hasattr(F, "scaled_dot_product_attention"):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if causal:
            T = q.shape[-2]
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), -1e9)
        return s.softmax(-1) @ v

    class VitBlock(nn.Module):
        def __init__(self):
            super().__init__()
            C = c["v_hidden"]
            self.n1, self.n2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.fc1, self.fc2 = nn.Linear(C, c["v_ffn"]), nn.Linear(c["v_ffn"], C)

        def forward(self, x):  # (B, P, C)
            B, T, C = x.shape
            q, k, v = self.qkv(self.n1(x)).view(B, T, 3, c["v_heads"], -1).permute(2, 0, 3, 1, 4)
            x = x + self.proj(attention(q, k, v, False).transpose(1, 2).reshape(B, T, C))
            return x + self.fc2(F.gelu(self.fc1(self.n2(x))))

    class RmsNorm(nn.Module):
        def __init__(self, C):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(C))

        def forward(self, x):
            xf = x.float()
            y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)
            return y * self.weight.to(x.dtype)

    def rope(x, cos, sin):  # (B, heads, T, d), rotate-half
        a, b = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-b, a), dim=-1) * sin

    class Moe(nn.Module):
        def __init__(self):
            super().__init__()
            C, E, Fe = c["hidden"], c["experts"], c["expert_ffn"]
            self.router = nn.Linear(C, E, bias=False)
            self.w1 = nn.Parameter(torch.randn(E, C, 2 * Fe) * 0.02)
            self.w2 = nn.Parameter(torch.randn(E, Fe, C) * 0.02)

        def forward(self, x):  # (N, C)
            E, k = c["experts"], c["top_k"]
            x = x.to(torch.bfloat16)
            probs = self.router(x).float().softmax(-1)
            weight, idx = probs.topk(k, dim=-1)
            weight = weight / weight.sum(-1, keepdim=True)
            counts = torch.bincount(idx.flatten(), minlength=E)
            aux = E * (probs.mean(0) * counts.float() / idx.numel()).sum()
            flat = idx.flatten()
            order = flat.argsort(stable=True)
            xs = x.repeat_interleave(k, dim=0)[order]
            if hasattr(torch, "_grouped_mm") and x.is_cuda:
                padded = ((counts + 15) // 16) * 16
                ends = padded.cumsum(0)
                starts = ends - padded
                pos = torch.arange(flat.numel(), device=x.device) - (counts.cumsum(0) - counts).repeat_interleave(counts)
                rows = starts.repeat_interleave(counts) + pos
                buf = x.new_zeros(int(flat.numel() + 15 * E), x.shape[1])
                buf[rows] = xs
                offs = ends.to(torch.int32)
                g, u = torch._grouped_mm(buf, self.w1.to(x.dtype), offs=offs).chunk(2, dim=-1)
                h = torch._grouped_mm(F.silu(g) * u, self.w2.to(x.dtype), offs=offs)[rows]
            else:
                h = torch.empty_like(xs)
                bounds = [0] + counts.cumsum(0).tolist()
                for e in range(E):
                    s, t = bounds[e], bounds[e + 1]
                    g, u = (xs[s:t] @ self.w1[e].to(x.dtype)).chunk(2, dim=-1)
                    h[s:t] = (F.silu(g) * u) @ self.w2[e].to(x.dtype)
            y = torch.empty_like(h)
            y[order] = h
            y = (y.view(-1, k, x.shape[1]) * weight.unsqueeze(-1).to(x.dtype)).sum(1)
            return y, aux

    class LmBlock(nn.Module):
        def __init__(self):
            super().__init__()
            C, G = c["hidden"], c["groups"]
            self.n1, self.n2 = RmsNorm(C), RmsNorm(C)
            self.qkv = nn.Linear(C, C + 2 * G * head_dim, bias=False)
            self.proj = nn.Linear(C, C, bias=False)
            if c["experts"]:
                self.moe = Moe()
            else:
                self.fc1 = nn.Linear(C, 2 * c["ffn"], bias=False)
                self.fc2 = nn.Linear(c["ffn"], C, bias=False)

        def forward(self, x, cos, sin):  # (B, T, C)
            B, T, C = x.shape
            H, G = c["heads"], c["groups"]
            q, k, v = self.qkv(self.n1(x)).split([C, G * head_dim, G * head_dim], dim=-1)
            q = rope(q.view(B, T, H, head_dim).transpose(1, 2), cos, sin)
            k = rope(k.view(B, T, G, head_dim).transpose(1, 2), cos, sin)
            v = v.view(B, T, G, head_dim).transpose(1, 2)
            k, v = (t.repeat_interleave(H // G, dim=1) for t in (k, v))
            x = x + self.proj(attention(q, k, v, True).transpose(1, 2).reshape(B, T, C))
            h = self.n2(x)
            if c["experts"]:
                y, aux = self.moe(h.reshape(B * T, C))
                return x + y.view(B, T, C), aux
            g, u = self.fc1(h).chunk(2, dim=-1)
            return x + self.fc2(F.silu(g) * u), torch.zeros((), device=x.device)

    class Mimo(nn.Module):
        def __init__(self):
            super().__init__()
            Cv, C = c["v_hidden"], c["hidden"]
            self.patch = nn.Linear(3 * c["patch"] ** 2, Cv)
            self.pos = nn.Parameter(torch.randn(P, Cv) * 0.02)
            self.vit = nn.ModuleList(VitBlock() for _ in range(c["v_layers"]))
            self.vnorm = nn.LayerNorm(Cv)
            self.p1, self.p2 = nn.Linear(Cv, c["proj_hidden"]), nn.Linear(c["proj_hidden"], C)
            self.embed = nn.Embedding(c["vocab"], C)
            self.blocks = nn.ModuleList(LmBlock() for _ in range(c["layers"]))
            self.norm = RmsNorm(C)
            self.out = nn.Linear(C, c["vocab"], bias=False)

        def forward(self, patches, tokens, labels, cos, sin):
            v = self.patch(patches) + self.pos  # (B, P, Cv)
            for blk in self.vit:
                v = blk(v)
            img = self.p2(F.gelu(self.p1(self.vnorm(v))))  # (B, P, C)
            x = torch.cat([img.to(torch.bfloat16), self.embed(tokens[:, P:]).to(torch.bfloat16)], 1)
            aux = 0
            for blk in self.blocks:
                x, a = blk(x, cos, sin)
                aux = aux + a
            logits = self.out(self.norm(x)).float()
            return F.cross_entropy(logits.view(-1, c["vocab"]), labels.view(-1), ignore_index=-1) + 0.01 * aux

    torch.manual_seed(0)
    model = Mimo().to(dev)
    if args.compile:
        for blk in list(model.vit) + list(model.blocks):
            blk.compile()
    params = sum(p.numel() for p in model.parameters())
    fused = {"fused": True} if dev == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, **fused)
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=dev).float() / head_dim))
    ang = torch.arange(L, device=dev).float()[:, None] * inv[None]
    cos = torch.cat([ang.cos()] * 2, -1).to(torch.bfloat16)
    sin = torch.cat([ang.sin()] * 2, -1).to(torch.bfloat16)
    B = c["samples"]
    patches = torch.randn(B, P, 3 * c["patch"] ** 2, device=dev)
    tokens = torch.randint(0, 256, (B, L), device=dev)
    labels = torch.randint(0, 256, (B, L), device=dev)
    labels[:, :P] = -1
    autocast = torch.autocast(device_type=dev, dtype=torch.bfloat16)

    def step():
        opt.zero_grad(set_to_none=True)
        for _ in range(c["micro_batches"]):
            with autocast:
                loss = model(patches, tokens, labels, cos, sin) / c["micro_batches"]
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    times = []
    for i in range(args.warmup + args.steps):
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if dev == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    tokens_per_step = c["micro_batches"] * B * L
    print(json.dumps({
        "config": "tiny" if args.tiny else ("mimo-dense-1b" if args.dense else "mimo-moe-1b"),
        "compile": args.compile, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "torch": torch.__version__, "parameters": params, "micro_batches": c["micro_batches"],
        "micro_batch_size": B, "median_step_ms": round(ms, 1),
        "tokens_per_s": round(tokens_per_step / ms * 1e3),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev == "cuda" else None,
    }))


if __name__ == "__main__":
    main()
