// Tests GridView's rank layout, its HyperCommGrid group enumeration, and its input validation.
#include "parallel/grid_view.h"

#include <algorithm>
#include <climits>
#include <functional>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mimo::parallel {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

// HyperCommGrid's docstring example: 120 ranks as tp=2, cp=3, pp=4, dp=5 (strides 1, 2, 6, 24).
GridView ExampleView(int rank_offset = 0) {
  return GridView::Create({2, 3, 4, 5}, {"tp", "cp", "pp", "dp"}, rank_offset).value();
}

GridView::DimMask MaskOf(const GridView& view, std::vector<absl::string_view> names) {
  return view.Mask(names).value();
}

std::vector<int> Members(const GridView& view, int group, GridView::DimMask mask) {
  std::vector<int> out;
  view.AppendGroupMembers(group, mask, &out);
  return out;
}

// The ranks lo, lo + step, ... below hi.
std::vector<int> Stride(int lo, int hi, int step) {
  std::vector<int> out;
  for (int r = lo; r < hi; r += step) out.push_back(r);
  return out;
}

TEST(GridViewTest, DescribesItsShape) {
  const GridView view = ExampleView(7);
  EXPECT_EQ(view.ndims(), 4);
  EXPECT_EQ(view.size(), 120);
  EXPECT_EQ(view.rank_offset(), 7);
  EXPECT_THAT(view.shape(), ElementsAre(2, 3, 4, 5));
  EXPECT_THAT(view.dim_names(), ElementsAre("tp", "cp", "pp", "dp"));
  EXPECT_EQ(view.DimIndex("tp"), 0);
  EXPECT_EQ(view.DimIndex("pp"), 2);
  EXPECT_EQ(view.DimIndex("dp"), 3);
  EXPECT_EQ(view.DimIndex("ep"), -1);
  EXPECT_EQ(view.DimIndex(""), -1);
  EXPECT_FALSE(view.Contains(6));
  EXPECT_TRUE(view.Contains(7));
  EXPECT_TRUE(view.Contains(126));
  EXPECT_FALSE(view.Contains(127));
}

TEST(GridViewTest, FirstDimVariesFastest) {
  const GridView view = ExampleView();
  // 77 = 1*1 + 2*2 + 0*6 + 3*24.
  EXPECT_EQ(view.Coordinate(77, 0), 1);
  EXPECT_EQ(view.Coordinate(77, 1), 2);
  EXPECT_EQ(view.Coordinate(77, 2), 0);
  EXPECT_EQ(view.Coordinate(77, 3), 3);
  EXPECT_EQ(view.RankAt({1, 2, 0, 3}), 77);
  EXPECT_EQ(view.RankAt({0, 0, 0, 0}), 0);
  EXPECT_EQ(view.RankAt({1, 0, 0, 0}), 1);
  EXPECT_EQ(view.RankAt({0, 1, 0, 0}), 2);
  EXPECT_EQ(view.RankAt({0, 0, 1, 0}), 6);
  EXPECT_EQ(view.RankAt({0, 0, 0, 1}), 24);
  EXPECT_EQ(view.RankAt({1, 2, 3, 4}), 119);
}

TEST(GridViewTest, TpGroupsAreConsecutivePairs) {
  const GridView view = ExampleView();
  const GridView::DimMask tp = MaskOf(view, {"tp"});
  EXPECT_EQ(view.GroupSize(tp), 2);
  EXPECT_EQ(view.NumGroups(tp), 60);
  const std::vector<std::vector<int>> groups = view.RankEnum(tp);
  ASSERT_EQ(groups.size(), 60u);
  EXPECT_THAT(groups[0], ElementsAre(0, 1));
  EXPECT_THAT(groups[1], ElementsAre(2, 3));
  EXPECT_THAT(groups[59], ElementsAre(118, 119));
}

TEST(GridViewTest, CpGroupsStrideOverTp) {
  const GridView view = ExampleView();
  const std::vector<std::vector<int>> groups = view.RankEnum(MaskOf(view, {"cp"}));
  ASSERT_EQ(groups.size(), 40u);
  EXPECT_THAT(groups[0], ElementsAre(0, 2, 4));
  EXPECT_THAT(groups[1], ElementsAre(1, 3, 5));
  EXPECT_THAT(groups[2], ElementsAre(6, 8, 10));
  EXPECT_THAT(groups[3], ElementsAre(7, 9, 11));
  EXPECT_THAT(groups[39], ElementsAre(115, 117, 119));
}

