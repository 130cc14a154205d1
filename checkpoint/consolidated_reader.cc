// ConsolidatedReader: slices gathered per tensor from the files' "shards" and "pieces"
// metadata, checked to tile the full tensor, and scattered into a region of it on ReadRegion.
#include "checkpoint/consolidated_reader.h"

#include <algorithm>
#include <filesystem>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace mimo::checkpoint {
namespace {

using Ranges = std::vector<std::pair<int64_t, int64_t>>;

// The optimizer tensors named after their parameter.
constexpr const char* kStateSuffixes[] = {".master", ".exp_avg_sq", ".exp_avg"};

absl::Status Bad(const std::string& path, const std::string& name, const std::string& what) {
  return absl::DataLossError(absl::StrCat(path, ": tensor \"", name, "\": ", what));
}

bool Intersect(const Ranges& a, const Ranges& b) {
  for (const auto& [s1, n1] : a) {
    for (const auto& [s2, n2] : b) {
      if (s1 < s2 + n2 && s2 < s1 + n1) return true;
    }
  }
  return false;
}

// No index of the dimension in two of the ranges.
bool Disjoint(Ranges ranges) {
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].second > 0 && ranges[i - 1].first + ranges[i - 1].second > ranges[i].first) {
      return false;
    }
  }
  return true;
}

int64_t Count(const Ranges& d) {
  int64_t n = 0;
  for (const auto& r : d) n += r.second;
  return n;
}

int64_t Numel(const Region& region) {
  int64_t v = 1;
  for (const Ranges& d : region) v *= Count(d);
  return v;
}

int64_t RunEnd(const Slice& s) { return s.run_end < 0 ? Numel(s.ranges) : s.run_end; }

// Per dimension, each local index's index in the full dimension.
std::vector<std::vector<int64_t>> ToFull(const Region& ranges) {
  std::vector<std::vector<int64_t>> out(ranges.size());
  for (size_t d = 0; d < ranges.size(); ++d) {
    for (const auto& [start, size] : ranges[d]) {
      for (int64_t i = 0; i < size; ++i) out[d].push_back(start + i);
    }
  }
  return out;
}

// Whether an element of slice `s`'s run lies in `region` (which its ranges meet).
bool RunMeets(const Slice& s, const Region& region) {
  const int dims = static_cast<int>(s.ranges.size());
  const std::vector<std::vector<int64_t>> full = ToFull(s.ranges);
  auto in = [&](int d, int64_t f) {
    for (const auto& [start, size] : region[d]) {
      if (f >= start && f < start + size) return true;
    }
    return false;
  };
  const int64_t inner = dims == 0 ? 1 : static_cast<int64_t>(full[dims - 1].size());
  const int64_t begin = s.run_begin, end = RunEnd(s);
  if (dims == 0 || inner == 0) return end > begin;
  for (int64_t row = begin / inner; row * inner < end; ++row) {  // Row by row.
    int64_t rest = row;
    bool outer = true;
    for (int d = dims - 2; d >= 0 && outer; --d) {
      const int64_t n = static_cast<int64_t>(full[d].size());
      outer = in(d, full[d][rest % n]);
      rest /= n;
    }
    if (!outer) continue;
    const int64_t last = std::min(end, (row + 1) * inner) - row * inner;
    for (int64_t i = std::max(begin, row * inner) - row * inner; i < last; ++i) {
      if (in(dims - 1, full[dims - 1][i])) return true;
    }
  }
  return false;
}

// The JSON object under `key` of a file's metadata; an empty object when it has none.
absl::StatusOr<nlohmann::json> MetadataObject(const SafetensorsReader& reader, const char* key) {
  const auto it = reader.header().metadata.find(key);
  if (it == reader.header().metadata.end()) return nlohmann::json::object();
  nlohmann::json j = nlohmann::json::parse(it->second, nullptr, false);
  if (!j.is_object()) {
    return absl::DataLossError(absl::StrCat(reader.path(), ": \"", key, "\" is not a JSON object"));
  }
  return j;
}

