#!/usr/bin/env python3
"""The PyTorch side of bench/moe_bench: the same MoE layer in PyTorch on the same GPU.

  moe_bench --list > cases.jsonl
  moe_bench > ours.jsonl
  python3 bench/torch_moe.py --cases cases.jsonl [--skew S] > torch.jsonl

The layer: a bias-free router GEMM, fp32 softmax, top-k renormalized, the (token, choice) pairs
sorted by expert into groups padded to 16 rows (torch._grouped_mm's backward needs 16-byte
aligned groups), torch._grouped_mm for the SwiGLU fc1 and for fc2, the outputs weighted and summed
back per token; forward and backward of sum(y * dy). Timed eager and torch.compile'd: 2 warm-up
steps, then the median of K steps between CUDA events. One JSON line per case and mode: ms per
forward+backward and expert TFLOP/s (3 x 2 x tokens x top_k x 3 x hidden x ffn). --skew S also
times the layer with routing skewed as moe_bench --skew skews ours: a selection-only bias of
-S * ln(e + 1) / E on expert e (top-k of probs + bias, weights from probs), and reports the
achieved imbalance (largest / mean expert load).
"""
import argparse
import json


def build(torch, case, skew=0.0):
    T, H, F, E, k = (case[key] for key in ("tokens", "hidden", "ffn", "experts", "top_k"))
    dev, bf16 = "cuda", torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape, scale=1.0):
        t = (torch.rand(*shape, device=dev, generator=gen) * 2 - 1) * scale
        return t.to(bf16).requires_grad_()

    router = rand(E, H, scale=0.02)
    w1 = rand(E, H, 2 * F, scale=0.02)  # (E, K, N) as grouped_mm takes it.
    w2 = rand(E, F, H, scale=0.02)
    x = rand(T, H)
    dy = (torch.rand(T, H, device=dev, generator=gen) * 2 - 1).to(bf16)
    rows = T * k + E * 15  # Every padded group fits, whatever the routing.
    bias = -skew * torch.log(torch.arange(E, device=dev, dtype=torch.float32) + 1) / E

    def layer(x, router, w1, w2):
        probs = (x @ router.t()).float().softmax(-1)
        if skew > 0:
            idx = (probs + bias).topk(k, dim=-1).indices
            weight = probs.gather(-1, idx)
        else:
            weight, idx = probs.topk(k, dim=-1)
        weight = weight / weight.sum(-1, keepdim=True)
        flat = idx.flatten()
        order = flat.argsort(stable=True)
        expert = flat[order]
        counts = torch.zeros(E, device=dev, dtype=torch.int64).scatter_add_(
            0, flat, torch.ones_like(flat))
        padded = (counts + 15) // 16 * 16
        start = counts.cumsum(0) - counts
        pstart = padded.cumsum(0) - padded
        dest = pstart[expert] + torch.arange(T * k, device=dev) - start[expert]
        offs = padded.cumsum(0).to(torch.int32)
        xp = x.new_zeros(rows, H).index_copy(0, dest, x[order // k])
        h = torch._grouped_mm(xp, w1, offs=offs)
        gate, up = h.chunk(2, dim=-1)
        a = torch.nn.functional.silu(gate) * up
        o = torch._grouped_mm(a, w2, offs=offs)[dest]
        contrib = o * weight.flatten()[order].unsqueeze(-1).to(o.dtype)
        return torch.zeros_like(x).index_add(0, order // k, contrib)

    def imbalance():
        with torch.no_grad():
            probs = (x @ router.t()).float().softmax(-1)
            idx = (probs + bias).topk(k, dim=-1).indices.flatten()
            counts = torch.bincount(idx, minlength=E).float()
            return round((counts.max() / counts.mean()).item(), 2)

    return layer, (x, router, w1, w2), dy, imbalance


def timed(torch, step, iters):
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", required=True, help="moe_bench --list output")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--skew", type=float, default=0.0,
                        help="also time routing skewed by a bias of -skew * ln(e + 1) / E")
    args = parser.parse_args()
    import torch
    with open(args.cases) as f:
        cases = [json.loads(line) for line in f if line.strip()]
    for case in cases:
        flops = 3 * 2 * case["tokens"] * case["top_k"] * 3 * case["hidden"] * case["ffn"]
        for skew in (0.0, args.skew) if args.skew > 0 else (0.0,):
            run(torch, case, flops, skew, args.iters)


def run(torch, case, flops, skew, iters):
    layer, params, dy, imbalance = build(torch, case, skew)
    load = imbalance()
    for mode in ("eager", "compiled"):
        fn = layer if mode == "eager" else torch.compile(layer)

        def step(fn=fn):
            for p in params:
                p.grad = None
            fn(*params).backward(dy)

        try:
            ms = timed(torch, step, iters)
        except Exception as e:  # Report, then go on with the next.
            print(json.dumps({"name": case["name"], "torch": mode, "skew": skew,
                              "error": str(e)[:300]}),
                  flush=True)
            continue
        print(json.dumps({"name": case["name"], "torch": mode, "skew": skew,
                          "max_over_mean_load": load, "ms": round(ms, 3),
                          "expert_tflops": round(flops / (ms * 1e-3) / 1e12, 1)}), flush=True)


if __name__ == "__main__":
    main()