TEST(GridViewTest, PpAndDpGroups) {
  const GridView view = ExampleView();
  const std::vector<std::vector<int>> pp = view.RankEnum(MaskOf(view, {"pp"}));
  ASSERT_EQ(pp.size(), 30u);
  EXPECT_THAT(pp[0], ElementsAre(0, 6, 12, 18));
  EXPECT_THAT(pp[1], ElementsAre(1, 7, 13, 19));
  EXPECT_THAT(pp[5], ElementsAre(5, 11, 17, 23));
  EXPECT_THAT(pp[6], ElementsAre(24, 30, 36, 42));
  const std::vector<std::vector<int>> dp = view.RankEnum(MaskOf(view, {"dp"}));
  ASSERT_EQ(dp.size(), 24u);
  EXPECT_THAT(dp[0], ElementsAre(0, 24, 48, 72, 96));
  EXPECT_THAT(dp[1], ElementsAre(1, 25, 49, 73, 97));
  EXPECT_THAT(dp[23], ElementsAre(23, 47, 71, 95, 119));
}

TEST(GridViewTest, TwoDimGroupsListEarlierDimFastest) {
  const GridView view = ExampleView();
  // tp varies fastest inside a group; groups follow the lowest rank (cp, then pp, outside).
  const std::vector<std::vector<int>> tp_dp = view.RankEnum(MaskOf(view, {"tp", "dp"}));
  ASSERT_EQ(tp_dp.size(), 12u);
  EXPECT_THAT(tp_dp[0], ElementsAre(0, 1, 24, 25, 48, 49, 72, 73, 96, 97));
  EXPECT_THAT(tp_dp[1], ElementsAre(2, 3, 26, 27, 50, 51, 74, 75, 98, 99));
  EXPECT_THAT(tp_dp[3], ElementsAre(6, 7, 30, 31, 54, 55, 78, 79, 102, 103));
  EXPECT_THAT(tp_dp[11], ElementsAre(22, 23, 46, 47, 70, 71, 94, 95, 118, 119));
  const std::vector<std::vector<int>> cp_pp = view.RankEnum(MaskOf(view, {"cp", "pp"}));
  ASSERT_EQ(cp_pp.size(), 10u);
  EXPECT_THAT(cp_pp[0], ElementsAreArray(Stride(0, 24, 2)));
  EXPECT_THAT(cp_pp[1], ElementsAreArray(Stride(1, 24, 2)));
  EXPECT_THAT(cp_pp[2], ElementsAreArray(Stride(24, 48, 2)));
  EXPECT_THAT(cp_pp[9], ElementsAreArray(Stride(97, 120, 2)));
}

TEST(GridViewTest, RequestOrderDoesNotMatter) {
  const GridView view = ExampleView();
  EXPECT_EQ(MaskOf(view, {"tp"}), 0b0001u);
  EXPECT_EQ(MaskOf(view, {"dp", "tp"}), 0b1001u);
  EXPECT_EQ(MaskOf(view, {"dp", "tp"}), MaskOf(view, {"tp", "dp"}));
  EXPECT_EQ(MaskOf(view, {"pp", "dp", "cp"}), MaskOf(view, {"cp", "pp", "dp"}));
  EXPECT_EQ(view.RankEnum(MaskOf(view, {"dp", "tp"})), view.RankEnum(MaskOf(view, {"tp", "dp"})));
  EXPECT_THAT(view.RankEnum(MaskOf(view, {"pp", "cp"}))[0], ElementsAreArray(Stride(0, 24, 2)));
}

TEST(GridViewTest, AllDimsAndNoDims) {
  const GridView view = ExampleView();
  const std::vector<std::vector<int>> all = view.RankEnum(MaskOf(view, {"dp", "pp", "cp", "tp"}));
  ASSERT_EQ(all.size(), 1u);
  EXPECT_THAT(all[0], ElementsAreArray(Stride(0, 120, 1)));
  const GridView::DimMask none = MaskOf(view, {});
  EXPECT_EQ(none, 0u);
  EXPECT_EQ(view.GroupSize(none), 1);
  const std::vector<std::vector<int>> singles = view.RankEnum(none);
  ASSERT_EQ(singles.size(), 120u);
  for (int r = 0; r < 120; ++r) EXPECT_THAT(singles[r], ElementsAre(r));
}

TEST(GridViewTest, GroupIndexAndMembersAgree) {
  const GridView view = ExampleView();
  const GridView::DimMask cp = MaskOf(view, {"cp"});
  EXPECT_EQ(view.GroupIndex(77, cp), 25);
  EXPECT_THAT(Members(view, 25, cp), ElementsAre(73, 75, 77));
  EXPECT_EQ(view.GroupIndex(77, MaskOf(view, {"tp"})), 38);
  const GridView::DimMask tp_dp = MaskOf(view, {"tp", "dp"});
  EXPECT_EQ(view.GroupIndex(77, tp_dp), 2);
  EXPECT_THAT(Members(view, 2, tp_dp), ElementsAre(4, 5, 28, 29, 52, 53, 76, 77, 100, 101));
}

