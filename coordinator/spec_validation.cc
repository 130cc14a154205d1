// Validates a JobSpec (every field, layout through the planner).
#include "coordinator/spec_validation.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "coordinator/field_checks.h"
#include "coordinator/moe_spec_checks.h"
#include "data/brace_expand.h"

namespace mimo::coordinator {
namespace {

constexpr int kMaxJobNameLength = 63;
constexpr int64_t kDefaultSeed = 1234;
// Longest user string quoted back in a description.
constexpr size_t kMaxQuoted = 64;

// `s` in single quotes (as the planner quotes module names) with C escapes, cut to kMaxQuoted
// characters.
std::string Quote(absl::string_view s) {
  if (s.size() <= kMaxQuoted) return absl::StrCat("'", absl::CHexEscape(s), "'");
  return absl::StrCat("'", absl::CHexEscape(s.substr(0, kMaxQuoted)), "'...");
}

bool IsValidJobName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxJobNameLength) return false;
  if (!absl::ascii_islower(name.front()) || name.back() == '-') return false;
  for (char c : name) {
    if (!absl::ascii_islower(c) && !absl::ascii_isdigit(c) && c != '-') return false;
  }
  return true;
}

// A planner violation's path in the spec.
std::string SpecPath(const parallel::LayoutViolation& v) {
  if (v.module < 0) {
    if (v.field == "world_size") return "resources.workers";
    if (v.field == "seed") return "training.seed";
    return "modules";  // The language module, no modules, gaps between modules.
  }
  const std::string module = absl::StrCat("modules[", v.module, "]");
  if (v.field == "name") return absl::StrCat(module, ".name");
  if (v.field.empty()) return absl::StrCat(module, ".parallelism");
  return absl::StrCat(module, ".parallelism.", v.field);
}

// What IsValidJobName accepts, for messages: job and module names follow it.
std::string NameRule() {
  return absl::StrCat("must be 1-", kMaxJobNameLength,
                      " characters of [a-z0-9-], start with a letter and not end with '-'");
}

class SpecChecker : public FieldChecks {
 public:
  explicit SpecChecker(const v1::JobSpec& spec) : spec_(spec) {}

  // Runs every check; returns the plan when the layout was planned without violations.
  std::optional<parallel::RankPlan> Run() {
    CheckJob();
    CheckModules();
    const bool plan_layout = spec_.resources().workers() > 0 &&
                             spec_.resources().workers() <= kMaxJobWorkers && language_ >= 0;
    // The planner checks module names itself (empty, given twice); their characters here.
    if (!plan_layout) CheckModuleNames();
    CheckModuleNameCharacters();
    std::optional<parallel::RankPlan> plan;
    if (plan_layout) plan = PlanLayout();
    if (spec_.kind() == v1::JobSpec::KIND_TRAIN) {
      CheckTraining(plan);
      CheckData();
      CheckTrainingSupport(plan);
    }
    CheckResources();
    CheckCheckpointing();
    CheckPathLengths();
    return plan;
  }

 private:
  void CheckJob() {
    if (!IsValidJobName(spec_.name())) {
      Add("name", absl::StrCat(NameRule(), "; got ", Quote(spec_.name())));
    }
    EnumSet("kind", spec_.kind(), v1::JobSpec::Kind_descriptor());
    NonNegative("max_restarts", spec_.max_restarts());
    NonNegative("selftest.iterations", spec_.selftest().iterations());
    if (spec_.has_selftest() && spec_.kind() != v1::JobSpec::KIND_SELFTEST) {
      Add("selftest", "only a KIND_SELFTEST job takes selftest settings");
    }
    if (spec_.has_active_deadline()) {
      const google::protobuf::Duration& d = spec_.active_deadline();
      const bool positive =
          (d.seconds() > 0 && d.nanos() >= 0) || (d.seconds() == 0 && d.nanos() > 0);
      if (!positive) {
        Add("active_deadline", absl::StrCat("must be positive when set, got ", d.seconds(),
                                            "s and ", d.nanos(), "ns"));
      }
    }
  }

