// The point-to-point links between encoder ranks and language ranks (non-colocated modules).
#pragma once

#include <string>
#include <vector>

#include "parallel/rank_plan.h"

namespace mimo::parallel {

// One link: an encoder's embeddings travel from `encoder_rank` to `language_rank`, and their
// gradients back. Each data-parallel replica of a module has one leader that holds the link ends:
// on an encoder the rank at tp 0, cp 0 of its last pipeline stage (where the embeddings are
// complete), on the language module the rank at tp 0, cp 0 of its first stage (which shares
// them with its tensor- and context-parallel peers).
//
// Replicas pair by sample, like Megatron-Core's BridgeCommunicator: with encoder dp E and language
// dp L (one divides the other, as ResolveLayout requires), when E >= L encoder replica e feeds
// language replica e / (E / L) (fan-in), and when E < L it feeds replicas e*(L/E) ..
// (e+1)*(L/E)-1 (fan-out). Samples are split into contiguous blocks per replica on both sides,
// so every sample's embedding reaches exactly one language replica.
struct BridgeLink {
  int encoder = 0;  // Index of the encoder in RankPlan::modules().
  int encoder_rank = 0;
  int language_rank = 0;

  bool operator==(const BridgeLink&) const = default;
};

// The group kind of a link, unique per link: "link_<encoder name>_<encoder rank>_<language rank>".
std::string BridgeLinkKind(const RankPlan& plan, const BridgeLink& link);

// Every link of the plan, ordered by (encoder index, encoder rank, language rank): the global order
// in which ranks connect them. O(sum of dp sizes).
std::vector<BridgeLink> BridgeLinks(const RankPlan& plan);

// The links `rank` holds an end of, in the same order; empty for ranks that lead no replica at the
// module boundary. O(links of the rank + modules).
std::vector<BridgeLink> BridgeLinksOf(const RankPlan& plan, int rank);

}  // namespace mimo::parallel
