// TarReader: the index of a tar file's regular members (name, data offset, size), built from the
// headers alone, and one member's bytes by pread, so any number of threads can read members of
// one open file at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace mimo::data {

struct TarMember {
  std::string name;    // Its path in the archive: a pax `path` or GNU long name wins.
  int64_t offset = 0;  // Of its first data byte in the file.
  int64_t size = 0;    // Data bytes.
};

// Reads POSIX ustar (name prefixes), GNU (long names, 'L'; long link names, 'K'; base-256 sizes)
// and pax ('x' headers' `path`, `linkpath` and `size`) archives. Indexes regular files (types
// '0', '\0' and '7') in archive order, and links as members with the data of the member they
// name: a hard link ('1') the earlier member of its target's name, a symlink ('2') the member its
// target names relative to the symlink's folder (following symlinks to symlinks). Links that name
// no member (absolute, outside the archive, missing, a cycle) are left out and listed in
// skipped_links(). Skips directories, devices, FIFOs, global pax headers ('g') and unknown
// types. Every header's checksum is verified; the archive must end with an
// end-of-archive (all-zero) block. Thread-safe once opened: members() is immutable and Read is
// a pread on the one descriptor, which stays open until the reader is destroyed.
class TarReader {
 public:
  // NotFound (or the errno's code) when the file cannot be opened; DataLoss naming the file and
  // the offset for a corrupt header (checksum, size field, pax record) or a truncated file.
  static absl::StatusOr<std::unique_ptr<TarReader>> Open(const std::string& path);
  ~TarReader();
  TarReader(const TarReader&) = delete;
  TarReader& operator=(const TarReader&) = delete;

  const std::string& path() const { return path_; }
  int64_t file_size() const { return file_size_; }
  const std::vector<TarMember>& members() const { return members_; }
  // The links left out of members(), each "'NAME' (hard link|symlink to 'TARGET'): WHY": the
  // first kMaxListedLinks, each cut to kMaxLinkDescription bytes (a shard of dangling links,
  // with pax names of up to a megabyte, kept for the job's life), and how many there were.
  static constexpr size_t kMaxListedLinks = 16;
  static constexpr size_t kMaxLinkDescription = 256;
  const std::vector<std::string>& skipped_links() const { return skipped_links_; }
  int64_t skipped_link_count() const { return skipped_link_count_; }

  // The data of `member` (one of members()). DataLoss when the file has shrunk since Open;
  // the errno's status when pread fails.
  absl::StatusOr<std::string> Read(const TarMember& member) const;

 private:
  TarReader(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  absl::Status Index();
  absl::Status ReadAt(int64_t offset, int64_t size, char* out) const;
  // Counts a link left out and lists it (SkipLink's bounds: skipped_links()).
  void SkipLink(std::string description);

  std::string path_;
  int fd_ = -1;
  int64_t file_size_ = 0;
  std::vector<TarMember> members_;
  std::vector<std::string> skipped_links_;
  int64_t skipped_link_count_ = 0;
};

}  // namespace mimo::data
