// SentencePiece, loaded at run time from libmimo_spm_plugin.so (data/spm_plugin.cc) into a
// link-map namespace of its own, so that its bundled protobuf-lite never meets the libprotobuf of
// the processes that link it (the worker, the tools).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct MimoSpmModel;

namespace mimo::data {

// The plugin's file name. It is looked for, in order, at $MIMO_SPM_PLUGIN (a full path; when set,
// the only place tried), beside the running binary (the folder of /proc/self/exe), then in
// ../lib relative to that folder.
inline constexpr char kSpmPluginFileName[] = "libmimo_spm_plugin.so";

// False in AddressSanitizer builds: the plugin is loaded with dlmopen into a namespace of its own
// (its own libstdc++ and libc), where the sanitizer runtime cannot follow, so there every load
// fails with FailedPrecondition instead.
bool SpmPluginSupported();

// A loaded SentencePiece model: the ids and piece types SentencePieceTokenizer needs.
// Immutable once loaded; every method may be called from many threads.
class SpmProcessor {
 public:
  // The model in the file at `path`. FailedPrecondition when the plugin cannot be loaded (the
  // message names the paths tried); InvalidArgument when the file is not a model.
  static absl::StatusOr<std::unique_ptr<SpmProcessor>> Load(const std::string& path);
  ~SpmProcessor();
  SpmProcessor(const SpmProcessor&) = delete;
  SpmProcessor& operator=(const SpmProcessor&) = delete;

  int num_pieces() const;
  int bos_id() const;  // -1 when the model has none; so eos_id.
  int eos_id() const;
  bool IsControl(int id) const;  // BOS, EOS, PAD and user control symbols.
  bool IsUnused(int id) const;
  bool IsUnknown(int id) const;

  absl::StatusOr<std::vector<int>> Encode(const std::string& text) const;
  absl::StatusOr<std::string> Decode(const std::vector<int>& ids) const;

 private:
  explicit SpmProcessor(MimoSpmModel* model) : model_(model) {}
  MimoSpmModel* model_;  // Owned; freed through the plugin.
};

// Trains a model with SentencePieceTrainer's command-line flags (e.g. "--input=corpus.txt
// --model_prefix=/tmp/m --vocab_size=64"): for tests and tools.
absl::Status TrainSpmModel(const std::string& flags);

}  // namespace mimo::data
