// The job spec's MoE settings of the language module: what workers' MoE layers accept, checked
// at submit time.
#pragma once

#include <string>

#include "coordinator/field_checks.h"
#include "mimo/v1/job_spec.pb.h"

namespace mimo::coordinator {

// Checks `m`'s language.moe (module `m` at spec path `module`, its tp of `tp`): sizes and
// coefficients, the router's limits (those of kernels::CheckRouterConfig: num_experts <= 1024,
// top_k in [1, min(num_experts, 32)], group-limited routing's rules), the per-sequence loss only
// with tp and cp of 1, and ep dividing the routed experts (ep 1 without them).
void CheckMoe(const v1::Module& m, const std::string& module, int tp, FieldChecks& checks);

}  // namespace mimo::coordinator
