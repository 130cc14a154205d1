"""MoE layers (mimo/moe_layer.cc): routing, capacity dropping, aux losses, routing replay."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from archive import DumpError
from layers import activation, dense_mlp

NORM_EPS = 1e-20  # kernels/moe_router_math.h: kNormEps


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

