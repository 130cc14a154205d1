"""Parameter specs: names, shapes and weight decay exactly as the C++ builders create them."""

from config import is_moe_layer


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

