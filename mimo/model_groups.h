// The communicators a model's blocks run their collectives on, taken from the rank's process
// groups and handed to every block at build time (never read from globals).
#pragma once

#include "comm/communicator.h"
#include "comm/process_groups.h"

namespace mimo {

// Not owned: the rank's comm::ProcessGroups outlive the model. A null member stands for a group
// of this rank alone (nothing to exchange). Buffers handed to them come from the model's ops, so
// the communicators must work where the ops do: NCCL with CUDA ops, Gloo with CPU ops.
struct ModelGroups {
  // Expert view [ep]: the ranks the routed experts are spread over; tokens are dispatched to
  // their experts and combined back across it.
  comm::Communicator* ep = nullptr;
  // Expert view [expt_tp]: the ranks that split each local expert's width.
  comm::Communicator* expt_tp = nullptr;
  // Dense view [tp]: the ranks that split each dense layer's width (Megatron's tensor
  // parallelism, always with sequence parallelism: between the layers each member holds its
  // block of the rows).
  comm::Communicator* tp = nullptr;
  // Dense view [cp]: the ranks that split each sequence (context parallelism; the
  // StepContext's PackedSequences say which rows this rank holds). Self-attention passes the
  // keys and values around it; every other block works on the rank's rows alone.
  comm::Communicator* cp = nullptr;
  // Dense view [tp, cp]: the ranks whose rows make up one micro-batch together (the MoE layers
  // sum their expert counts over it for the load-balancing loss). Used when cp > 1.
  comm::Communicator* tp_cp = nullptr;

  // The group's size (1 when null) and this rank's index in it (0 when null).
  static int Size(const comm::Communicator* group) { return group == nullptr ? 1 : group->size(); }
  static int Rank(const comm::Communicator* group) { return group == nullptr ? 0 : group->rank(); }
};

// The model's groups from the rank's process groups (kinds named as parallel::GroupKindName).
inline ModelGroups ModelGroupsOf(const comm::ProcessGroups& groups) {
  return {.ep = groups.Get("ep"),
          .expt_tp = groups.Get("expt_tp"),
          .tp = groups.Get("tp"),
          .cp = groups.Get("cp"),
          .tp_cp = groups.Get("tp_cp")};
}

}  // namespace mimo
