// Moves a MoE layer's routed (token, choice) pairs to the experts that take them and the
// experts' outputs back, weighted by the router: within the rank when it holds every expert, or
// across the expert-parallel group with all-to-all (Megatron's MoEAlltoAllTokenDispatcher);
// forward and backward.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "kernels/tensor.h"
#include "mimo/block.h"
#include "mimo/expert_rows.h"

namespace mimo {

struct MoeDispatcherOptions {
  int64_t experts = 0;  // E: routed experts over the whole EP group; a multiple of its size.
  int64_t top_k = 0;    // Choices per token, >= 1.
  int64_t hidden = 0;   // C, >= 1.
  // Each local expert's rows are padded with zero rows to a multiple of this (grouped GEMMs
  // want 8 or 16); in [1, 1024].
  int64_t align = 1;
  // Expert view [ep] (not owned); null or one member: every expert is local and nothing moves
  // between ranks. Rank r holds experts [r * E / ep, (r + 1) * E / ep).
  comm::Communicator* ep = nullptr;
  // With ep > 1 the group's members hold different numbers of tokens; each pads its routing
  // metadata and hidden states to the group's largest count rounded up to a multiple of this,
  // so every member dispatches from buffers of one shape, and trims the padding after the
  // combine. >= 1.
  int64_t pad_multiple = 64;
  // Expert view [expt_tp] (not owned); null or one member: each rank computes its experts'
  // whole width. Otherwise its members hold parts of the same experts' width: each gets every
  // member's rows (all-gather) and returns partial outputs, summed back to their owners
  // (reduce-scatter). A communicator other than `ep`.
  comm::Communicator* expt_tp = nullptr;
  // Whether the experts' row offsets are copied to the host (a synchronization) where the
  // dispatch makes them on the device (no EP, no expt_tp): false for experts that read them on
  // the device, and for a layer captured in a CUDA graph.
  bool host_offsets = true;
};

// What a dispatch keeps for its combine and for the backward. Rows of the "send" buffer are the
// pairs grouped by global expert (align 1 with EP, `align` without); rows of the "expert" buffer
// are the local experts' rows, expert-contiguous and padded.
struct MoeDispatchState {
  int64_t tokens = 0;           // T: the caller's tokens.
  int64_t padded = 0;           // T_pad >= T: the tokens dispatched (T without EP).
  kernels::Tensor probs;        // (T_pad, k) fp32 combine weights, zeros for padding tokens.
  kernels::Tensor rows;         // (T_pad, k) int32: each pair's send row, -1 for none.
  kernels::Tensor pair_of_row;  // (S,) int32: each send row's pair, -1 for none.
  kernels::Tensor combined;     // (S, C), or (member_rows, C) with expt_tp alone: the experts'
                                // outputs as the combine read them.
  // With EP: rows sent to and received from each member, and the received rows' places.
  std::vector<size_t> send_rows, recv_rows;  // (ep,)
  kernels::Tensor received_of_expert_row;    // (R,) int32: received row, -1 for padding.
  kernels::Tensor expert_row_of_received;  // (sum recv_rows,) int32: its size is the rows received
  // With expt_tp: this member's rows, the group's largest count (every member's block in the
  // gathered buffer), and the gathered rows' places among the experts' rows.
  int64_t own_rows = 0, member_rows = 0;
  kernels::Tensor gathered_of_expert_row;  // (R,) int32
  kernels::Tensor expert_row_of_gathered;  // (expt_tp * member_rows,) int32, -1 for padding
};

struct MoeDispatched {
  kernels::Tensor rows;      // (R, C): the local experts' input rows.
  ExpertRowOffsets offsets;  // Each local expert's rows, the last ones zero padding; on the
                             // host too unless host_offsets is false (without EP and expt_tp).
  MoeDispatchState state;
};

struct MoeCombineGrads {
  kernels::Tensor dh;      // (R, C): the experts' output gradients.
  kernels::Tensor dprobs;  // (T, k) fp32: the combine weights' gradients.
};

class MoeTokenDispatcher {
 public:
  // InvalidArgument naming the field at fault.
  static absl::StatusOr<MoeTokenDispatcher> Create(const MoeDispatcherOptions& options);

