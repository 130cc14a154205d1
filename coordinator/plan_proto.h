// A rank plan (parallel/rank_plan.h) as the protos the service and the workers read.
#pragma once

#include "google/protobuf/repeated_ptr_field.h"
#include "mimo/v1/job.pb.h"
#include "parallel/rank_plan.h"

namespace mimo::coordinator {

// Whether a rank's protos list the members of its process groups. The members of all ranks
// together grow with the square of the world size (every rank lists its whole module in
// "tp_cp_dp_pp"), so whole-plan answers leave them out and each worker gets only its own.
enum class GroupMembers { kInclude, kOmit };

// Every module's resolved sizes (expt_dp only on the language module, 0 on encoders).
void ModulesToProto(const parallel::RankPlan& plan,
                    google::protobuf::RepeatedPtrField<v1::ModulePlan>* modules);

// The plan, or one rank of it, as protos: the modules (ModulesToProto) and per rank its
// coordinates, seeds and, with GroupMembers::kInclude, its groups keyed by
// parallel::GroupKindName ("embd"/"pos_embd" present but empty off their stages; the expert
// kinds on language ranks only).
v1::RankPlan RankPlanToProto(const parallel::RankPlan& plan,
                             GroupMembers groups = GroupMembers::kInclude);
v1::RankAssignment RankToProto(const parallel::RankPlan& plan, int rank,
                               GroupMembers groups = GroupMembers::kInclude);

}  // namespace mimo::coordinator
