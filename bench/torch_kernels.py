#!/usr/bin/env python3
"""The PyTorch side of bench/kernel_bench: times the same cases in PyTorch on the same GPU.

  kernel_bench --list > cases.jsonl
  kernel_bench > ours.jsonl
  python3 bench/torch_kernels.py --cases cases.jsonl > torch.jsonl
  python3 bench/torch_kernels.py --cases cases.jsonl --ours ours.jsonl --torch torch.jsonl

The first form prints one JSON line per case (median ms per call of 5 timed repetitions, and the
rate); the second prints a markdown table of both sides. Products are captured K times into a CUDA
graph like kernel_bench does (so host overhead does not count on either side); the other cases
are long enough to time K back-to-back calls between events. Attention runs once per backend
that torch has (cuDNN, flash), each pinned with sdpa_kernel.
"""
import argparse
import json
import sys


def timed(torch, fn, iters, graph):
    """Median ms per call of fn over 5 repetitions of `iters` calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    run = None
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(iters):
                fn()
        run = g.replay
    else:
        def run():
            for _ in range(iters):
                fn()
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / iters)
    times.sort()
    return times[len(times) // 2]


def case_fns(torch, case):
    """[(label, fn, graph)] for one case."""
    F = torch.nn.functional
    kind, shape = case["kind"], case["shape"]
    dev, bf16 = "cuda", torch.bfloat16

    def rand(*s, dtype=bf16, grad=False):
        return (torch.rand(*s, device=dev, dtype=torch.float32) * 2 - 1).to(dtype).requires_grad_(grad)

    if kind == "copy":
        src = torch.empty(shape[0], dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        return [("copy_", lambda: dst.copy_(src), False)]
    if kind == "gemm":
        m, n, k, transpose_b = shape
        a = rand(m, k)
        if transpose_b:
            w = rand(n, k)
            return [("matmul", lambda: torch.matmul(a, w.t()), True)]
        b = rand(k, n)
        return [("matmul", lambda: torch.matmul(a, b), True)]
    if kind in ("rmsnorm", "rmsnorm_bwd"):
        rows, cols = shape
        x, w = rand(rows, cols, grad=True), rand(cols, grad=True)
        if kind == "rmsnorm":
            return [("F.rms_norm", lambda: F.rms_norm(x, (cols,), w, 1e-6), False)]
        y = F.rms_norm(x, (cols,), w, 1e-6)
        dy = rand(rows, cols)
        return [("F.rms_norm backward",
                 lambda: torch.autograd.grad(y, (x, w), dy, retain_graph=True), False)]
    if kind == "rope":
        tokens, heads, dim = shape
        x = rand(tokens, heads, dim)
        angle = torch.rand(tokens, 1, dim // 2, device=dev)
        cos, sin = angle.cos().to(bf16), angle.sin().to(bf16)

        def rope():
            x1, x2 = x[..., : dim // 2], x[..., dim // 2:]
            return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return [("eager (no fused op)", rope, False)]
    if kind in ("swiglu", "swiglu_bwd"):
        rows, cols = shape
        x = rand(rows, 2 * cols, grad=True)

        def swiglu():
            g, u = x.chunk(2, dim=-1)
            return F.silu(g) * u
        if kind == "swiglu":
            return [("eager silu(g)*u", swiglu, False)]
        y, dy = swiglu(), rand(rows, cols)
        return [("eager backward", lambda: torch.autograd.grad(y, x, dy, retain_graph=True), False)]
    if kind in ("cross_entropy", "cross_entropy_bwd"):
        tokens, vocab = shape
        logits = rand(tokens, vocab, grad=True)
        targets = torch.randint(0, vocab, (tokens,), device=dev)
        if kind == "cross_entropy":
            return [("F.cross_entropy", lambda: F.cross_entropy(logits, targets, reduction="none"),
                     False)]
        loss = F.cross_entropy(logits, targets, reduction="none")
        dloss = torch.rand(tokens, device=dev)
        return [("F.cross_entropy backward",
                 lambda: torch.autograd.grad(loss, logits, dloss, retain_graph=True), False)]
    if kind == "adamw":
        (n,) = shape
        p = torch.nn.Parameter(torch.rand(n, device=dev))
        p.grad = torch.rand(n, device=dev)
        opt = torch.optim.AdamW([p], lr=1e-4, weight_decay=0.1, fused=True)
        return [("AdamW(fused=True), fp32 only", opt.step, False)]
    if kind in ("attention", "attention_fwd"):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        b, h, s, d, causal = shape
        q, k, v = (rand(b, h, s, d, grad=True) for _ in range(3))
        do = rand(b, h, s, d)
        out = []
        for label, backend in (("sdpa cuDNN", SDPBackend.CUDNN_ATTENTION),
                               ("sdpa flash", SDPBackend.FLASH_ATTENTION)):
            def run(backend=backend):
                with sdpa_kernel([backend]):
                    o = F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
                    if kind == "attention":
                        torch.autograd.grad(o, (q, k, v), do)
            out.append((label, run, False))
        return out
    raise ValueError(f"unknown kind {kind}")


def run_torch(cases, iters):
    import torch
    name = torch.cuda.get_device_name()
    for case in cases:
        for label, fn, graph in case_fns(torch, case):
            try:
                ms = timed(torch, fn, iters, graph)
            except Exception as e:  # A backend torch lacks here: say so, go on.
                print(json.dumps({"name": case["name"], "torch": label, "error": str(e)[:200]}))
                continue
            work = case["work"]
            if case["kind"] == "adamw":  # torch writes no bf16 model copy: 28 of our 30 B/param.
                work = work * 28 / 30
            rate = work / (ms * 1e-3) / (1e12 if case["flops"] else 1e9)
            print(json.dumps({"name": case["name"], "torch": label, "ms": round(ms, 5),
                              "tflops" if case["flops"] else "gbps": round(rate, 1),
                              "gpu": name, "version": torch.__version__}), flush=True)
            torch.cuda.empty_cache()


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().startswith("{")]


def table(cases, ours, theirs):
    ours = {r["name"]: r for r in ours}
    # The floor is the fastest copy measured in the run, ours (cudaMemcpyAsync) or torch's copy_:
    # on an H200 copy_ moves 4.3 TB/s where cudaMemcpyAsync moves 2.8.
    copies = [r["gbps"] for r in list(ours.values()) + theirs
              if r["name"].startswith("copy") and "gbps" in r]
    copy = max(copies, default=None)
    print("| case | shape | ours ms | ours rate | % of best copy bw | torch | torch ms | torch rate | ours / torch speed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for case in cases:
        mine = ours.get(case["name"])
        unit = "TFLOP/s" if case["flops"] else "GB/s"
        key = "tflops" if case["flops"] else "gbps"
        rows = [r for r in theirs if r["name"] == case["name"]] or [{}]
        for t in rows:
            floor = "" if case["flops"] or not copy or not mine else f"{100 * mine[key] / copy:.0f}%"
            ratio = f"{t['ms'] / mine['ms']:.2f}x" if mine and "ms" in t else ""
            print(f"| {case['name']} | {case['shape']} | {mine['ms'] if mine else ''} | "
                  f"{mine[key] if mine else ''} {unit} | {floor} | {t.get('torch', '')} | "
                  f"{t.get('ms', t.get('error', ''))} | {t.get(key, '')} | {ratio} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", required=True, help="kernel_bench --list output")
    parser.add_argument("--ours", help="kernel_bench output: print the table")
    parser.add_argument("--torch", help="this script's output, for the table")
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    cases = [c for c in load(args.cases) if args.filter in c["name"]]
    if args.ours:
        table(cases, load(args.ours), load(args.torch) if args.torch else [])
    else:
        run_torch(cases, args.iters)


if __name__ == "__main__":
    sys.exit(main())