  void CheckModules() {
    if (spec_.modules().empty()) {
      Add("modules", "the job has no modules: it needs at least the language model");
      return;
    }
    for (int i = 0; i < spec_.modules_size(); ++i) {
      const v1::Module& m = spec_.modules(i);
      const std::string path = absl::StrCat("modules[", i, "]");
      const int tp = SizeOrOne(m.parallelism().tp());
      switch (m.model_case()) {
        case v1::Module::kVision:
          SecondOfKind(i, "vision encoder", vision_, path + ".vision");
          CheckVision(m.vision(), absl::StrCat(path, ".vision"), path, tp);
          break;
        case v1::Module::kAudio:
          SecondOfKind(i, "audio encoder", audio_, path + ".audio");
          CheckAudio(m.audio(), absl::StrCat(path, ".audio"), path, tp);
          break;
        case v1::Module::kLanguage:
          if (language_ >= 0) {
            Add(absl::StrCat(path, ".language"),
                absl::StrCat("module ", Quote(m.name()), " is a second language model (module ",
                             Quote(spec_.modules(language_).name()),
                             " is the first); exactly one module has one"));
          } else {
            language_ = i;
          }
          CheckLanguage(m, path, tp);
          break;
        case v1::Module::MODEL_NOT_SET:
          Add(path, absl::StrCat("module ", Quote(m.name()),
                                 " has no model: set one of vision, audio or language"));
          break;
      }
    }
    if (language_ < 0) {
      Add("modules", "no module has a language model: exactly one must");
    }
  }

  // Workers build one encoder of each kind: a second one is refused here, not on every worker.
  void SecondOfKind(int i, const char* kind, int& first, const std::string& path) {
    if (first < 0) {
      first = i;
      return;
    }
    Add(path, absl::StrCat("module ", Quote(spec_.modules(i).name()), " is a second ", kind,
                           " (module ", Quote(spec_.modules(first).name()),
                           " is the first); one module of each kind is supported"));
  }

  // The job name's rules: --component NAME=... (mimoctl plan, mimo-convert) must name a module.
  void CheckModuleNameCharacters() {
    for (int i = 0; i < spec_.modules_size(); ++i) {
      const std::string& name = spec_.modules(i).name();
      if (!name.empty() && !IsValidJobName(name)) {
        Add(absl::StrCat("modules[", i, "].name"),
            absl::StrCat(NameRule(), " (what --component NAME=... can name); got ", Quote(name)));
      }
    }
  }

  void CheckModuleNames() {
    absl::flat_hash_map<std::string, int> first;
    for (int i = 0; i < spec_.modules_size(); ++i) {
      const std::string& name = spec_.modules(i).name();
      const std::string path = absl::StrCat("modules[", i, "].name");
      if (name.empty()) {
        Add(path, absl::StrCat("module #", i, " has an empty name"));
        continue;
      }
      auto [it, inserted] = first.emplace(name, i);
      if (!inserted) {
        Add(path, absl::StrCat("module ", Quote(name), " is given twice (modules #", it->second,
                               " and #", i, ")"));
      }
    }
  }

  // `path` is the transformer's; `module` the module's, for its parallelism.tp.
  // `language`: the language model's (rotary embeddings: an even head width).
  void CheckTransformer(const v1::Transformer& t, bool present, const std::string& path,
                        const std::string& module, int tp, bool language) {
    if (!present) {
      Add(path, "is required");
      return;
    }
    Positive(absl::StrCat(path, ".num_layers"), t.num_layers());
    Positive(absl::StrCat(path, ".hidden_size"), t.hidden_size());
    Positive(absl::StrCat(path, ".num_attention_heads"), t.num_attention_heads());
    NonNegative(absl::StrCat(path, ".num_query_groups"), t.num_query_groups());
    Positive(absl::StrCat(path, ".ffn_hidden_size"), t.ffn_hidden_size());
    const int heads = t.num_attention_heads();
    if (heads <= 0) return;
    if (t.hidden_size() > 0 && t.hidden_size() % heads != 0) {
      Add(absl::StrCat(path, ".hidden_size"),
          absl::StrCat("hidden_size ", t.hidden_size(), " is not divisible by num_attention_heads ",
                       heads));
    }
    if (language && t.hidden_size() > 0 && t.hidden_size() % heads == 0 &&
        (t.hidden_size() / heads) % 2 != 0) {
      Add(absl::StrCat(path, ".hidden_size"),
          absl::StrCat("the language model's head width hidden_size / num_attention_heads = ",
                       t.hidden_size() / heads, " must be even (rotary embeddings rotate pairs)"));
    }
    if (t.num_query_groups() > 0 && heads % t.num_query_groups() != 0) {
      Add(absl::StrCat(path, ".num_query_groups"),
          absl::StrCat("num_attention_heads ", heads, " is not divisible by num_query_groups ",
                       t.num_query_groups()));
    }
    if (tp <= 0) return;  // The planner reports the size.
    const std::string tp_path = absl::StrCat(module, ".parallelism.tp");
    if (heads % tp != 0) {
      Add(tp_path, absl::StrCat("tp=", tp, " does not divide num_attention_heads ", heads,
                                " (each tensor-parallel rank holds whole heads)"));
    }
    if (t.num_query_groups() > 0 && t.num_query_groups() % tp != 0) {
      Add(tp_path,
          absl::StrCat("tp=", tp, " does not divide num_query_groups ", t.num_query_groups(),
                       " (each tensor-parallel rank holds whole key/value heads)"));
    }
    if (t.ffn_hidden_size() > 0 && t.ffn_hidden_size() % tp != 0) {
      Add(tp_path, absl::StrCat("tp=", tp, " does not divide ffn_hidden_size ", t.ffn_hidden_size(),
                                " (each tensor-parallel rank holds a slice)"));
    }
  }