TEST(GridViewTest, AppendGroupMembersAppends) {
  const GridView view = ExampleView();
  std::vector<int> out = {-1};
  view.AppendGroupMembers(1, MaskOf(view, {"tp"}), &out);
  view.AppendGroupMembers(0, MaskOf(view, {"pp"}), &out);
  EXPECT_THAT(out, ElementsAre(-1, 2, 3, 0, 6, 12, 18));
}

TEST(GridViewTest, RankOffsetShiftsEverything) {
  const GridView base = ExampleView();
  const GridView view = ExampleView(1000);
  EXPECT_THAT(view.RankEnum(MaskOf(view, {"tp"}))[0], ElementsAre(1000, 1001));
  EXPECT_THAT(view.RankEnum(MaskOf(view, {"cp"}))[1], ElementsAre(1001, 1003, 1005));
  EXPECT_THAT(view.RankEnum(MaskOf(view, {"dp"}))[0], ElementsAre(1000, 1024, 1048, 1072, 1096));
  for (int d = 0; d < 4; ++d) EXPECT_EQ(view.Coordinate(1077, d), base.Coordinate(77, d));
  EXPECT_EQ(view.RankAt({1, 2, 0, 3}), 1077);
  EXPECT_EQ(view.GroupIndex(1077, MaskOf(view, {"cp"})), 25);
  EXPECT_THAT(Members(view, 25, MaskOf(view, {"cp"})), ElementsAre(1073, 1075, 1077));
}

void ExpectInvalid(std::vector<int> shape, std::vector<std::string> names, int rank_offset) {
  const absl::StatusOr<GridView> view = GridView::Create(shape, names, rank_offset);
  EXPECT_EQ(view.status().code(), absl::StatusCode::kInvalidArgument)
      << "shape [" << absl::StrJoin(shape, ",") << "] names [" << absl::StrJoin(names, ",")
      << "] offset " << rank_offset;
}

TEST(GridViewTest, CreateRejectsBadInput) {
  ExpectInvalid({2, 3}, {"tp"}, 0);
  ExpectInvalid({2}, {"tp", "cp"}, 0);
  ExpectInvalid({}, {}, 0);
  ExpectInvalid(std::vector<int>(17, 1), std::vector<std::string>(17, "x"), 0);
  ExpectInvalid({2, 0}, {"tp", "cp"}, 0);
  ExpectInvalid({-2, 2}, {"tp", "cp"}, 0);
  ExpectInvalid({2, 2}, {"tp", "tp"}, 0);
  ExpectInvalid({2, 2, 2}, {"tp", "cp", "tp"}, 0);
  ExpectInvalid({2, 2}, {"tp", ""}, 0);
  ExpectInvalid({2, 2}, {"tp", "cp"}, -1);
  ExpectInvalid({65536, 65536}, {"a", "b"}, 0);
  ExpectInvalid({1 << 30, 2}, {"a", "b"}, 0);
  ExpectInvalid({2}, {"a"}, INT_MAX - 1);
}

TEST(GridViewTest, CreateAcceptsEdgeSizes) {
  std::vector<std::string> names;
  for (int i = 0; i < 16; ++i) names.push_back(absl::StrCat("d", i));
  const absl::StatusOr<GridView> sixteen = GridView::Create(std::vector<int>(16, 1), names, 3);
  ASSERT_TRUE(sixteen.ok()) << sixteen.status();
  EXPECT_EQ(sixteen->size(), 1);
  EXPECT_EQ(sixteen->ndims(), 16);
  const absl::StatusOr<GridView> top = GridView::Create({1}, {"a"}, INT_MAX - 1);
  ASSERT_TRUE(top.ok()) << top.status();
  EXPECT_TRUE(top->Contains(INT_MAX - 1));
}

