"""Configuration, resolved as mimo/transformer_config.h's helpers and the builders resolve it."""

import numpy as np

from archive import DumpError


def f32(x):
    """A Python float rounded to float32 (the C++ configs hold floats)."""
    return float(np.float32(x))


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


def is_moe_layer(layer, moe, freq):
    # mimo/language_model.cc InterleavedMlpBuilder: layer_number % freq == 0 -> MoE.
    return moe is not None and layer % freq == 0