  void CheckProjector(const v1::Projector& p, const std::string& path) {
    EnumSet(absl::StrCat(path, ".kind"), p.kind(), v1::Projector::Kind_descriptor());
    if (p.kind() == v1::Projector::KIND_MLP) {
      Positive(absl::StrCat(path, ".hidden_size"), p.hidden_size());
    }
  }

  void CheckVision(const v1::VisionEncoder& v, const std::string& path, const std::string& module,
                   int tp) {
    Positive(absl::StrCat(path, ".image_size"), v.image_size());
    Positive(absl::StrCat(path, ".patch_size"), v.patch_size());
    Positive(absl::StrCat(path, ".num_channels"), v.num_channels());
    if (v.image_size() > 0 && v.patch_size() > 0 && v.image_size() % v.patch_size() != 0) {
      Add(absl::StrCat(path, ".image_size"),
          absl::StrCat("image_size ", v.image_size(), " is not a multiple of patch_size ",
                       v.patch_size()));
    }
    CheckTransformer(v.transformer(), v.has_transformer(), absl::StrCat(path, ".transformer"),
                     module, tp, /*language=*/false);
    CheckProjector(v.projector(), absl::StrCat(path, ".projector"));
  }

  void CheckAudio(const v1::AudioEncoder& a, const std::string& path, const std::string& module,
                  int tp) {
    Positive(absl::StrCat(path, ".num_mel_bins"), a.num_mel_bins());
    Positive(absl::StrCat(path, ".frames_per_token"), a.frames_per_token());
    Positive(absl::StrCat(path, ".max_frames"), a.max_frames());
    if (a.max_frames() > 0 && a.frames_per_token() > 0 &&
        a.max_frames() % a.frames_per_token() != 0) {
      Add(absl::StrCat(path, ".max_frames"),
          absl::StrCat("max_frames ", a.max_frames(), " is not a multiple of frames_per_token ",
                       a.frames_per_token()));
    }
    CheckTransformer(a.transformer(), a.has_transformer(), absl::StrCat(path, ".transformer"),
                     module, tp, /*language=*/false);
    CheckProjector(a.projector(), absl::StrCat(path, ".projector"));
  }

  void CheckLanguage(const v1::Module& m, const std::string& module, int tp) {
    const v1::LanguageModel& l = m.language();
    const std::string path = absl::StrCat(module, ".language");
    Positive(absl::StrCat(path, ".vocab_size"), l.vocab_size());
    Positive(absl::StrCat(path, ".max_sequence_length"), l.max_sequence_length());
    NonNegative(absl::StrCat(path, ".rotary_base"), l.rotary_base());
    NonNegative(absl::StrCat(path, ".vocab_chunk"), l.vocab_chunk());
    CheckTransformer(l.transformer(), l.has_transformer(), absl::StrCat(path, ".transformer"),
                     module, tp, /*language=*/true);

    CheckMoe(m, module, tp, *this);
  }

