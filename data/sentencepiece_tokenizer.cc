// SentencePieceTokenizer: the model's ids checked once at load, Encode and Decode through
// SpmProcessor.
#include "data/sentencepiece_tokenizer.h"

#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "data/spm_processor.h"

namespace mimo::data {

SentencePieceTokenizer::SentencePieceTokenizer(std::unique_ptr<SpmProcessor> processor,
                                               std::string path)
    : processor_(std::move(processor)), path_(std::move(path)) {}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::Load(
    const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("SentencePiece model ", path, " not found"));
  }
  absl::StatusOr<std::unique_ptr<SpmProcessor>> loaded = SpmProcessor::Load(path);
  if (!loaded.ok()) {
    return absl::Status(loaded.status().code(),
                        absl::StrCat("SentencePiece model ", path,
                                     " cannot be loaded: ", loaded.status().message()));
  }
  std::unique_ptr<SpmProcessor> processor = *std::move(loaded);
  for (const auto& [what, id] : {std::pair<const char*, int>{"BOS", processor->bos_id()},
                                 std::pair<const char*, int>{"EOS", processor->eos_id()}}) {
    if (id < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SentencePiece model ", path, " has no ", what, " piece (", what,
          " id -1): every sample starts with BOS and its text ends with EOS; train the model "
          "with --bos_id and --eos_id set (SentencePiece's defaults are 1 and 2)"));
    }
  }
  std::unique_ptr<SentencePieceTokenizer> t(new SentencePieceTokenizer(std::move(processor), path));
  const SpmProcessor& p = *t->processor_;
  t->num_pieces_ = p.num_pieces();
  t->bos_ = p.bos_id();
  t->eos_ = p.eos_id();
  t->is_text_.resize(t->num_pieces_);
  for (int id = 0; id < t->num_pieces_; ++id) t->is_text_[id] = !p.IsControl(id) && !p.IsUnused(id);
  return t;
}

std::vector<int32_t> SentencePieceTokenizer::Encode(absl::string_view text) const {
  absl::StatusOr<std::vector<int>> ids = processor_->Encode(std::string(text));
  if (!ids.ok()) return {};
  return std::vector<int32_t>(ids->begin(), ids->end());
}

std::string SentencePieceTokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::vector<int> pieces;
  for (const int32_t id : ids) {
    if (IsText(id)) pieces.push_back(id);
  }
  absl::StatusOr<std::string> text = processor_->Decode(pieces);
  if (!text.ok()) return "";
  return *std::move(text);
}

bool SentencePieceTokenizer::IsText(int32_t id) const {
  return id >= 0 && id < num_pieces_ && is_text_[id];
}

}  // namespace mimo::data
