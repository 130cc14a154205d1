#!/usr/bin/env python3
"""PyTorch reference for the C++ MIMO training step (single rank, fp32).

Reads a dump written by bench/reference_dump.cc (config.json, init.bin, batches.bin, losses.json),
rebuilds the model from the same math as mimo/*.cc and kernels/*, trains it from the same initial
values on the same packed micro-batches with the same objective, clipping, schedule and AdamW as
worker/trainer.cc (ModelPart::kWhole) and mimo/optimizer.cc, and compares every step's loss with
the C++ run's.

    python3 bench/reference/mimo_reference.py DUMP_DIR [--steps N] [--rtol R] [--losses FILE]

--losses losses_dp2.json (or losses_ep2.json) compares with the dump's two-rank run of the same
steps (reference_dump --layout dp2 / ep2) instead of its one-rank run.

Exit status: 0 when every checked step's loss agrees within rtol, 1 otherwise, 2 on a bad dump.

Comments name the C++ file (and function) each piece mirrors. Comments starting with "UNSURE:"
mark places where the dump or the C++ left a choice this script had to make.

The pieces live beside this script, one concept per module (imported as siblings): archive.py
(the dump's tensor archives), config.py (config.json resolved as the C++ resolves it),
param_specs.py (the parameters the C++ builders make), sequences.py (packed sequences),
layers.py (norms, linears, activations, RoPE, attention, dense MLPs), moe.py (routing, capacity,
aux losses, routing replay, the MoE layer), blocks.py (transformer blocks, modality encoders) and
reference.py (the whole model, the training step and AdamW); this file parses the arguments and
compares the losses.
"""

import argparse
import json
import math
import os
import sys

import torch

sys.dont_write_bytecode = True  # importing the sibling modules leaves no __pycache__ beside them

from archive import Archive, DumpError  # noqa: E402
from config import Config  # noqa: E402
from moe import Replay  # noqa: E402
from reference import Reference  # noqa: E402


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
    ap.add_argument("--losses", default="losses.json",
                    help="the C++ run to compare with, in DUMP_DIR: losses.json (one rank, the "
                         "default) or losses_dp2.json / losses_ep2.json (two ranks)")
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
        with open(os.path.join(args.dump_dir, args.losses)) as f:
            cpp = json.load(f)
        init = Archive(os.path.join(args.dump_dir, "init.bin"))
        batches = Archive(os.path.join(args.dump_dir, "batches.bin"))
        steps = len(cpp)
        if args.steps > 0:
            steps = min(steps, args.steps)
        if steps == 0:
            raise DumpError("%s has no steps" % args.losses)
        model = Reference(cfg, init, device)
        routing = os.path.join(args.dump_dir, "routing.bin")
        if cfg.moe is not None and not args.own_routing:
            if not os.path.exists(routing):
                raise DumpError("%s is missing (an older dump? pass --own-routing)" % routing)
            model.replay = Replay(Archive(routing))
    except (DumpError, OSError, KeyError, ValueError, NotImplementedError) as e:
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
