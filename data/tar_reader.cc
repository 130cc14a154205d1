// TarReader: walks the 512-byte headers with pread, verifying each checksum, applying GNU long
// names and pax records to the member that follows them; links resolved to members' data once
// every header has been read.
#include "data/tar_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"

namespace mimo::data {
namespace {

constexpr int64_t kBlock = 512;
constexpr int64_t kMaxLongName = 64 << 10;  // Bytes of a GNU long name or pax header at most.
constexpr int64_t kMaxPaxHeader = 1 << 20;
// A link whose target is no member of its own (yet).
constexpr size_t kNoMember = static_cast<size_t>(-1);
// Links followed from one link at most, as Linux follows at most 40 symlinks in a path.
constexpr size_t kMaxLinkHops = 40;

// Header fields: offset and width.
constexpr int kNameAt = 0, kNameLen = 100;
constexpr int kSizeAt = 124, kSizeLen = 12;
constexpr int kChecksumAt = 148, kChecksumLen = 8;
constexpr int kTypeAt = 156;
constexpr int kLinkNameAt = 157, kLinkNameLen = 100;
constexpr int kMagicAt = 257;
constexpr int kPrefixAt = 345, kPrefixLen = 155;

int64_t RoundUp(int64_t n) { return (n + kBlock - 1) / kBlock * kBlock; }

// A NUL-terminated (or full-width) string field.
std::string Field(const char* block, int at, int len) {
  const char* begin = block + at;
  return std::string(begin, strnlen(begin, len));
}

// An octal number field (leading spaces, then digits, then NUL or spaces), or GNU base-256 when
// the first byte has its high bit set. nullopt when malformed or negative.
std::optional<int64_t> Number(const char* block, int at, int len) {
  const auto* f = reinterpret_cast<const unsigned char*>(block + at);
  if (f[0] & 0x80) {
    if (f[0] != 0x80) return std::nullopt;  // 0xff: negative.
    uint64_t v = 0;
    for (int i = 1; i < len; ++i) {
      if (v >> 55) return std::nullopt;
      v = (v << 8) | f[i];
    }
    return static_cast<int64_t>(v);
  }
  int i = 0;
  while (i < len && f[i] == ' ') ++i;
  int64_t v = 0;
  for (; i < len && f[i] >= '0' && f[i] <= '7'; ++i) {
    if (v >> 59) return std::nullopt;
    v = v * 8 + (f[i] - '0');
  }
  for (; i < len; ++i) {
    if (f[i] != ' ' && f[i] != '\0') return std::nullopt;
  }
  return v;
}

bool AllZero(const char* block) {
  for (int64_t i = 0; i < kBlock; ++i) {
    if (block[i] != 0) return false;
  }
  return true;
}

// The checksum field against the header's byte sum (the field counted as spaces); unsigned as
// POSIX says, signed as some old writers did.
bool ChecksumMatches(const char* block, std::optional<int64_t> stored) {
  if (!stored) return false;
  int64_t unsigned_sum = 0, signed_sum = 0;
  for (int64_t i = 0; i < kBlock; ++i) {
    const bool in_field = i >= kChecksumAt && i < kChecksumAt + kChecksumLen;
    const char c = in_field ? ' ' : block[i];
    unsigned_sum += static_cast<unsigned char>(c);
    signed_sum += static_cast<signed char>(c);
  }
  return *stored == unsigned_sum || *stored == signed_sum;
}

struct PaxRecords {
  std::optional<std::string> path;
  std::optional<std::string> linkpath;
  std::optional<int64_t> size;
};

// "LEN KEY=VALUE\n" records; LEN counts the whole record. An empty value unsets the key.
absl::StatusOr<PaxRecords> ParsePax(absl::string_view data) {
  PaxRecords out;
  size_t at = 0;
  while (at < data.size()) {
    if (data[at] == '\0') break;  // Padding some writers leave.
    size_t i = at;
    int64_t len = 0;
    while (i < data.size() && data[i] >= '0' && data[i] <= '9' && len < (int64_t{1} << 40)) {
      len = len * 10 + (data[i++] - '0');
    }
    if (i == at || i >= data.size() || data[i] != ' ' || len <= static_cast<int64_t>(i - at) + 2 ||
        at + len > data.size() || data[at + len - 1] != '\n') {
      return absl::DataLossError(absl::StrCat("malformed pax record at byte ", at));
    }
    const absl::string_view record = data.substr(i + 1, at + len - 1 - (i + 1));
    const size_t eq = record.find('=');
    if (eq == absl::string_view::npos) {
      return absl::DataLossError(absl::StrCat("pax record at byte ", at, " has no '='"));
    }
    const absl::string_view key = record.substr(0, eq), value = record.substr(eq + 1);
    if (key == "path" || key == "linkpath") {
      (key == "path" ? out.path : out.linkpath) =
          value.empty() ? std::nullopt : std::optional<std::string>(value);
    } else if (key == "size") {
      if (value.empty()) {
        out.size.reset();
      } else {
        int64_t v = 0;
        for (const char c : value) {
          if (c < '0' || c > '9' || v > (int64_t{1} << 58)) {
            return absl::DataLossError(absl::StrCat("pax size '", value, "' is not a size"));
          }
          v = v * 10 + (c - '0');
        }
        out.size = v;
      }
    }
    at += len;
  }
  return out;
}

// `path` with "." and empty components dropped and ".." applied, so "./a//b/../c.png" and
// "a/c.png" name the same member; nullopt when a ".." climbs out of the archive's root.
std::optional<std::string> Normalize(absl::string_view path) {
  std::vector<absl::string_view> parts;
  for (const absl::string_view part : absl::StrSplit(path, '/')) {
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      if (parts.empty()) return std::nullopt;
      parts.pop_back();
    } else {
      parts.push_back(part);
    }
  }
  return absl::StrJoin(parts, "/");
}

}  // namespace