  std::optional<parallel::RankPlan> PlanLayout() {
    std::vector<parallel::LayoutViolation> layout_violations;
    absl::StatusOr<parallel::RankPlan> plan =
        parallel::BuildRankPlan(ToLayoutSpec(spec_), &layout_violations);
    for (const parallel::LayoutViolation& v : layout_violations) Add(SpecPath(v), v.message);
    if (!plan.ok()) {
      // BuildRankPlan reports every failure as a violation.
      if (layout_violations.empty()) Add("modules", std::string(plan.status().message()));
      return std::nullopt;
    }
    return *std::move(plan);
  }

  // The language module's dp: the planned one, else the one given; unknown when derived but
  // the layout could not be planned.
  std::optional<int> LanguageDp(const std::optional<parallel::RankPlan>& plan) const {
    if (plan) return plan->language().config().dp;
    if (language_ < 0) return std::nullopt;
    const v1::Parallelism& p = spec_.modules(language_).parallelism();
    if (!p.has_dp()) return std::nullopt;
    return SizeOrOne(p.dp());
  }

  void CheckTraining(const std::optional<parallel::RankPlan>& plan) {
    if (!spec_.has_training()) {
      Add("training", "is required for KIND_TRAIN");
      return;
    }
    const v1::Training& t = spec_.training();
    Positive("training.steps", t.steps());
    Positive("training.micro_batch_size", t.micro_batch_size());
    Positive("training.global_batch_size", t.global_batch_size());
    NonNegative("training.log_interval", t.log_interval());
    // Workers lay out a step's samples up front and index a micro-batch's tokens in int32.
    constexpr int64_t kMaxGlobalBatch = int64_t{1} << 24;
    if (t.global_batch_size() > kMaxGlobalBatch) {
      Add("training.global_batch_size",
          absl::StrCat("must be at most ", kMaxGlobalBatch, " samples a step, got ",
                       t.global_batch_size()));
    }
    if (int64_t{t.micro_batch_size()} * t.seq_length() > std::numeric_limits<int32_t>::max()) {
      Add("training.micro_batch_size",
          absl::StrCat("micro_batch_size * seq_length = ", t.micro_batch_size(), "*",
                       t.seq_length(), " tokens exceeds what a micro-batch indexes (2^31 - 1)"));
    }
    const std::optional<int> dp = LanguageDp(plan);
    if (t.micro_batch_size() > 0 && t.global_batch_size() > 0 && dp && *dp > 0) {
      const int64_t per_step = int64_t{t.micro_batch_size()} * *dp;
      if (t.global_batch_size() % per_step != 0) {
        Add("training.global_batch_size",
            absl::StrCat("global_batch_size ", t.global_batch_size(),
                         " is not divisible by micro_batch_size * language dp = ",
                         t.micro_batch_size(), "*", *dp, " = ", per_step));
      }
    }
    if (t.seq_length() < 1) {
      Add("training.seq_length", absl::StrCat("must be positive, got ", t.seq_length()));
    } else if (language_ >= 0) {
      const int max_length = spec_.modules(language_).language().max_sequence_length();
      if (max_length > 0 && t.seq_length() > max_length) {
        Add("training.seq_length",
            absl::StrCat("seq_length ", t.seq_length(), " exceeds the language model's ",
                         "max_sequence_length ", max_length));
      }
    }
    EnumSet("training.precision", t.precision(), v1::Precision_descriptor());

    // Workers read these as floats: each must stay finite there, and positive where it must be.
    const v1::Optimizer& o = t.optimizer();
    constexpr double kFloatMax = std::numeric_limits<float>::max();
    auto float_in = [&](const char* field, double value, bool positive) {
      const float f = static_cast<float>(value);
      if (std::isfinite(value) && std::abs(value) <= kFloatMax && (positive ? f > 0 : f >= 0)) {
        return true;
      }
      Add(absl::StrCat("training.optimizer.", field),
          absl::StrCat(positive ? "must be positive" : "must be >= 0",
                       " and finite as a float (at most ", kFloatMax, "), got ", value));
      return false;
    };
    if (float_in("lr", o.lr(), true) && float_in("min_lr", o.min_lr(), false) &&
        o.min_lr() > o.lr()) {
      Add("training.optimizer.min_lr", absl::StrCat("min_lr ", o.min_lr(), " is above lr ", o.lr(),
                                                    " (the cosine decays from lr to it)"));
    }
    float_in("weight_decay", o.weight_decay(), false);
    for (const auto& [field, beta] :
         {std::pair{"adam_beta1", o.adam_beta1()}, std::pair{"adam_beta2", o.adam_beta2()}}) {
      if (!(beta >= 0 && static_cast<float>(beta) < 1)) {
        Add(absl::StrCat("training.optimizer.", field),
            absl::StrCat("must be in [0, 1) as a float, got ", beta));
      }
    }
    float_in("adam_eps", o.adam_eps(), true);
    float_in("clip_grad", o.clip_grad(), false);
    NonNegative("training.optimizer.warmup_steps", o.warmup_steps());
    NonNegative("training.optimizer.decay_steps", o.decay_steps());
  }

