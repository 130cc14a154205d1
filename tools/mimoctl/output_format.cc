// What mimoctl's job commands print: pure functions from mimo.v1 messages and gRPC statuses to
// text.
#include "tools/mimoctl/output_format.h"

#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "nlohmann/json.hpp"

namespace mimo::tools {
namespace {

using Rows = std::vector<std::vector<std::string>>;

// Left-aligned columns separated by two spaces; the last cell of a row is not padded. The same
// layout as parallel::WritePlanTable's.
std::string FormatColumns(const Rows& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    width.resize(std::max(width.size(), row.size()));
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) {
      out += row[c];
      if (c + 1 < row.size()) out.append(width[c] - row[c].size() + 2, ' ');
    }
    out += '\n';
  }
  return out;
}

absl::Time ToTime(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

absl::Duration ToDuration(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

std::string StepCell(const v1::Progress& progress) {
  if (progress.total_steps() > 0) return absl::StrCat(progress.step(), "/", progress.total_steps());
  if (progress.step() > 0) return absl::StrCat(progress.step());
  return "-";
}

Rows::value_type JobHeader() { return {"ID", "NAME", "STATE", "STEP", "LOSS", "AGE"}; }

Rows::value_type JobRow(const v1::Job& job, absl::Time now) {
  return {job.id(),
          job.spec().name(),
          JobStateName(job.state()),
          StepCell(job.progress()),
          job.has_last_metrics() ? absl::StrFormat("%.4f", job.last_metrics().loss()) : "-",
          job.has_create_time() ? FormatShortDuration(now - ToTime(job.create_time())) : "-"};
}

// True when YAML would read the plain scalar `s` as something other than this string (a number,
// boolean, null, timestamp, ...), or it is empty; such strings are double-quoted.
bool NeedsQuotes(const std::string& s) {
  static constexpr std::array<absl::string_view, 10> kWords = {"~",  "null", "true", "false", "yes",
                                                               "no", "on",   "off",  "y",     "n"};
  if (s.empty()) return true;
  const char first = s.front();
  if (absl::ascii_isdigit(static_cast<unsigned char>(first)) || first == '+' || first == '-' ||
      first == '.') {
    return true;
  }
  return std::find(kWords.begin(), kWords.end(), absl::AsciiStrToLower(s)) != kWords.end();
}

void EmitString(const std::string& s, YAML::Emitter& out) {
  if (NeedsQuotes(s)) out << YAML::DoubleQuoted;
  out << s;
}

void EmitYaml(const nlohmann::ordered_json& value, YAML::Emitter& out) {
  if ((value.is_object() || value.is_array()) && value.empty()) out << YAML::Flow;  // {} and [].
  switch (value.type()) {
    case nlohmann::ordered_json::value_t::object:
      out << YAML::BeginMap;
      for (const auto& [key, item] : value.items()) {
        out << YAML::Key;
        EmitString(key, out);
        out << YAML::Value;
        EmitYaml(item, out);
      }
      out << YAML::EndMap;
      break;
    case nlohmann::ordered_json::value_t::array:
      out << YAML::BeginSeq;
      for (const auto& item : value) EmitYaml(item, out);
      out << YAML::EndSeq;
      break;
    case nlohmann::ordered_json::value_t::string:
      EmitString(value.get_ref<const std::string&>(), out);
      break;
    case nlohmann::ordered_json::value_t::boolean:
      out << (value.get<bool>() ? "true" : "false");
      break;
    case nlohmann::ordered_json::value_t::null:
      out << YAML::Null;
      break;
    default: {  // Numbers, in JSON's shortest round-trip text.
      std::string number = value.dump();
      // YAML 1.1 readers (PyYAML) take "1e-08" for a string: a float needs a '.'.
      if (value.is_number_float() && number.find('.') == std::string::npos) {
        const size_t exponent = number.find_first_of("eE");
        if (exponent != std::string::npos) number.insert(exponent, ".0");
      }
      out << number;
      break;
    }
  }
}

}  // namespace

std::string JobStateName(v1::JobState state) {
  const std::string& name = v1::JobState_Name(state);
  if (name.empty()) return absl::StrCat(static_cast<int>(state));
  return std::string(absl::StripPrefix(name, "JOB_STATE_"));
}

bool IsFinished(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

std::string FormatShortDuration(absl::Duration duration) {
  const int64_t s = std::max<int64_t>(absl::ToInt64Seconds(duration), 0);
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrCat(s / 60, "m", s % 60, "s");
  if (s < 86400) return absl::StrCat(s / 3600, "h", s % 3600 / 60, "m");
  return absl::StrCat(s / 86400, "d", s % 86400 / 3600, "h");
}

std::string FormatFailure(const v1::Failure& failure) {
  std::string out = failure.reason();
  if (failure.rank() >= 0) absl::StrAppend(&out, " on rank ", failure.rank());
  if (failure.exit_code() != 0) absl::StrAppend(&out, " (exit code ", failure.exit_code(), ")");
  if (!failure.message().empty()) absl::StrAppend(&out, ": ", failure.message());
  return out;
}

std::string FormatJobTable(const google::protobuf::RepeatedPtrField<v1::Job>& jobs,
                           absl::Time now) {
  Rows rows = {JobHeader()};
  rows.reserve(jobs.size() + 1);
  for (const v1::Job& job : jobs) rows.push_back(JobRow(job, now));
  return FormatColumns(rows);
}

std::string FormatJob(const v1::Job& job, absl::Time now) {
  std::string out = FormatColumns({JobHeader(), JobRow(job, now)});
  if (!job.state_reason().empty()) absl::StrAppend(&out, "reason: ", job.state_reason(), "\n");
  if (job.has_failure()) absl::StrAppend(&out, "failure: ", FormatFailure(job.failure()), "\n");
  if (job.has_checkpoint_request()) {
    const v1::CheckpointRequest& c = job.checkpoint_request();
    absl::StrAppend(
        &out, "checkpoint requested: #", c.sequence(), c.stop() ? ", then stop" : "",
        c.has_time() ? absl::StrCat(" at ", absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", ToTime(c.time()),
                                                             absl::UTCTimeZone()))
                     : "",
        c.reason().empty() ? "" : absl::StrCat(" (", c.reason(), ")"), "\n");
  }
  return out;
}

std::string FormatEventTable(const google::protobuf::RepeatedPtrField<v1::JobEvent>& events) {
  Rows rows = {{"SEQ", "TIME", "EVENT", "MESSAGE"}};
  rows.reserve(events.size() + 1);
  for (const v1::JobEvent& event : events) {
    std::string what = "-";
    if (event.has_state()) {
      what = JobStateName(event.state());
    } else if (event.has_metrics()) {
      what = absl::StrFormat("metrics step %d, loss %.4f", event.metrics().step(),
                             event.metrics().loss());
    }
    rows.push_back({absl::StrCat(event.sequence()),
                    event.has_time() ? absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", ToTime(event.time()),
                                                        absl::UTCTimeZone())
                                     : "-",
                    what, event.message()});
  }
  return FormatColumns(rows);
}

