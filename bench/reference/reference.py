"""The whole model and the training step (worker/trainer.cc, mimo/optimizer.cc)."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from archive import DumpError
from blocks import encoder_forward, transformer_block
from config import f32, is_moe_layer
from moe import MoeState
from param_specs import model_specs
from sequences import Sequences


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