  // Tensor parallelism in a KIND_TRAIN job, of any module (layers tensor + sequence parallel;
  // the language module's MoE layers sequence parallel, its embedding and output layer
  // vocabulary parallel; an encoder's embeddings and projector whole on every member); not
  // overlapping the reduction on GPUs (checked apart).
  void CheckTensorParallelTraining(size_t index, int tp, bool is_language) {
    if (!is_language) return;
    const std::string at = absl::StrCat("modules[", index, "].parallelism.tp");
    const v1::LanguageModel& l = spec_.modules(static_cast<int>(index)).language();
    if (l.vocab_size() > 0 && l.vocab_size() % tp != 0) {
      Add(at, absl::StrCat("tp=", tp, " does not divide vocab_size ", l.vocab_size(),
                           " (the embedding and output layer are vocabulary parallel)"));
    }
  }

  // Pipeline parallelism in a KIND_TRAIN job, of any module: its layers split evenly over the
  // stages (not, checked apart, overlapping the reduction on GPUs); interleaved (vpp > 1), over
  // the pp x vpp chunks, with micro-batches (per language replica) a multiple of pp.
  void CheckPipelineParallelTraining(size_t index, int pp, int vpp, int64_t samples) {
    const std::string at = absl::StrCat("modules[", index, "].parallelism.pp");
    const v1::Module& m = spec_.modules(static_cast<int>(index));
    const int layers = m.has_language() ? m.language().transformer().num_layers()
                       : m.has_vision() ? m.vision().transformer().num_layers()
                                        : m.audio().transformer().num_layers();
    if (layers > 0 && layers % pp != 0) {
      Add(at, absl::StrCat("pp=", pp, " does not divide num_layers ", layers,
                           " (each pipeline stage holds an equal share of the layers)"));
      return;
    }
    if (vpp <= 1) return;
    const std::string vpp_at = absl::StrCat("modules[", index, "].parallelism.vpp");
    if (layers > 0 && layers % (pp * vpp) != 0) {
      Add(vpp_at, absl::StrCat("pp=", pp, " x vpp=", vpp, " does not divide num_layers ", layers,
                               " (each model chunk holds an equal share of the layers)"));
    }
    const int64_t global = spec_.training().global_batch_size();
    if (samples > 0 && global % samples == 0 && (global / samples) % pp != 0) {
      Add(vpp_at, absl::StrCat("the interleaved schedule runs micro-batches in groups of pp=", pp,
                               "; each language replica gets ", global / samples,
                               " a step (global_batch_size / (micro_batch_size * language dp))"));
    }
  }

  // Context parallelism of an encoder in a KIND_TRAIN job: all-to-all attention, each of the
  // tp x cp members attending with a share of the heads over whole sequences, the tokens padded
  // to tp x cp equal row blocks with rows the position embeddings cover.
  void CheckContextParallelEncoder(size_t index, int tp, int cp) {
    const std::string at = absl::StrCat("modules[", index, "].parallelism.cp");
    const v1::Module& m = spec_.modules(static_cast<int>(index));
    const v1::Transformer& t = m.has_vision() ? m.vision().transformer() : m.audio().transformer();
    const int members = tp * cp;
    const int groups = t.num_query_groups() > 0 ? t.num_query_groups() : t.num_attention_heads();
    if (t.num_attention_heads() > 0 &&
        (t.num_attention_heads() % members != 0 || groups % members != 0)) {
      Add(at, absl::StrCat("tp ", tp, " x cp ", cp, " must divide num_attention_heads (",
                           t.num_attention_heads(), ") and num_query_groups (", groups,
                           "): an encoder's context-parallel members attend with a share of the "
                           "heads each (all-to-all attention)"));
    }
    int64_t tokens = 0;
    if (m.has_vision() && m.vision().patch_size() > 0) {
      tokens = int64_t{m.vision().image_size() / m.vision().patch_size()} *
               (m.vision().image_size() / m.vision().patch_size());
    } else if (m.has_audio() && m.audio().frames_per_token() > 0) {
      tokens = m.audio().max_frames() / m.audio().frames_per_token();
    }
    if (tokens > 0 && tokens < members - 1) {
      Add(at, absl::StrCat("tp ", tp, " x cp ", cp, " pads a micro-batch with up to ", members - 1,
                           " rows, more than the encoder's ", tokens, " position embeddings"));
    }
  }

