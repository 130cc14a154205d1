// The job spec's MoE settings checked at submit time (moe_spec_checks.h).
#include "coordinator/moe_spec_checks.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace mimo::coordinator {
namespace {

// The router's settings (kernels::CheckRouterConfig's limits, which workers check again).
void CheckRouter(const v1::MoE& moe, const std::string& path, FieldChecks& checks) {
  constexpr int kMaxExperts = 1024, kMaxTopK = 32, kMaxGroups = 64;
  const int e = moe.num_experts(), k = moe.top_k();
  if (e > kMaxExperts) {
    checks.Add(absl::StrCat(path, ".num_experts"),
               absl::StrCat("must be at most ", kMaxExperts, ", got ", e));
  }
  if (k < 1 || k > std::min(e, kMaxTopK)) {
    checks.Add(
        absl::StrCat(path, ".top_k"),
        absl::StrCat("top_k must be in [1, min(num_experts = ", e, ", ", kMaxTopK, ")], got ", k));
  }
  checks.EnumSet(absl::StrCat(path, ".router_score"), moe.router_score(),
                 v1::MoE::RouterScore_descriptor());
  checks.FloatUpTo(absl::StrCat(path, ".top_k_scaling_factor"), moe.top_k_scaling_factor(), 1e6);
  checks.FloatUpTo(absl::StrCat(path, ".expert_bias_update_rate"), moe.expert_bias_update_rate(),
                   1.0);
  if (v1::MoE::DropPolicy_descriptor()->FindValueByNumber(moe.drop_policy()) == nullptr) {
    checks.Add(absl::StrCat(path, ".drop_policy"),
               absl::StrCat("unknown DropPolicy value ", moe.drop_policy()));
  }
  const int groups = moe.num_groups(), group_k = moe.group_top_k();
  if (groups == 0) {
    if (group_k != 0) {
      checks.Add(absl::StrCat(path, ".group_top_k"),
                 absl::StrCat("group_top_k ", group_k, " without num_groups"));
    }
    return;
  }
  if (groups < 2 || groups > kMaxGroups || e % groups != 0) {
    checks.Add(absl::StrCat(path, ".num_groups"),
               absl::StrCat("num_groups must be in [2, ", kMaxGroups, "] and divide num_experts ",
                            e, ", got ", groups));
  } else if (group_k < 1 || group_k > groups || k < 1 || k % group_k != 0 ||
             k > group_k * (e / groups)) {
    checks.Add(
        absl::StrCat(path, ".group_top_k"),
        absl::StrCat("group_top_k must be in [1, num_groups = ", groups, "], divide top_k ", k,
                     " and leave at least top_k experts in the chosen groups (group_top_k x ",
                     e / groups, "), got ", group_k));
  }
}

}  // namespace

void CheckMoe(const v1::Module& m, const std::string& module, int tp, FieldChecks& checks) {
  const v1::MoE& moe = m.language().moe();
  const std::string moe_path = absl::StrCat(module, ".language.moe");
  const std::string ep_path = absl::StrCat(module, ".parallelism.ep");
  const int ep = SizeOrOne(m.parallelism().ep());
  checks.NonNegative(absl::StrCat(moe_path, ".num_experts"), moe.num_experts());
  // Workers read the coefficients as floats: finite and, unless 0, positive there too.
  constexpr double kFloatMax = std::numeric_limits<float>::max();
  checks.FloatUpTo(absl::StrCat(moe_path, ".aux_loss_coeff"), moe.aux_loss_coeff(), kFloatMax);
  checks.FloatUpTo(absl::StrCat(moe_path, ".z_loss_coeff"), moe.z_loss_coeff(), kFloatMax);
  if (!(moe.capacity_factor() >= 0 && moe.capacity_factor() <= 1e6)) {
    checks.Add(absl::StrCat(moe_path, ".capacity_factor"),
               absl::StrCat("must be in [0, 1e6] (0: dropless), got ", moe.capacity_factor()));
  }
  checks.NonNegative(absl::StrCat(moe_path, ".num_shared_experts"), moe.num_shared_experts());
  checks.NonNegative(absl::StrCat(moe_path, ".ffn_hidden_size"), moe.ffn_hidden_size());
  checks.NonNegative(absl::StrCat(moe_path, ".moe_layer_freq"), moe.moe_layer_freq());
  if (moe.num_shared_experts() > 0) {
    checks.Positive(absl::StrCat(moe_path, ".shared_expert_ffn_hidden_size"),
                    moe.shared_expert_ffn_hidden_size());
  } else {
    checks.NonNegative(absl::StrCat(moe_path, ".shared_expert_ffn_hidden_size"),
                       moe.shared_expert_ffn_hidden_size());
  }
  if (moe.num_experts() > 0) {
    CheckRouter(moe, moe_path, checks);
    if (moe.per_sequence_aux_loss() && (tp > 1 || SizeOrOne(m.parallelism().cp()) > 1)) {
      checks.Add(absl::StrCat(moe_path, ".per_sequence_aux_loss"),
                 absl::StrCat("needs tp and cp of 1 (a sequence's tokens would straddle the ranks' "
                              "rows), got tp ",
                              tp, " and cp ", SizeOrOne(m.parallelism().cp()),
                              "; use the per-micro-batch load-balancing loss"));
    }
    // Each expert's width splits over expt_tp, the shared experts' over tp (a dense MLP's).
    const int etp = SizeOrOne(m.parallelism().etp());
    const int64_t expert_width = moe.ffn_hidden_size() > 0
                                     ? moe.ffn_hidden_size()
                                     : m.language().transformer().ffn_hidden_size();
    if (etp > 0 && expert_width > 0 && expert_width % etp != 0) {
      checks.Add(absl::StrCat(module, ".parallelism.etp"),
                 absl::StrCat("etp=", etp, " does not divide the experts' width ", expert_width,
                              " (moe.ffn_hidden_size, or the transformer's ffn_hidden_size when it "
                              "is 0; each expert-tensor-parallel rank holds a slice)"));
    }
    // (Shared experts without a width of their own are refused above.)
    const int shared_width = moe.shared_expert_ffn_hidden_size();
    if (tp > 0 && shared_width > 0 && shared_width % tp != 0) {
      checks.Add(absl::StrCat(moe_path, ".shared_expert_ffn_hidden_size"),
                 absl::StrCat("tp=", tp, " does not divide the shared experts' width ",
                              shared_width, " (each tensor-parallel rank holds a slice)"));
    }
    if (ep > 0 && moe.num_experts() % ep != 0) {
      checks.Add(ep_path,
                 absl::StrCat("ep=", ep, " does not divide moe.num_experts ", moe.num_experts(),
                              " (each expert-parallel rank holds ", "whole experts)"));
    }
  } else if (moe.num_experts() == 0) {
    if (ep != 1) {
      checks.Add(ep_path, absl::StrCat("ep=", ep,
                                       " needs routed experts, but moe.num_experts is 0 (every "
                                       "layer is dense)"));
    }
    // Without routed experts every MoE setting would be ignored (a dense model trained instead of
    // the one asked for): each one set is named.
    std::vector<const google::protobuf::FieldDescriptor*> set;
    moe.GetReflection()->ListFields(moe, &set);
    for (const google::protobuf::FieldDescriptor* field : set) {
      checks.Add(absl::StrCat(moe_path, ".", field->name()),
                 "is set, but moe.num_experts is 0 (every layer is dense): it would be ignored; "
                 "set num_experts, or leave the MoE settings out");
    }
  }
}

}  // namespace mimo::coordinator
