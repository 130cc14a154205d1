// Keeps deploy/ honest without a container engine: every Kubernetes manifest, compose file and the
// Helm chart's values parse as YAML and carry the fields their kind needs; every flag that a
// manifest, the Dockerfile, the Slurm script, mimo-node (those it gathers with `set --` too) or a
// Helm template (its `command:` lists too) passes to one of our programs is one that program's own
// --help lists (for mimoctl and mimo-convert, the subcommand's); every .Values path a Helm
// template reads exists in values.yaml; the kustomization lists files that exist.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

const std::string kSource = MIMO_SOURCE_DIR;
const std::string kBin = MIMO_BIN_DIR;
const std::set<std::string> kPrograms = {"mimo-coordinator", "mimo-worker", "mimoctl",
                                         "mimo-convert"};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Run(const std::string& command) {
  std::array<char, 4096> buffer;
  std::string out;
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen((command + " 2>&1").c_str(), "r"), ::pclose);
  if (pipe == nullptr) return out;
  while (size_t n = std::fread(buffer.data(), 1, buffer.size(), pipe.get()))
    out.append(buffer.data(), n);
  return out;
}

// The long flags a program's (or its subcommand's) --help lists.
const std::set<std::string>& HelpFlags(const std::string& program, const std::string& sub) {
  static std::map<std::string, std::set<std::string>> cache;
  const std::string key = program + " " + sub;
  auto [it, fresh] = cache.try_emplace(key);
  if (fresh) {
    const std::string help = Run(kBin + "/" + program + (sub.empty() ? "" : " " + sub) + " --help");
    static const std::regex flag(R"((^|[\s,])(--[a-z0-9][a-z0-9-]*))");
    for (std::sregex_iterator m(help.begin(), help.end(), flag), end; m != end; ++m) {
      it->second.insert((*m)[2]);
    }
  }
  return it->second;
}

// One call of one of our programs found in a file: its arguments.
struct Call {
  std::string file;
  std::string program;
  std::vector<std::string> args;
};

std::string Basename(const std::string& s) { return s.substr(s.rfind('/') + 1); }

// Checks a call's flags; returns the problems.
std::vector<std::string> CheckCall(const Call& call) {
  std::vector<std::string> problems;
  std::string sub;
  if (call.program == "mimoctl" || call.program == "mimo-convert") {
    for (const std::string& a : call.args) {
      if (a.rfind("-", 0) != 0) {
        sub = a;
        break;
      }
    }
    if (sub.empty()) problems.push_back(call.file + ": " + call.program + " without a subcommand");
  }
  const std::set<std::string>& flags = HelpFlags(call.program, sub);
  if (flags.empty()) problems.push_back(call.file + ": no flags in " + call.program + " --help");
  for (const std::string& a : call.args) {
    if (a.rfind("--", 0) != 0) continue;
    const std::string name = a.substr(0, a.find('='));
    if (!flags.contains(name)) {
      problems.push_back(call.file + ": " + call.program + (sub.empty() ? "" : " " + sub) +
                         " has no flag " + name);
    }
  }
  return problems;
}

// The calls in a YAML document: every `command` (+ `args`) list, and compose healthchecks'
// ["CMD", program, ...], whose program is ours.
void FindYamlCalls(const YAML::Node& node, const std::string& file, std::vector<Call>& out) {
  if (node.IsMap()) {
    for (const auto& kv : node) {
      const std::string key = kv.first.as<std::string>();
      const YAML::Node& value = kv.second;
      if ((key == "command" || key == "test") && value.IsSequence() && value.size() > 0) {
        size_t first = value[0].as<std::string>() == "CMD" ? 1 : 0;
        if (first < value.size() && kPrograms.contains(Basename(value[first].as<std::string>()))) {
          Call call{.file = file, .program = Basename(value[first].as<std::string>())};
          for (size_t i = first + 1; i < value.size(); ++i) {
            call.args.push_back(value[i].as<std::string>());
          }
          if (node["args"] && node["args"].IsSequence()) {
            for (const auto& a : node["args"]) call.args.push_back(a.as<std::string>());
          }
          out.push_back(std::move(call));
        }
      }
      FindYamlCalls(value, file, out);
    }
  } else if (node.IsSequence()) {
    for (const auto& item : node) FindYamlCalls(item, file, out);
  }
}

