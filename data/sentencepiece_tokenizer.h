// SentencePieceTokenizer: a trained SentencePiece model as the Tokenizer, its BOS and EOS the
// model's own, the image and audio placeholders two ids appended after its pieces.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "data/tokenizer.h"

namespace mimo::data {

class SpmProcessor;

class SentencePieceTokenizer : public Tokenizer {
 public:
  // Loads the model file (a SentencePiece .model, the serialized ModelProto) through the plugin
  // (data/spm_processor.h). NotFound when the file does not exist; InvalidArgument when it is not
  // a model, or the model has no BOS or no EOS piece (train it with --bos_id and --eos_id >= 0,
  // the defaults 1 and 2); FailedPrecondition when the plugin cannot be loaded.
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> Load(const std::string& path);
  ~SentencePieceTokenizer() override;

  // The model's ids (its unknown piece for what it cannot cover). Empty should SentencePiece
  // fail, which a loaded model does not.
  std::vector<int32_t> Encode(absl::string_view text) const override;
  std::string Decode(const std::vector<int32_t>& ids) const override;
  // The model's pieces except control (BOS, EOS, PAD, ...) and unused ones; the unknown piece is
  // text.
  bool IsText(int32_t id) const override;

  int32_t bos() const override { return bos_; }
  int32_t eos() const override { return eos_; }
  int32_t image() const override { return num_pieces_; }
  int32_t audio() const override { return num_pieces_ + 1; }
  int32_t vocab_size() const override { return num_pieces_ + 2; }
  int32_t num_pieces() const { return num_pieces_; }
  const std::string& path() const { return path_; }

 private:
  SentencePieceTokenizer(std::unique_ptr<SpmProcessor> processor, std::string path);

  std::unique_ptr<SpmProcessor> processor_;
  std::string path_;
  int32_t num_pieces_ = 0;
  int32_t bos_ = -1;
  int32_t eos_ = -1;
  std::vector<bool> is_text_;  // Per piece.
};

}  // namespace mimo::data