// Places `local` (the slice's shape on its rank) in the full tensor by `dims` (a "shards"
// entry): fills slice.ranges and `full`.
absl::Status PlaceByShards(const std::string& path, const std::string& name,
                           const nlohmann::json& dims, const std::vector<int64_t>& local,
                           Slice& slice, std::vector<int64_t>& full) {
  if (!dims.is_array()) return Bad(path, name, "its shards are not a list");
  for (const nlohmann::json& d : dims) {
    if (!d.is_object() || !d.contains("dim") || !d.contains("full_size") || !d.contains("ranges") ||
        !d["dim"].is_number_integer() || !d["full_size"].is_number_integer() ||
        !d["ranges"].is_array()) {
      return Bad(path, name, "a shard without dim, full_size and ranges");
    }
    const int64_t dim = d["dim"].get<int64_t>(), size = d["full_size"].get<int64_t>();
    if (dim < 0 || dim >= static_cast<int64_t>(local.size()) || size < 1) {
      return Bad(path, name, absl::StrCat("a shard of dimension ", dim, " of size ", size));
    }
    Ranges ranges;
    for (const nlohmann::json& r : d["ranges"]) {
      if (!r.is_array() || r.size() != 2 || !r[0].is_number_integer() ||
          !r[1].is_number_integer() || r[0].get<int64_t>() < 0 || r[1].get<int64_t>() < 0 ||
          r[0].get<int64_t>() > size || r[1].get<int64_t>() > size - r[0].get<int64_t>()) {
        return Bad(path, name, "a range outside the full dimension");
      }
      ranges.push_back({r[0].get<int64_t>(), r[1].get<int64_t>()});
    }
    if (!Disjoint(ranges)) return Bad(path, name, "ranges of a dimension that overlap");
    if (Count(ranges) != local[dim]) {
      return Bad(path, name,
                 absl::StrCat("ranges of ", Count(ranges), " for a local size of ", local[dim]));
    }
    slice.ranges[dim] = std::move(ranges);
    full[dim] = size;
  }
  return absl::OkStatus();
}

}  // namespace

uint64_t WholeTensor::bytes() const {
  uint64_t n = DTypeBytes(dtype);
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

absl::StatusOr<ConsolidatedReader> ConsolidatedReader::Open(const std::string& dir) {
  std::vector<std::string> paths;
  std::error_code ec;
  bool models = false;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const bool model = absl::StartsWith(name, "model_rank_");
    if ((model || absl::StartsWith(name, "optim_rank_")) && absl::EndsWith(name, ".safetensors")) {
      paths.push_back(e.path().string());
      models = models || model;
    }
  }
  if (ec) return absl::ErrnoToStatus(ec.value(), absl::StrCat("cannot list ", dir));
  if (!models) {
    return absl::NotFoundError(absl::StrCat(dir, " holds no model_rank_*.safetensors files"));
  }
  return OpenFiles(std::move(paths));
}