// The calls in a script or template, line by line (continuations joined): the words after one
// of our programs' names up to the end of its command (|, ;, &, >, a closing quote or bracket).
// A YAML block list whose item is one of our programs (a Helm template's `command:`, which cannot
// be parsed as YAML) takes the items after it at the same indentation as its arguments, past
// template lines ({{- with ...}}) between them. A call's "$@" stands for the words of every
// `set -- ...` in the file (mimo-node builds the workers' flags so).
std::vector<Call> FindTextCalls(const std::string& file) {
  std::string text = ReadFile(file);
  text = std::regex_replace(text, std::regex(R"(\\\n)"), " ");
  static const std::regex strip(R"(^[\[\('"]+|[\]\)'",]+$)");
  static const std::regex list_item(R"(^(\s*)- +(\S.*?)\s*$)");
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::vector<Call> out;
  std::vector<std::string> set_words;  // The words of `set -- ...`.
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    const auto hash = line.find_first_not_of(" \t");
    if (hash != std::string::npos && line[hash] == '#') continue;  // Comments.
    std::smatch item;
    if (std::regex_match(line, item, list_item) &&
        kPrograms.contains(Basename(std::regex_replace(item[2].str(), strip, "")))) {
      Call call{.file = file, .program = Basename(std::regex_replace(item[2].str(), strip, ""))};
      const std::string indent = item[1];
      for (; i + 1 < lines.size(); ++i) {
        const std::string& next = lines[i + 1];
        std::smatch arg;
        if (std::regex_match(next, arg, list_item) && arg[1] == indent) {
          call.args.push_back(std::regex_replace(arg[2].str(), strip, ""));
        } else if (next.rfind(indent + "{{", 0) != 0) {
          break;
        }
      }
      out.push_back(std::move(call));
      continue;
    }
    std::istringstream words(line);
    std::string word;
    std::optional<Call> call;
    bool in_set = false;
    std::string previous;
    while (words >> word) {
      word = std::regex_replace(word, strip, "");
      const bool end = word.empty() || word.find_first_of("|;&>") == 0;
      if (in_set) {
        if (end) {
          in_set = false;
        } else if (word != "$@") {
          set_words.push_back(word);
        }
      } else if (previous == "set" && word == "--") {
        in_set = true;
      }
      previous = word;
      if (call.has_value()) {
        if (end) {
          out.push_back(*std::move(call));
          call.reset();
          continue;
        }
        call->args.push_back(word);
        continue;
      }
      if (kPrograms.contains(Basename(word))) call = Call{.file = file, .program = Basename(word)};
    }
    if (call.has_value()) out.push_back(*std::move(call));
  }
  for (Call& call : out) {
    if (std::find(call.args.begin(), call.args.end(), "$@") != call.args.end()) {
      call.args.insert(call.args.end(), set_words.begin(), set_words.end());
    }
  }
  return out;
}

