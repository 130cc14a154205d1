// The SentencePiece library behind a plain C++ wall. Its headers declare absl::string_view as
// std::string_view, which clashes with Debian's Abseil (its own string_view class), so only
// spm_processor.cc includes them and nothing here or there includes Abseil.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace mimo::data {

// A loaded SentencePiece model: the ids and piece types SentencePieceTokenizer needs.
// Immutable once loaded; every method may be called from many threads.
class SpmProcessor {
 public:
  // The model in the file at `path`; null with `*error` set when it cannot be loaded.
  static std::unique_ptr<SpmProcessor> Load(const std::string& path, std::string* error);
  ~SpmProcessor();

  int num_pieces() const;
  int bos_id() const;  // -1 when the model has none; so the others.
  int eos_id() const;
  int pad_id() const;
  int unk_id() const;
  bool IsControl(int id) const;  // BOS, EOS, PAD and user control symbols.
  bool IsUnused(int id) const;
  std::string IdToPiece(int id) const;

  // False with `*error` set on failure.
  bool Encode(const std::string& text, std::vector<int>* ids, std::string* error) const;
  bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const;

 private:
  struct Impl;
  explicit SpmProcessor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Trains a model with SentencePieceTrainer's command-line flags (e.g. "--input=corpus.txt
// --model_prefix=/tmp/m --vocab_size=64"): for tests and tools. False with `*error` set on
// failure.
bool TrainSpmModel(const std::string& flags, std::string* error);

}  // namespace mimo::data
