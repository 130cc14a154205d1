"""Transformer blocks (dense or MoE layers) and the modality encoders that feed the LM."""

import torch.nn.functional as F

from archive import DumpError
from config import is_moe_layer
from layers import dense_mlp, linear, norm, self_attention
from moe import moe_layer
from sequences import Sequences


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

