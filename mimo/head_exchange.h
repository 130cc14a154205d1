// All-to-all context parallelism (DeepSpeed-Ulysses; Transformer Engine's cp_comm_type "a2a"),
// the encoders' kind: the members of a context-parallel group hold equal blocks of a micro-batch's
// rows, and for the attention trade them for the whole rows of a share of the heads (and back).
// ExchangeSlots is that trade, InterleaveSlots puts the returning head shares side by side.
#pragma once

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace mimo {

// (n, R, E) on every member of `group` (n members), slot p meant for member p -> (n, R, E) whose
// slot p is what member p sent this member. Rows -> heads: slot p holds this member's rows of
// head share p, and the result member p's rows of this member's heads, i.e. the whole
// micro-batch's rows (n R, E) in order. Heads -> rows: the reverse, the same call. Contiguous
// bf16 or f32 tensors of the ops' device. Collective over `group`.
absl::StatusOr<kernels::Tensor> ExchangeSlots(kernels::Ops& ops, comm::Communicator& group,
                                              const kernels::Tensor& slots);

// (n, R, E) -> (R, n E), row r holding slot 0's row r, then slot 1's, ... (a member's rows with
// every head share side by side, as the output projection reads them); `inverse`: (R, n E) ->
// (n, R, E). A row gather through the embedding op.
absl::StatusOr<kernels::Tensor> InterleaveSlots(kernels::Ops& ops, const kernels::Tensor& x, int n,
                                                bool inverse);

}  // namespace mimo