  // Each layer's tp, cp or ep collectives, or the stages' transfers, beside the dp ones on the
  // communication thread: two NCCL communicators driven from two threads in an order that may
  // differ per rank, not supported on GPUs yet. Unset, the workers turn the overlap off for such
  // modules (worker/train_job.h); asked for, it is refused, once for all of `modules` (each
  // "tp 2, pp 1, ... (name)").
  void CheckNoOverlapOnGpus(const std::vector<std::string>& modules) {
    const v1::Optimizer& o = spec_.training().optimizer();
    if (!modules.empty() && o.has_overlap_grad_reduce() && o.overlap_grad_reduce() &&
        spec_.resources().device() != v1::DEVICE_KIND_CPU) {
      Add("training.optimizer.overlap_grad_reduce",
          absl::StrCat("overlapping the gradient reduction with ", absl::StrJoin(modules, "; "),
                       " on GPUs is not supported yet: leave overlap_grad_reduce unset (off for "
                       "such modules on GPUs) or set it false"));
    }
  }

  // What KIND_TRAIN jobs cannot do yet is refused here, never silently ignored.
  void CheckTrainingSupport(const std::optional<parallel::RankPlan>& plan) {
    if (plan) {
      const int language_dp = plan->language().config().dp;
      const int64_t samples = int64_t{spec_.training().micro_batch_size()} * language_dp;
      std::vector<std::string> parallel_modules;  // Those whose backward has its own collectives.
      for (size_t i = 0; i < plan->modules().size(); ++i) {
        const parallel::ResolvedModule& m = plan->modules()[i].config();
        const std::string at = absl::StrCat("modules[", i, "].parallelism.");
        if (m.cp > 1 && !m.is_language) CheckContextParallelEncoder(i, m.tp, m.cp);
        if (m.tp > 1) CheckTensorParallelTraining(i, m.tp, m.is_language);
        if (m.pp > 1) CheckPipelineParallelTraining(i, m.pp, m.vpp, samples);
        if (m.tp > 1 || m.pp > 1 || m.cp > 1 || m.ep > 1 || m.etp > 1) {
          parallel_modules.push_back(absl::StrCat("tp ", m.tp, ", pp ", m.pp, ", cp ", m.cp,
                                                  ", ep ", m.ep, " and etp ", m.etp, " (", m.name,
                                                  ")"));
        }
        if (!m.is_language && samples > 0 && samples % m.dp != 0) {
          Add(at + "dp", absl::StrCat("dp ", m.dp, " must divide the ", samples,
                                      " samples of a global micro-batch (micro_batch_size * "
                                      "language dp), which the encoder's replicas split"));
        }
      }
      CheckNoOverlapOnGpus(parallel_modules);
    }
    // The synthetic data and the byte-level tokenizer: what the samples need of the model.
    int64_t placeholders = 2;  // BOS and EOS.
    for (int i = 0; i < spec_.modules_size(); ++i) {
      const v1::Module& m = spec_.modules(i);
      const std::string at = absl::StrCat("modules[", i, "].");
      if (m.has_vision()) {
        const v1::VisionEncoder& v = m.vision();
        if (v.num_channels() > 0 && v.num_channels() != 1 && v.num_channels() != 3) {
          Add(at + "vision.num_channels",
              absl::StrCat("images are read as gray (1 channel) or RGB (3), got ",
                           v.num_channels()));
        }
        if (v.image_size() > 0 && v.image_size() < 4 && spec_.data().has_synthetic()) {
          Add(at + "vision.image_size",
              absl::StrCat("the synthetic images are at least 4 pixels wide, got ",
                           v.image_size()));
        }
        if (v.patch_size() > 0) {
          placeholders +=
              int64_t{v.image_size() / v.patch_size()} * (v.image_size() / v.patch_size());
        }
      } else if (m.has_audio() && m.audio().frames_per_token() > 0) {
        placeholders += m.audio().max_frames() / m.audio().frames_per_token();
      } else if (m.has_language() && m.language().vocab_size() > 0 &&
                 m.language().vocab_size() < 256 &&
                 spec_.data().webdataset().tokenizer_model().empty()) {
        // With a SentencePiece model the workers check its size when they load it.
        Add(at + "language.vocab_size",
            absl::StrCat("the byte-level tokenizer needs 256 entries, got ",
                         m.language().vocab_size()));
      }
    }
    if (spec_.training().seq_length() > 0 && spec_.training().seq_length() < placeholders) {
      Add("training.seq_length",
          absl::StrCat("seq_length ", spec_.training().seq_length(),
                       " leaves no room for a "
                       "sample's ",
                       placeholders, " tokens of BOS, EOS and modality placeholders"));
    }
    if (spec_.has_training() && !spec_.training().packing()) {
      Add("training.packing", "KIND_TRAIN jobs pack samples (THD, no padding): set packing: true");
    }
    if (spec_.training().data_parallel_random_init()) {
      Add("training.data_parallel_random_init",
          "KIND_TRAIN jobs start every data-parallel replica from the same values; a different "
          "start per replica is not supported");
    }
    if (!spec_.output_dir().empty() && spec_.output_dir()[0] != '/') {
      Add("output_dir", absl::StrCat("must be an absolute path (the logging rank writes it on its "
                                     "host), got \"",
                                     spec_.output_dir(), "\""));
    }
    const v1::Checkpointing& c = spec_.checkpointing();
    if (!c.dir().empty() && c.dir()[0] != '/') {
      Add("checkpointing.dir", absl::StrCat("must be an absolute path (every rank writes its "
                                            "files there: a folder all of them share), got \"",
                                            c.dir(), "\""));
    }
    if (!c.resume_from().empty() && c.resume_from() != "latest" && c.resume_from()[0] != '/') {
      Add("checkpointing.resume_from",
          absl::StrCat("must be \"latest\" or an absolute path, got \"", c.resume_from(), "\""));
    }
    if (c.resume_from() == "latest" && c.dir().empty()) {
      Add("checkpointing.resume_from", "\"latest\" needs checkpointing.dir to look in");
    }
    if (c.async_save() && c.dir().empty()) {
      Add("checkpointing.async_save", "needs checkpointing.dir to save in");
    }
  }