absl::StatusOr<std::unique_ptr<TarReader>> TarReader::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open tar file ", path));
  std::unique_ptr<TarReader> reader(new TarReader(path, fd));
  struct stat st;
  if (::fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("stat ", path));
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("tar file ", path, " is not a regular file"));
  }
  reader->file_size_ = st.st_size;
  MIMO_RETURN_IF_ERROR(reader->Index());
  return reader;
}

TarReader::~TarReader() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status TarReader::ReadAt(int64_t offset, int64_t size, char* out) const {
  int64_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd_, out + done, size - done, offset + done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("read ", path_, " at offset ", offset + done));
    }
    if (n == 0) {
      return absl::DataLossError(absl::StrCat("tar ", path_, ": unexpected end of file at offset ",
                                              offset + done, " (", size, " bytes wanted at ",
                                              offset, "); was it truncated?"));
    }
    done += n;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> TarReader::Read(const TarMember& member) const {
  std::string data(static_cast<size_t>(member.size), '\0');
  MIMO_RETURN_IF_ERROR(ReadAt(member.offset, member.size, data.data()));
  return data;
}

absl::Status TarReader::Index() {
  const auto corrupt = [this](int64_t at, absl::string_view what) {
    return absl::DataLossError(absl::StrCat("tar ", path_, ": header at offset ", at, ": ", what));
  };
  std::optional<std::string> long_name;  // From a GNU 'L' entry, for the next member.
  std::optional<std::string> long_link;  // From a GNU 'K' entry, for the next member.
  PaxRecords pax;                        // From a pax 'x' entry, for the next member.
  // Links are members with the data of the member they name: tar stores a file that repeats as a
  // hard link to its first copy (and folders of samples may hold symlinks), and skipping the link
  // silently lost that sample's image or caption. A hard link names an earlier member from the
  // archive's root; a symlink names a path relative to its own folder, anywhere in the archive.
  // Links wait here (their member's offset -1) until every member is known: (member, target's
  // normalized name, what it is for skipped_links_).
  struct Link {
    size_t member;
    std::string target;
    std::string description;
    // A hard link to a pending symlink: the member its name named then (a later member of that
    // name is not it). kNoMember: resolved by `target`.
    size_t target_member = kNoMember;
  };
  std::vector<Link> links;
  absl::flat_hash_map<std::string, size_t> by_name;  // Normalized name: its last member so far.
  char block[kBlock];
  int64_t pos = 0;
  while (true) {
    if (pos + kBlock > file_size_) {
      return absl::DataLossError(absl::StrCat(
          "tar ", path_, ": ", pos == file_size_ ? "ends" : "has a partial header", " at offset ",
          pos, " without the end-of-archive block (truncated, or not a tar file?)"));
    }
    MIMO_RETURN_IF_ERROR(ReadAt(pos, kBlock, block));
    if (AllZero(block)) break;
    const std::optional<int64_t> checksum = Number(block, kChecksumAt, kChecksumLen);
    if (!ChecksumMatches(block, checksum)) {
      return corrupt(pos, "bad checksum (corrupt, or not a tar file)");
    }
    const std::optional<int64_t> header_size = Number(block, kSizeAt, kSizeLen);
    if (!header_size) return corrupt(pos, "malformed size field");
    const char type = block[kTypeAt];
    const bool regular = type == '0' || type == '\0' || type == '7';
    const bool link = type == '1' || type == '2';
    const bool meta = type == 'L' || type == 'x' || type == 'K' || type == 'g';
    // Links, devices, directories and FIFOs have no data whatever their size field says.
    const bool has_data = !(type >= '1' && type <= '6');
    int64_t size = !has_data ? 0 : !meta && pax.size ? *pax.size : *header_size;
    const int64_t data_at = pos + kBlock;
    std::string name;
    if (regular || link) {
      if (pax.path) {
        name = *pax.path;
      } else if (long_name) {
        name = *long_name;
      } else {
        name = Field(block, kNameAt, kNameLen);
        const bool posix = std::memcmp(block + kMagicAt, "ustar\0", 6) == 0;
        const std::string prefix = posix ? Field(block, kPrefixAt, kPrefixLen) : "";
        if (!prefix.empty()) name = absl::StrCat(prefix, "/", name);
      }
    }
    if (data_at + size > file_size_) {
      return absl::DataLossError(absl::StrCat(
          "tar ", path_, ": member ", name.empty() ? std::string(1, type) : "'" + name + "'",
          " at offset ", pos, " needs ", size, " data bytes, the file ends ", file_size_ - data_at,
          " bytes after its header (truncated?)"));
    }
    if (type == 'L' || type == 'K' || type == 'x') {
      if (size > (type == 'x' ? kMaxPaxHeader : kMaxLongName)) {
        return corrupt(pos, absl::StrCat("a ", size, "-byte ",
                                         type == 'L'   ? "long name"
                                         : type == 'K' ? "long link name"
                                                       : "pax",
                                         " header is too large"));
      }
      std::string data(size, '\0');
      MIMO_RETURN_IF_ERROR(ReadAt(data_at, size, data.data()));
      if (type == 'L') {
        long_name = std::string(data.c_str());  // Up to its NUL.
      } else if (type == 'K') {
        long_link = std::string(data.c_str());
      } else {
        absl::StatusOr<PaxRecords> records = ParsePax(data);
        if (!records.ok()) return corrupt(pos, records.status().message());
        pax = *std::move(records);
      }
    } else if (!meta) {
      // A member: it takes the pending long name and pax records, whatever its type.
      if ((regular || link) && !name.empty() && name.back() != '/') {
        const std::optional<std::string> key = Normalize(name);
        if (regular) {
          if (key) by_name[*key] = members_.size();
          members_.push_back({.name = std::move(name), .offset = data_at, .size = size});
        } else {
          const std::string to = pax.linkpath ? *pax.linkpath
                                 : long_link  ? *long_link
                                              : Field(block, kLinkNameAt, kLinkNameLen);
          std::optional<std::string> target;
          if (type == '1') {
            target = Normalize(to);
          } else if (!to.empty() && to[0] != '/') {
            const size_t slash = name.rfind('/');
            target = Normalize(
                absl::StrCat(slash == std::string::npos ? "" : name.substr(0, slash + 1), to));
          }
          // A hard link takes the member named so far (a later one of that name is not it).
          const auto earlier = target ? by_name.find(*target) : by_name.end();
          std::string description = absl::StrCat(
              "'", name, "' (", type == '1' ? "hard link" : "symlink", " to '", to, "')");
          if (!target) {
            SkipLink(absl::StrCat(description,
                                  to.empty() ? ": has no target" : ": outside the archive"));
          } else if (type == '1' && earlier == by_name.end()) {
            SkipLink(absl::StrCat(description, ": names no earlier member"));
          } else if (type == '1' && members_[earlier->second].offset >= 0) {
            const TarMember& from = members_[earlier->second];
            if (key) by_name[*key] = members_.size();
            members_.push_back({.name = std::move(name), .offset = from.offset, .size = from.size});
          } else {  // A symlink, or a hard link to one: resolved once all members are known.
            links.push_back({.member = members_.size(),
                             .target = *std::move(target),
                             .description = std::move(description),
                             .target_member = type == '1' ? earlier->second : kNoMember});
            if (key) by_name[*key] = members_.size();
            members_.push_back({.name = std::move(name), .offset = -1, .size = 0});
          }
        }
      }
      long_name.reset();
      long_link.reset();
      pax = PaxRecords();
    }
    pos = data_at + RoundUp(size);
  }
  // Links to links: each chain is walked once and every link on it takes its end's data, so L
  // chained links cost L steps (not L passes over them; at most kMaxLinkHops each where chains
  // are longer than that). A cycle, a link more than kMaxLinkHops links from its end (the
  // kernel's symlink limit) or a chain ending at no member stays unresolved.
  absl::flat_hash_map<size_t, size_t> link_of_member;
  for (size_t i = 0; i < links.size(); ++i) link_of_member[links[i].member] = i;
  enum : uint8_t { kNew, kWalking, kDone };
  std::vector<uint8_t> state(links.size(), kNew);
  std::vector<size_t> chain;
  for (size_t i = 0; i < links.size(); ++i) {
    chain.clear();
    int64_t offset = -1, size = 0;
    for (size_t j = i;;) {
      if (state[j] == kDone) {
        offset = members_[links[j].member].offset;
        size = members_[links[j].member].size;
        break;
      }
      if (state[j] == kWalking || chain.size() >= kMaxLinkHops) break;
      state[j] = kWalking;
      chain.push_back(j);
      size_t to = links[j].target_member;
      if (to == kNoMember) {
        const auto it = by_name.find(links[j].target);
        if (it == by_name.end()) break;
        to = it->second;
      }
      if (members_[to].offset >= 0) {
        offset = members_[to].offset;
        size = members_[to].size;
        break;
      }
      const auto next = link_of_member.find(to);
      if (next == link_of_member.end()) break;
      j = next->second;
    }
    if (chain.size() >= kMaxLinkHops && offset < 0) {
      // Too long from link i; the others on the way may be near enough their end: walked again.
      for (const size_t c : chain) state[c] = kNew;
      chain.assign(1, i);
    }
    for (const size_t c : chain) {
      members_[links[c].member].offset = offset;
      members_[links[c].member].size = size;
      state[c] = kDone;
    }
  }
  for (const Link& l : links) {
    if (members_[l.member].offset >= 0) continue;
    SkipLink(absl::StrCat(l.description, ": names no member of it"));
  }
  members_.erase(std::remove_if(members_.begin(), members_.end(),
                                [](const TarMember& m) { return m.offset < 0; }),
                 members_.end());
  return absl::OkStatus();
}

void TarReader::SkipLink(std::string description) {
  ++skipped_link_count_;
  if (skipped_links_.size() >= kMaxListedLinks) return;
  if (description.size() > kMaxLinkDescription) {
    description.resize(kMaxLinkDescription);
    description += "...";
  }
  skipped_links_.push_back(std::move(description));
}

}  // namespace mimo::data