std::vector<std::string> Files(const std::string& dir, const std::regex& name) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(kSource + "/" + dir)) {
    if (e.is_regular_file() && std::regex_search(e.path().filename().string(), name)) {
      out.push_back(e.path().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST(DeployFilesTest, EveryFlagPassedToOurProgramsExists) {
  std::vector<Call> calls;
  std::map<std::string, int> per_file;
  for (const std::string& f : Files("deploy/k8s", std::regex(R"(\.yaml$)"))) {
    for (const YAML::Node& doc : YAML::LoadAllFromFile(f)) FindYamlCalls(doc, f, calls);
  }
  for (const std::string& f : Files("deploy/docker", std::regex(R"(^compose.*\.yaml$)"))) {
    FindYamlCalls(YAML::LoadFile(f), f, calls);
  }
  for (const std::string& f :
       Files("deploy", std::regex(R"(^(Dockerfile|mimo-node|.*\.sbatch)$)"))) {
    for (Call& c : FindTextCalls(f)) calls.push_back(std::move(c));
  }
  for (const std::string& f : Files("deploy/helm", std::regex(R"(\.(yaml|txt)$)"))) {
    for (Call& c : FindTextCalls(f)) calls.push_back(std::move(c));
  }
  std::vector<std::string> problems;
  std::map<std::string, std::set<std::string>> flags_per_file;
  for (const Call& c : calls) {
    const std::string file = c.file.substr(kSource.size() + 1);
    ++per_file[file];
    for (const std::string& a : c.args) {
      if (a.rfind("--", 0) == 0) flags_per_file[file].insert(a.substr(0, a.find('=')));
    }
    for (std::string& p : CheckCall(c)) problems.push_back(std::move(p));
  }
  EXPECT_THAT(problems, ::testing::IsEmpty());
  // The test finds what it checks: every file that runs our programs yields its calls.
  for (const char* file :
       {"deploy/k8s/coordinator.yaml", "deploy/docker/compose.yaml", "deploy/docker/Dockerfile",
        "deploy/docker/mimo-node", "deploy/slurm/mimo.sbatch",
        "deploy/helm/mimo/templates/coordinator.yaml", "deploy/helm/mimo/templates/NOTES.txt"}) {
    EXPECT_GT(per_file[file], 0) << "no call of our programs found in " << file;
  }
  EXPECT_GE(per_file["deploy/slurm/mimo.sbatch"], 5);  // Coordinator, worker, 3 mimoctl.
  // The flags on the lines after a Helm template's `- mimo-coordinator`, and those mimo-node
  // gathers with `set --` for its workers, are among those checked.
  EXPECT_THAT(flags_per_file["deploy/helm/mimo/templates/coordinator.yaml"],
              ::testing::IsSupersetOf({"--listen", "--db", "--metrics-listen", "--auth-token-file",
                                       "--reattach-grace", "--finished-job-ttl"}));
  EXPECT_THAT(flags_per_file["deploy/docker/mimo-node"],
              ::testing::IsSupersetOf({"--coordinator", "--host", "--device", "--listen-address",
                                       "--token-file", "--connect-timeout", "--local-index"}));
  // A flag that does not exist is caught (the check can fail).
  EXPECT_THAT(CheckCall({.file = "x", .program = "mimo-worker", .args = {"--no-such-flag"}}),
              ::testing::SizeIs(1));
}

// The value at a dotted path of a YAML map, or an undefined node.
YAML::Node At(YAML::Node node, const std::string& path) {
  std::istringstream parts(path);
  std::string part;
  while (std::getline(parts, part, '.')) {
    if (!node.IsMap() || !node[part]) return YAML::Node(YAML::NodeType::Undefined);
    node.reset(node[part]);  // (Assignment would write into the tree: yaml-cpp's reference nodes.)
  }
  return node;
}

TEST(DeployFilesTest, ManifestsParseAndCarryTheirRequiredFields) {
  int deployments = 0, jobs = 0, services = 0;
  for (const std::string& f : Files("deploy/k8s", std::regex(R"(\.yaml$)"))) {
    SCOPED_TRACE(f);
    std::vector<YAML::Node> docs;
    ASSERT_NO_THROW(docs = YAML::LoadAllFromFile(f));
    for (const YAML::Node& doc : docs) {
      if (At(doc, "kind").as<std::string>("") == "Kustomization") {
        for (const auto& r : doc["resources"]) {
          EXPECT_TRUE(fs::exists(kSource + "/deploy/k8s/" + r.as<std::string>())) << r;
        }
        continue;
      }
      ASSERT_TRUE(At(doc, "apiVersion").IsDefined() && At(doc, "kind").IsDefined() &&
                  At(doc, "metadata.name").IsDefined())
          << "a document without apiVersion, kind and metadata.name";
      const std::string kind = doc["kind"].as<std::string>();
      if (kind == "Deployment" || kind == "Job") {
        const YAML::Node containers = At(doc, "spec.template.spec.containers");
        ASSERT_TRUE(containers.IsSequence() && containers.size() > 0);
        for (const auto& c : containers) {
          EXPECT_TRUE(c["name"] && c["image"]) << "a container without name and image";
        }
      }
      if (kind == "Deployment") {
        ++deployments;
        const YAML::Node selector = At(doc, "spec.selector.matchLabels");
        const YAML::Node labels = At(doc, "spec.template.metadata.labels");
        for (const auto& kv : selector) {
          EXPECT_EQ(labels[kv.first.as<std::string>()].as<std::string>(""),
                    kv.second.as<std::string>());
        }
        const YAML::Node c = At(doc, "spec.template.spec.containers")[0];
        EXPECT_EQ(At(c, "livenessProbe.grpc.port").as<int>(0), 50051);
        EXPECT_EQ(At(c, "readinessProbe.grpc.port").as<int>(0), 50051);
      }
      if (kind == "Job") {
        ++jobs;
        EXPECT_EQ(At(doc, "spec.completionMode").as<std::string>(""), "Indexed");
        // The API server refuses backoffLimitPerIndex and podFailurePolicy unless pods are
        // never restarted in place; drained pods (DisruptionTarget) must not use up retries.
        if (At(doc, "spec.backoffLimitPerIndex").IsDefined() ||
            At(doc, "spec.podFailurePolicy").IsDefined()) {
          EXPECT_EQ(At(doc, "spec.template.spec.restartPolicy").as<std::string>(""), "Never");
        }
        EXPECT_EQ(At(doc, "spec.podFailurePolicy.rules")[0]["action"].as<std::string>(""),
                  "Ignore");
        EXPECT_GE(At(doc, "spec.template.spec.terminationGracePeriodSeconds").as<int>(0), 60);
        const YAML::Node c = At(doc, "spec.template.spec.containers")[0];
        EXPECT_TRUE(At(c, "resources.limits")["nvidia.com/gpu"].IsDefined());
        std::set<std::string> env;
        for (const auto& e : c["env"]) env.insert(e["name"].as<std::string>());
        // Nothing that depends on the number of nodes: the pod template of a Job cannot change,
        // and completions and parallelism must (docs/deploy.md: Scaling).
        EXPECT_FALSE(env.contains("WORLD_SIZE")) << "the workers' pod template names WORLD_SIZE";
        for (const char* name : {"MIMO_COORDINATOR", "NODE_RANK"}) {
          EXPECT_TRUE(env.contains(name)) << "the workers' env has no " << name;
        }
        bool shm = false;
        for (const auto& v : At(doc, "spec.template.spec.volumes")) {
          shm = shm || At(v, "emptyDir.medium").as<std::string>("") == "Memory";
        }
        EXPECT_TRUE(shm) << "no memory-backed /dev/shm for NCCL";
      }
      if (kind == "Service") {
        ++services;
        EXPECT_TRUE(At(doc, "spec.selector").IsMap());
      }
    }
  }
  EXPECT_EQ(deployments, 1);
  EXPECT_EQ(jobs, 1);
  EXPECT_EQ(services, 2);
  for (const std::string& f : Files("deploy/docker", std::regex(R"(^compose.*\.yaml$)"))) {
    SCOPED_TRACE(f);
    YAML::Node compose;
    ASSERT_NO_THROW(compose = YAML::LoadFile(f));
    EXPECT_TRUE(compose["services"]["workers"].IsMap());
  }
}

TEST(DeployFilesTest, HelmTemplatesReadOnlyValuesThatExist) {
  const std::string chart = kSource + "/deploy/helm/mimo";
  YAML::Node values;
  ASSERT_NO_THROW(values = YAML::LoadFile(chart + "/values.yaml"));
  EXPECT_EQ(At(YAML::LoadFile(chart + "/Chart.yaml"), "apiVersion").as<std::string>(""), "v2");
  std::vector<std::string> missing;
  int reads = 0;
  static const std::regex ref(R"(\.Values\.([A-Za-z0-9_.]+))");
  for (const std::string& f : Files("deploy/helm/mimo/templates", std::regex(R"(.)"))) {
    const std::string text = ReadFile(f);
    for (std::sregex_iterator m(text.begin(), text.end(), ref), end; m != end; ++m, ++reads) {
      if (!At(values, (*m)[1]).IsDefined()) missing.push_back(Basename(f) + ": " + m->str());
    }
  }
  EXPECT_GT(reads, 20);
  EXPECT_THAT(missing, ::testing::IsEmpty());
}

}  // namespace