std::string FormatProgressLine(const v1::Job& job) {
  std::vector<std::string> parts = {JobStateName(job.state())};
  const v1::Progress& progress = job.progress();
  if (progress.total_steps() > 0) {
    parts.push_back(absl::StrFormat("step %d/%d (%.1f%%)", progress.step(), progress.total_steps(),
                                    progress.percent()));
  } else if (progress.step() > 0) {
    parts.push_back(absl::StrCat("step ", progress.step()));
  }
  if (job.has_last_metrics()) {
    const v1::Metrics& metrics = job.last_metrics();
    parts.push_back(absl::StrFormat("loss %.4f", metrics.loss()));
    if (metrics.tokens_per_second() > 0) {
      parts.push_back(absl::StrFormat("%.0f tok/s", metrics.tokens_per_second()));
    }
  }
  // An estimate for a job that will go on training; one that is stopping or ended has none.
  const bool stops = job.state() == v1::JOB_STATE_CANCELLING ||
                     job.state() == v1::JOB_STATE_SUCCEEDED ||
                     job.state() == v1::JOB_STATE_FAILED || job.state() == v1::JOB_STATE_CANCELLED;
  if (progress.has_eta() && !stops) {
    parts.push_back("ETA " + FormatShortDuration(ToDuration(progress.eta())));
  }
  return absl::StrJoin(parts, "  ");
}

std::string FormatJobEnd(const v1::Job& job) {
  std::string out = absl::StrCat("job ", job.id(), " ", JobStateName(job.state()));
  const std::string detail = job.state() == v1::JOB_STATE_FAILED && job.has_failure()
                                 ? FormatFailure(job.failure())
                                 : job.state_reason();
  if (job.state() != v1::JOB_STATE_SUCCEEDED && !detail.empty())
    absl::StrAppend(&out, ": ", detail);
  return out;
}

std::string FormatLogLine(const v1::LogLine& line, bool with_rank) {
  if (!with_rank) return line.text();
  return absl::StrCat("[rank ", line.rank(), "] ", line.text());
}