absl::StatusOr<ConsolidatedReader> ConsolidatedReader::OpenFiles(std::vector<std::string> paths,
                                                                 bool partial) {
  if (paths.empty()) return absl::NotFoundError("no checkpoint files to read");
  ConsolidatedReader out;
  out.paths_ = std::move(paths);
  std::sort(out.paths_.begin(), out.paths_.end());
  for (size_t f = 0; f < out.paths_.size(); ++f) {
    const std::string& path = out.paths_[f];
    const bool optimizer =
        absl::StartsWith(std::filesystem::path(path).filename().string(), "optim_rank_");
    MIMO_ASSIGN_OR_RETURN(SafetensorsReader reader, SafetensorsReader::Open(path));
    MIMO_ASSIGN_OR_RETURN(const nlohmann::json shards, MetadataObject(reader, "shards"));
    MIMO_ASSIGN_OR_RETURN(const nlohmann::json pieces, MetadataObject(reader, "pieces"));
    for (const TensorEntry& t : reader.header().tensors) {
      // The parameter the tensor belongs to: itself, or an optimizer tensor's.
      std::string param = t.name;
      if (optimizer) {
        param.clear();
        for (const char* suffix : kStateSuffixes) {
          if (absl::EndsWith(t.name, suffix)) {
            param = t.name.substr(0, t.name.size() - std::string(suffix).size());
            break;
          }
        }
      }
      Slice slice{.file = static_cast<int>(f)};
      std::vector<int64_t> local = t.shape;
      if (!param.empty() && pieces.contains(param)) {
        // A run of the distributed optimizer: elements [offset, offset + n) of the slice.
        const nlohmann::json& p = pieces[param];
        if (!p.is_object() || !p.contains("offset") || !p["offset"].is_number_integer() ||
            !p.contains("shape") || !p["shape"].is_array()) {
          return Bad(path, t.name, "its piece has no offset and shape");
        }
        local.clear();
        int64_t numel = 1;
        for (const nlohmann::json& n : p["shape"]) {
          if (!n.is_number_integer() || n.get<int64_t>() < 0) {
            return Bad(path, t.name, "its piece's shape is not of sizes");
          }
          local.push_back(n.get<int64_t>());
          numel *= local.back();
        }
        slice.run_begin = p["offset"].get<int64_t>();
        if (t.shape.size() != 1 || slice.run_begin < 0 || slice.run_begin + t.shape[0] > numel) {
          return Bad(path, t.name,
                     absl::StrCat("a run of ", absl::StrJoin(t.shape, "x"), " elements from ",
                                  slice.run_begin, " of a parameter of ", numel));
        }
        slice.run_end = slice.run_begin + t.shape[0];
      }
      std::vector<int64_t> full = local;
      for (int64_t n : local) slice.ranges.push_back({{0, n}});
      if (!param.empty() && shards.contains(param)) {
        MIMO_RETURN_IF_ERROR(PlaceByShards(path, t.name, shards[param], local, slice, full));
      }
      auto [it, fresh] = out.tensors_.try_emplace(t.name);
      WholeTensor& whole = it->second;
      if (fresh) {
        whole = {.name = t.name, .dtype = t.dtype, .shape = full, .optimizer = optimizer};
      } else if (whole.dtype != t.dtype || whole.shape != full || whole.optimizer != optimizer) {
        return Bad(path, t.name,
                   "another dtype or full shape than in " + out.paths_[whole.slices[0].file]);
      }
      bool replica = false;
      for (const Slice& other : whole.slices) {
        if (other.ranges == slice.ranges) {
          if (other.run_begin == slice.run_begin && RunEnd(other) == RunEnd(slice)) {
            replica = true;  // The same slice on another rank: one copy is read.
            break;
          }
          if (RunEnd(other) <= slice.run_begin || RunEnd(slice) <= other.run_begin) continue;
        } else {
          bool meet = true;
          for (size_t d = 0; d < full.size(); ++d) {
            meet = meet && Intersect(other.ranges[d], slice.ranges[d]);
          }
          if (!meet) continue;
        }
        return Bad(path, t.name, "a slice overlapping another of " + out.paths_[other.file]);
      }
      if (!replica) whole.slices.push_back(std::move(slice));
    }
    out.readers_.push_back(std::move(reader));
  }
  for (const auto& [name, whole] : out.tensors_) {
    if (partial) break;
    int64_t covered = 0, numel = 1;
    for (const Slice& s : whole.slices) covered += RunEnd(s) - s.run_begin;
    for (int64_t d : whole.shape) numel *= d;
    if (covered != numel) {
      return absl::DataLossError(absl::StrCat("tensor \"", name, "\": its slices hold ", covered,
                                              " of its ", numel,
                                              " elements (a rank's files missing?)"));
    }
  }
  return out;
}

absl::Status ConsolidatedReader::Read(const std::string& name, absl::Span<char> out) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) return absl::NotFoundError(absl::StrCat("no tensor \"", name, "\""));
  Region all;
  for (int64_t n : it->second.shape) all.push_back({{0, n}});
  return ReadRegion(name, all, out);
}

std::vector<int> ConsolidatedReader::FilesOf(const std::string& name, const Region& region) const {
  std::vector<int> files;
  const auto it = tensors_.find(name);
  if (it == tensors_.end() || region.size() != it->second.shape.size()) return files;
  for (const Slice& s : it->second.slices) {
    bool meet = true;
    for (size_t d = 0; d < region.size(); ++d) meet = meet && Intersect(s.ranges[d], region[d]);
    if (meet && s.run_end >= 0) meet = RunMeets(s, region);
    if (meet) files.push_back(s.file);
  }
  return files;
}