TEST(GridViewTest, MaskRejectsUnknownAndRepeatedDims) {
  const GridView view = ExampleView();
  EXPECT_EQ(view.Mask({"ep"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(view.Mask({"tp", "ep"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(view.Mask({""}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(view.Mask({"tp", "tp"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(view.Mask({"tp", "cp", "tp"}).status().code(), absl::StatusCode::kInvalidArgument);
}

// What a view should enumerate, computed by brute force with no strides.
struct Enumeration {
  std::vector<std::vector<int>> coords;  // Per rank - offset, one coordinate per dim.
  std::vector<std::vector<int>> groups;  // Global ranks, in order.
  std::vector<int> group_of;             // Per rank - offset.
};

// Walks the grid with a counter (first dim fastest), buckets ranks by their coordinates outside
// `mask`, orders buckets by lowest rank, and orders members by their masked coordinates compared
// from the last masked dim to the first, so that the earliest dim varies fastest.
Enumeration BruteForce(const std::vector<int>& shape, int offset, GridView::DimMask mask) {
  const int ndims = static_cast<int>(shape.size());
  const int size = std::accumulate(shape.begin(), shape.end(), 1, std::multiplies<int>());
  const auto masked = [mask](int dim) { return (mask >> dim & 1) != 0; };
  Enumeration e;
  std::vector<int> counter(ndims, 0);
  std::map<std::vector<int>, std::vector<int>> buckets;
  for (int i = 0; i < size; ++i) {
    e.coords.push_back(counter);
    std::vector<int> key;
    for (int d = 0; d < ndims; ++d) {
      if (!masked(d)) key.push_back(counter[d]);
    }
    buckets[key].push_back(offset + i);
    for (int d = 0; d < ndims && ++counter[d] == shape[d]; ++d) counter[d] = 0;
  }
  for (auto& [key, ranks] : buckets) e.groups.push_back(ranks);
  std::sort(e.groups.begin(), e.groups.end(), [](const auto& a, const auto& b) {
    return *std::min_element(a.begin(), a.end()) < *std::min_element(b.begin(), b.end());
  });
  for (std::vector<int>& group : e.groups) {
    std::sort(group.begin(), group.end(), [&](int a, int b) {
      for (int d = ndims - 1; d >= 0; --d) {
        const int ca = e.coords[a - offset][d], cb = e.coords[b - offset][d];
        if (masked(d) && ca != cb) return ca < cb;
      }
      return false;
    });
  }
  e.group_of.assign(size, -1);
  for (size_t g = 0; g < e.groups.size(); ++g) {
    for (int r : e.groups[g]) e.group_of[r - offset] = static_cast<int>(g);
  }
  return e;
}

void ExpectMatchesBruteForce(const std::vector<int>& shape, int offset) {
  const int ndims = static_cast<int>(shape.size());
  std::vector<std::string> names;
  for (int d = 0; d < ndims; ++d) names.push_back(absl::StrCat("d", d));
  const GridView view = GridView::Create(shape, names, offset).value();
  for (GridView::DimMask mask = 0; mask < (GridView::DimMask{1} << ndims); ++mask) {
    SCOPED_TRACE(
        absl::StrCat("shape [", absl::StrJoin(shape, ","), "] offset ", offset, " mask ", mask));
    const Enumeration want = BruteForce(shape, offset, mask);
    // Name the dims last to first: the request order must not matter.
    std::vector<absl::string_view> dims;
    for (int d = ndims - 1; d >= 0; --d) {
      if (mask >> d & 1) dims.push_back(names[d]);
    }
    ASSERT_EQ(view.Mask(dims).value(), mask);
    ASSERT_EQ(view.GroupSize(mask), static_cast<int>(want.groups[0].size()));
    ASSERT_EQ(view.NumGroups(mask), static_cast<int>(want.groups.size()));
    ASSERT_EQ(view.RankEnum(mask), want.groups);
    for (size_t g = 0; g < want.groups.size(); ++g) {
      std::vector<int> members = {-1};
      view.AppendGroupMembers(static_cast<int>(g), mask, &members);
      ASSERT_EQ(members[0], -1);
      ASSERT_EQ(std::vector<int>(members.begin() + 1, members.end()), want.groups[g]);
    }
    for (int i = 0; i < view.size(); ++i) {
      const int rank = offset + i;
      ASSERT_EQ(view.GroupIndex(rank, mask), want.group_of[i]) << "rank " << rank;
      ASSERT_EQ(view.RankAt(want.coords[i]), rank);
      for (int d = 0; d < ndims; ++d) {
        ASSERT_EQ(view.Coordinate(rank, d), want.coords[i][d]) << "rank " << rank << " dim " << d;
      }
    }
  }
}

TEST(GridViewTest, MatchesBruteForceOnSmallShapes) {
  for (int ndims = 1; ndims <= 4; ++ndims) {
    std::vector<int> shape(ndims, 1);
    // Every shape with sizes in {1, 2, 3}, as a base-3 counter.
    while (true) {
      ExpectMatchesBruteForce(shape, 0);
      ExpectMatchesBruteForce(shape, 5);
      if (HasFatalFailure()) return;
      int d = 0;
      while (d < ndims && shape[d] == 3) shape[d++] = 1;
      if (d == ndims) break;
      ++shape[d];
    }
  }
}

TEST(GridViewTest, MatchesBruteForceOnLargerShapes) {
  const std::vector<std::vector<int>> shapes = {
      {2, 3, 4, 5}, {4, 1, 6}, {8, 2, 1, 3}, {5, 7}, {16}, {2, 2, 3, 1, 2}, {3, 1, 2, 1, 2, 2}};
  for (const std::vector<int>& shape : shapes) {
    ExpectMatchesBruteForce(shape, 11);
    if (HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace mimo::parallel