  int64_t local_experts() const { return local_experts_; }
  // The global index of local expert 0.
  int64_t first_expert() const { return first_expert_; }

  // x (T, C) in the compute dtype, indices (T, k) int32 global experts (-1: the pair goes
  // nowhere), probs (T, k) fp32. With EP every member of the group must call it (and every
  // later step below) for the same layer in the same order; with EP or expt_tp, or with
  // host_offsets, it synchronizes the ops' stream with the host to learn the row counts.
  // Otherwise none of the four steps synchronizes: the experts' buffer has the rows of any
  // routing (kernels::MoePermuteCapacity), padded on the device.
  absl::StatusOr<MoeDispatched> Dispatch(const StepContext& ctx, const kernels::Tensor& x,
                                         const kernels::Tensor& indices,
                                         const kernels::Tensor& probs) const;
  // h (R, C): the experts' outputs for the dispatched rows. Returns y (T, C) with
  // y[t] = sum over j of probs[t, j] * h[the row of (t, j)]; keeps what the backward needs.
  absl::StatusOr<kernels::Tensor> Combine(const StepContext& ctx, MoeDispatchState& state,
                                          const kernels::Tensor& h) const;
  // dy (T, C) -> the gradients of h and probs.
  absl::StatusOr<MoeCombineGrads> CombineBackward(const StepContext& ctx, MoeDispatchState& state,
                                                  const kernels::Tensor& dy) const;
  // d(rows) (R, C) -> dx (T, C).
  absl::StatusOr<kernels::Tensor> DispatchBackward(const StepContext& ctx,
                                                   const MoeDispatchState& state,
                                                   const kernels::Tensor& drows) const;

 private:
  explicit MoeTokenDispatcher(const MoeDispatcherOptions& options);
  bool expert_parallel() const { return ep_size_ > 1; }
  bool expert_tensor_parallel() const { return etp_size_ > 1; }

  // The four steps over the EP group alone (rows of this expt_tp member only).
  absl::StatusOr<MoeDispatched> DispatchOverEp(const StepContext& ctx, const kernels::Tensor& x,
                                               const kernels::Tensor& indices,
                                               const kernels::Tensor& probs) const;
  absl::StatusOr<kernels::Tensor> CombineOverEp(const StepContext& ctx, MoeDispatchState& state,
                                                const kernels::Tensor& h) const;
  absl::StatusOr<MoeCombineGrads> CombineBackwardOverEp(const StepContext& ctx,
                                                        MoeDispatchState& state,
                                                        const kernels::Tensor& dy) const;
  absl::StatusOr<kernels::Tensor> DispatchBackwardOverEp(const StepContext& ctx,
                                                         const MoeDispatchState& state,
                                                         const kernels::Tensor& drows) const;
  // This member's rows (own_rows of them) -> every member's rows regrouped by expert.
  absl::StatusOr<kernels::Tensor> GatherOverExptTp(const StepContext& ctx,
                                                   const MoeDispatchState& state,
                                                   const kernels::Tensor& own) const;
  // Gathers every expt_tp member's rows of the local experts after the dispatch over EP and
  // regroups them by expert (offsets on the host only).
  absl::Status GatherForExptTp(const StepContext& ctx, MoeDispatched& out) const;
  // Every member's rows (partial sums) -> this member's rows summed over the group
  // (member_rows of them, the first own_rows meaningful).
  absl::StatusOr<kernels::Tensor> ScatterOverExptTp(const StepContext& ctx,
                                                    const MoeDispatchState& state,
                                                    const kernels::Tensor& rows) const;

  MoeDispatcherOptions options_;
  int ep_size_ = 1, ep_rank_ = 0, etp_size_ = 1;
  int64_t local_experts_ = 0, first_expert_ = 0;
};

}  // namespace mimo