absl::Status ConsolidatedReader::ReadRegion(const std::string& name, const Region& region,
                                            absl::Span<char> out) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) return absl::NotFoundError(absl::StrCat("no tensor \"", name, "\""));
  const WholeTensor& whole = it->second;
  const int dims = static_cast<int>(whole.shape.size());
  const size_t element = DTypeBytes(whole.dtype);
  bool inside = static_cast<int>(region.size()) == dims;
  // Per dimension, each full index's index in the region (-1: outside it).
  std::vector<std::vector<int64_t>> to_region(dims);
  for (int d = 0; d < dims && inside; ++d) {
    to_region[d].assign(whole.shape[d], -1);
    int64_t next = 0;
    for (const auto& [start, size] : region[d]) {
      inside = inside && start >= 0 && size >= 0 && start <= whole.shape[d] &&
               size <= whole.shape[d] - start;
      for (int64_t i = 0; i < size && inside; ++i) {
        inside = to_region[d][start + i] < 0;  // Each index in one range only.
        to_region[d][start + i] = next++;
      }
    }
  }
  if (!inside) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", name, "\": a region outside its shape or overlapping itself [",
                     absl::StrJoin(whole.shape, ", "), "]"));
  }
  if (out.size() != Numel(region) * element) {
    return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\": the region has ",
                                                   Numel(region) * element, " bytes, not ",
                                                   out.size()));
  }
  int64_t copied = 0;  // Elements written into `out`: every one once, or an error.
  std::vector<int64_t> stride(dims, 1);  // Of the region, in elements.
  for (int d = dims - 2; d >= 0; --d) stride[d] = stride[d + 1] * Count(region[d + 1]);
  ByteBuffer& local = local_;
  for (const Slice& s : whole.slices) {
    // Each local dimension's index -> the region's (-1: outside it).
    std::vector<std::vector<int64_t>> map = ToFull(s.ranges);
    bool meets = true;
    for (int d = 0; d < dims; ++d) {
      bool any = false;
      for (int64_t& i : map[d]) {
        i = to_region[d][i];
        any = any || i >= 0;
      }
      meets = meets && any;
    }
    if (!meets) continue;
    if (dims == 0) {
      MIMO_RETURN_IF_ERROR(local.Resize(element));
      MIMO_RETURN_IF_ERROR(readers_[s.file].Read(name, local.span()));
      std::copy(local.data(), local.data() + element, out.data());
      copied = 1;
      continue;
    }
    // The rows of the innermost dimension that the run covers, each scattered by runs of
    // consecutive region indices.
    const int64_t inner = static_cast<int64_t>(map[dims - 1].size());
    const int64_t begin = s.run_begin, end = RunEnd(s);
    if (inner == 0 || end <= begin) continue;
    // A row's offset in the region, or -1 when the region does not have it.
    auto row_base = [&](int64_t row) {
      int64_t base = 0, rest = row;
      for (int d = dims - 2; d >= 0; --d) {  // The row's local index, innermost outer dim first.
        const int64_t n = static_cast<int64_t>(map[d].size());
        const int64_t at = map[d][rest % n];
        if (at < 0) return int64_t{-1};
        rest /= n;
        base += at * stride[d];
      }
      return base;
    };
    // Only the run's rows the region has are read (the first to the last of them).
    int64_t first_row = -1, last_row = -1;
    for (int64_t row = begin / inner; row * inner < end; ++row) {
      if (row_base(row) < 0) continue;
      if (first_row < 0) first_row = row;
      last_row = row;
    }
    if (first_row < 0) continue;
    const int64_t read_begin = std::max(begin, first_row * inner);
    const int64_t read_end = std::min(end, (last_row + 1) * inner);
    MIMO_RETURN_IF_ERROR(local.Resize((read_end - read_begin) * element));
    MIMO_RETURN_IF_ERROR(
        readers_[s.file].ReadRange(name, (read_begin - begin) * element, local.span()));
    for (int64_t row = first_row; row <= last_row; ++row) {
      const int64_t base = row_base(row);
      if (base < 0) continue;
      const int64_t first = std::max(begin, row * inner) - row * inner;
      const int64_t last = std::min(end, (row + 1) * inner) - row * inner;
      for (int64_t i = first; i < last;) {
        const int64_t at = map[dims - 1][i];
        int64_t run = 1;
        if (at < 0) {
          ++i;
          continue;
        }
        while (i + run < last && map[dims - 1][i + run] == at + run) ++run;
        const char* src = local.data() + (row * inner + i - read_begin) * element;
        std::copy(src, src + run * element, out.data() + (base + at) * element);
        copied += run;
        i += run;
      }
    }
  }
  if (copied != Numel(region)) {
    return absl::DataLossError(absl::StrCat("tensor \"", name, "\": the files read hold ", copied,
                                            " of the region's ", Numel(region), " elements"));
  }
  return absl::OkStatus();
}

}  // namespace mimo::checkpoint