std::string FormatRankPlanTable(const v1::RankPlan& plan) {
  std::string out = absl::StrCat("world_size ", plan.world_size(), ", seed ", plan.seed(), ", ",
                                 plan.modules_size(), " modules\n\n");
  Rows modules = {{"MODULE", "RANKS", "TP", "CP", "DP", "PP", "EP", "ETP", "EXPT_DP", "VPP"}};
  for (const v1::ModulePlan& m : plan.modules()) {
    const bool lang = m.language();
    modules.push_back(
        {m.name(), absl::StrCat("[", m.rank_offset(), ",", m.rank_offset() + m.rank_count(), ")"),
         absl::StrCat(m.tp()), absl::StrCat(m.cp()), absl::StrCat(m.dp()), absl::StrCat(m.pp()),
         lang ? absl::StrCat(m.ep()) : "-", lang ? absl::StrCat(m.etp()) : "-",
         lang ? absl::StrCat(m.expt_dp()) : "-", lang ? absl::StrCat(std::max(1, m.vpp())) : "-"});
  }
  absl::StrAppend(&out, FormatColumns(modules), "\n");
  Rows rows = {{"RANK", "MODULE", "TP", "CP", "DP", "PP", "EXPT_TP", "EP", "EXPT_DP", "SEED",
                "TP_SEED", "DP_SEED", "EXPERT_SEED"}};
  rows.reserve(plan.ranks_size() + 1);
  for (const v1::RankAssignment& a : plan.ranks()) {
    const bool e = a.has_expert();
    const v1::RankSeeds& seeds = a.seeds();
    rows.push_back({absl::StrCat(a.rank()), a.module(), absl::StrCat(a.dense().tp()),
                    absl::StrCat(a.dense().cp()), absl::StrCat(a.dense().dp()),
                    absl::StrCat(a.dense().pp()), e ? absl::StrCat(a.expert().expt_tp()) : "-",
                    e ? absl::StrCat(a.expert().ep()) : "-",
                    e ? absl::StrCat(a.expert().expt_dp()) : "-", absl::StrCat(seeds.base()),
                    absl::StrCat(seeds.tensor_parallel()), absl::StrCat(seeds.data_parallel()),
                    seeds.has_expert() ? absl::StrCat(seeds.expert()) : "-"});
  }
  absl::StrAppend(&out, FormatColumns(rows));
  return out;
}

absl::StatusOr<std::string> ToJson(const google::protobuf::Message& message, JsonStyle style) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  options.add_whitespace = style == JsonStyle::kIndented;
  std::string json;
  const auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) return absl::InternalError(status.ToString());
  if (json.empty() || json.back() != '\n') json += '\n';
  return json;
}

absl::StatusOr<std::string> ToYaml(const google::protobuf::Message& message) {
  absl::StatusOr<std::string> json = ToJson(message, JsonStyle::kOneLine);
  if (!json.ok()) return json.status();
  const nlohmann::ordered_json document =
      nlohmann::ordered_json::parse(*json, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (document.is_discarded())
    return absl::InternalError("protobuf wrote JSON that does not parse");
  YAML::Emitter out;
  EmitYaml(document, out);
  if (!out.good()) return absl::InternalError(out.GetLastError());
  return absl::StrCat(out.c_str(), "\n");
}

std::vector<std::string> FormatRpcError(const grpc::Status& status) {
  std::vector<std::string> lines;
  if (status.error_message().empty()) {
    lines.push_back(absl::StrCat(
        "error: ", absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()))));
  } else {
    for (absl::string_view line : absl::StrSplit(status.error_message(), '\n')) {
      lines.push_back(absl::StrCat("error: ", line));
    }
  }
  google::rpc::Status details;
  if (status.error_details().empty() || !details.ParseFromString(status.error_details())) {
    return lines;
  }
  const size_t message_lines = lines.size();
  for (const google::protobuf::Any& any : details.details()) {
    google::rpc::BadRequest bad_request;
    if (!any.UnpackTo(&bad_request)) continue;
    for (const auto& violation : bad_request.field_violations()) {
      // Stated already when a line of the message ends with it ("error: invalid request:
      // page_token: ..." as much as "error: page_token: ...").
      const std::string said = absl::StrCat(violation.field(), ": ", violation.description());
      const auto stated = lines.begin() + message_lines;
      if (std::none_of(lines.begin(), stated,
                       [&](const std::string& line) { return absl::EndsWith(line, said); })) {
        lines.push_back(absl::StrCat("error: ", said));
      }
    }
  }
  return lines;
}

std::string FormatUuidV4(std::array<uint8_t, 16> random_bytes) {
  random_bytes[6] = static_cast<uint8_t>((random_bytes[6] & 0x0f) | 0x40);  // Version 4.
  random_bytes[8] = static_cast<uint8_t>((random_bytes[8] & 0x3f) | 0x80);  // RFC 4122 variant.
  std::string out;
  for (size_t i = 0; i < random_bytes.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    absl::StrAppendFormat(&out, "%02x", random_bytes[i]);
  }
  return out;
}

}  // namespace mimo::tools
