// What a PENDING job waits for, in the words of its state_reason (see job_scheduling.h).
#include "coordinator/job_scheduling.h"

#include <filesystem>
#include <string_view>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "coordinator/job_state.h"

namespace mimo::coordinator {

std::string WaitingForWorkers(int world, v1::DeviceKind device, int registered,
                              const std::vector<std::string>& stuck) {
  std::string text = absl::StrCat("waiting for ", world, " ",
                                  absl::AsciiStrToUpper(DeviceKindWord(device)), " workers: ");
  if (registered == 0) {
    absl::StrAppend(&text, "none registered");
  } else if (registered < world) {
    absl::StrAppend(&text, registered, " registered");
  } else {
    absl::StrAppend(&text, registered, " registered, fewer than ", world, " idle");
  }
  if (!stuck.empty()) {
    absl::StrAppend(&text, " (not counting ", stuck.size(),
                    " told to stop long ago and never confirming)");
  }
  return text;
}

std::string NormalFolder(const std::string& dir) {
  if (dir.empty()) return dir;
  std::string normal = std::filesystem::path(dir).lexically_normal().string();
  while (normal.size() > 1 && normal.back() == '/') normal.pop_back();
  return normal;
}

std::vector<std::pair<const char*, std::string>> SharedFolders(const v1::JobSpec& spec) {
  std::vector<std::pair<const char*, std::string>> out;
  if (!spec.checkpointing().dir().empty()) {
    out.emplace_back("checkpointing.dir", NormalFolder(spec.checkpointing().dir()));
  }
  if (!spec.output_dir().empty()) out.emplace_back("output_dir", NormalFolder(spec.output_dir()));
  return out;
}

std::string FolderInUse(const std::vector<v1::Job>& jobs, size_t index) {
  const std::vector<std::pair<const char*, std::string>> mine = SharedFolders(jobs[index].spec());
  if (mine.empty()) return "";
  for (size_t k = 0; k < jobs.size(); ++k) {
    if (k == index || IsTerminal(jobs[k].state()) ||  // Ended during the scheduler's pass.
        (k > index && jobs[k].state() == v1::JOB_STATE_PENDING)) {
      continue;
    }
    for (const auto& [field, folder] : SharedFolders(jobs[k].spec())) {
      for (const auto& [my_field, my_folder] : mine) {
        if (std::string_view(field) != my_field || folder != my_folder) continue;
        return absl::StrCat("waiting for job ", jobs[k].id(), " (", StateName(jobs[k].state()),
                            ") to end: both use ", field, " ", folder);
      }
    }
  }
  return "";
}

}  // namespace mimo::coordinator