  void CheckData() {
    const v1::Data& d = spec_.data();
    switch (d.source_case()) {
      case v1::Data::kSynthetic:
        NonNegative("data.synthetic.num_samples", d.synthetic().num_samples());
        break;
      case v1::Data::kWebdataset:
        if (d.webdataset().shards().empty()) {
          Add("data.webdataset.shards", "needs at least one shard path or pattern");
        }
        // The workers read them on their hosts, from wherever they run.
        for (int j = 0; j < d.webdataset().shards_size(); ++j) {
          const std::string& shard = d.webdataset().shards(j);
          if (shard.empty() || shard[0] != '/') {
            Add(absl::StrCat("data.webdataset.shards[", j, "]"),
                absl::StrCat("must be an absolute path or pattern, got \"", shard, "\""));
          } else if (const auto names = data::ExpandBraces(shard); !names.ok()) {
            Add(absl::StrCat("data.webdataset.shards[", j, "]"),
                std::string(names.status().message()));  // As every worker would refuse it.
          }
        }
        if (const std::string& model = d.webdataset().tokenizer_model();
            !model.empty() && model[0] != '/') {
          Add("data.webdataset.tokenizer_model",
              absl::StrCat("must be an absolute path, got \"", model, "\""));
        }
        break;
      case v1::Data::SOURCE_NOT_SET:
        Add("data", "a KIND_TRAIN job needs a data source: synthetic or webdataset");
        break;
    }
  }

