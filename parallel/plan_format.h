// Renders a RankPlan for people (a table) and for programs (JSON).
#pragma once

#include <ostream>

#include "nlohmann/json.hpp"
#include "parallel/rank_plan.h"

namespace mimo::parallel {

// A summary line per module, then one row per rank: module, dense coordinates, expert
// coordinates ("-" on encoders) and seeds.
void WritePlanTable(const RankPlan& plan, std::ostream& out);

// {"rank": r, "module": "...", "dense": {...}, "expert": {...} | null,
//  "seeds": {"base", "tensor_parallel", "data_parallel", "expert" | null}, "groups": {...},
//  "links": [{"kind", "encoder", "encoder_rank", "language_rank"}, ...]}
// Groups hold global ranks in enumeration order; "embd"/"pos_embd" are [] on ranks outside them;
// the expert kinds appear on language ranks only. "links" (bridge.h) is [] on ranks that hold none.
nlohmann::ordered_json RankToJson(const RankPlan& plan, int rank);

// {"world_size": N, "ranks": [RankToJson(0), ...]}, written one rank at a time so memory stays
// bounded by one rank's groups.
void WritePlanJson(const RankPlan& plan, std::ostream& out);

}  // namespace mimo::parallel