  void CheckResources() {
    Positive("resources.workers", spec_.resources().workers());
    if (spec_.resources().workers() > kMaxJobWorkers) {
      Add("resources.workers", absl::StrCat("at most ", kMaxJobWorkers, " workers per job, got ",
                                            spec_.resources().workers()));
    }
    EnumSet("resources.device", spec_.resources().device(), v1::DeviceKind_descriptor());
  }

  // Paths are at most PATH_MAX bytes (4096): longer ones name no file, and the spec travels with
  // every job listing (a few megabytes of output_dir in tens of jobs broke `mimoctl list`).
  void CheckPathLengths() {
    constexpr size_t kMaxPath = 4096;
    auto check = [&](const std::string& path, const std::string& value) {
      if (value.size() > kMaxPath) {
        Add(path, absl::StrCat("is ", value.size(), " bytes long; a path is at most ", kMaxPath));
      }
    };
    check("output_dir", spec_.output_dir());
    check("checkpointing.dir", spec_.checkpointing().dir());
    check("checkpointing.resume_from", spec_.checkpointing().resume_from());
    const v1::Data::WebDataset& w = spec_.data().webdataset();
    for (int j = 0; j < w.shards_size(); ++j) {
      check(absl::StrCat("data.webdataset.shards[", j, "]"), w.shards(j));
    }
    check("data.webdataset.tokenizer_model", w.tokenizer_model());
  }

  void CheckCheckpointing() {
    const v1::Checkpointing& c = spec_.checkpointing();
    NonNegative("checkpointing.interval_steps", c.interval_steps());
    NonNegative("checkpointing.keep_last", c.keep_last());
    if (!spec_.has_checkpointing()) return;
    if (spec_.kind() != v1::JobSpec::KIND_TRAIN) {
      Add("checkpointing", "only KIND_TRAIN jobs save and resume checkpoints");
    } else if (c.dir().empty() && (c.interval_steps() > 0 || c.keep_last() > 0)) {
      Add("checkpointing.dir", "interval_steps and keep_last need a dir to save in");
    }
  }

  const v1::JobSpec& spec_;
  int language_ = -1;  // Index of the first module with a language model.
  int vision_ = -1;    // ... with a vision encoder.
  int audio_ = -1;     // ... with an audio encoder.
};

}  // namespace

parallel::LayoutSpec ToLayoutSpec(const v1::JobSpec& spec) {
  parallel::LayoutSpec layout;
  layout.world_size = spec.resources().workers();
  for (const v1::Module& m : spec.modules()) {
    if (m.has_language()) {
      layout.language = m.name();
      break;
    }
  }
  for (const v1::Module& m : spec.modules()) {
    const v1::Parallelism& p = m.parallelism();
    parallel::ModuleParallelism mp;
    mp.name = m.name();
    mp.tp = SizeOrOne(p.tp());
    mp.cp = SizeOrOne(p.cp());
    mp.pp = SizeOrOne(p.pp());
    if (p.has_dp()) mp.dp = SizeOrOne(p.dp());
    mp.ep = SizeOrOne(p.ep());
    mp.etp = SizeOrOne(p.etp());
    mp.vpp = SizeOrOne(p.vpp());
    if (p.has_rank_offset()) mp.rank_offset = p.rank_offset();
    layout.modules.push_back(std::move(mp));
  }
  layout.seed = spec.training().seed() == 0 ? kDefaultSeed : spec.training().seed();
  layout.data_parallel_random_init = spec.training().data_parallel_random_init();
  return layout;
}

std::string DescribeViolations(const std::vector<FieldViolation>& violations) {
  std::string message = absl::StrCat("invalid job spec (", violations.size(), " problem",
                                     violations.size() == 1 ? "" : "s", ")");
  for (const FieldViolation& v : violations) {
    absl::StrAppend(&message, "\n", v.field, ": ", v.description);
  }
  return message;
}

absl::StatusOr<parallel::RankPlan> ValidateJobSpec(const v1::JobSpec& spec,
                                                   std::vector<FieldViolation>* violations) {
  SpecChecker checker(spec);
  std::optional<parallel::RankPlan> plan = checker.Run();
  std::vector<FieldViolation>& found = checker.violations();
  absl::Status status = absl::OkStatus();
  if (!found.empty()) {
    status = absl::InvalidArgumentError(DescribeViolations(found));
  }
  if (violations != nullptr) *violations = std::move(found);
  if (!status.ok()) return status;
  return *std::move(plan);
}

}  // namespace mimo::coordinator
