// `mimoctl plan`: validates a layout (flags, or a job spec file) offline and prints its rank plan.
#include "tools/mimoctl/plan_command.h"

#include <iostream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "coordinator/spec_validation.h"
#include "parallel/component_spec.h"
#include "parallel/module_parallelism.h"
#include "parallel/plan_format.h"
#include "parallel/rank_plan.h"
#include "tools/mimoctl/flag_checks.h"
#include "tools/mimoctl/spec_file.h"

namespace mimo::tools {
namespace {

// The largest seed the planner takes.
constexpr int64_t kMaxSeed = int64_t{1} << 62;

int PrintErrors(const absl::Status& status) {
  for (absl::string_view line : absl::StrSplit(status.message(), '\n')) {
    std::cerr << "error: " << line << '\n';
  }
  return 1;
}

// The plan of a spec file, checked as the coordinator checks it; errors are printed.
absl::StatusOr<parallel::RankPlan> PlanSpecFile(const std::string& path) {
  absl::StatusOr<v1::JobSpec> spec = ReadJobSpecFile(path);
  if (!spec.ok()) return spec.status();
  return coordinator::ValidateJobSpec(*spec, nullptr);
}

// The plan of the layout flags.
absl::StatusOr<parallel::RankPlan> PlanFlags(const PlanOptions& options) {
  absl::StatusOr<std::vector<parallel::ModuleParallelism>> modules =
      parallel::ParseComponents(options.components);
  if (!modules.ok()) return modules.status();
  parallel::LayoutSpec spec;
  spec.world_size = options.world_size;
  spec.language = options.language;
  spec.modules = *std::move(modules);
  spec.seed = options.seed;
  spec.data_parallel_random_init = options.data_parallel_random_init;
  return parallel::BuildRankPlan(spec);
}

}  // namespace

void AddPlanCommand(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<PlanOptions>();
  CLI::App* plan = app.add_subcommand(
      "plan",
      "Validate a layout offline (from flags or a job spec file) and print every rank's module, "
      "coordinates and seeds");
  CLI::Option* spec =
      plan->add_option("SPEC", options->spec_path,
                       "A job spec (.yaml, .yml or .json), checked as the coordinator checks it");
  CLI::Option* world = plan->add_option("--world", options->world_size, "Total number of ranks")
                           ->check(IntegerIn(1, parallel::kMaxWorldSize));
  std::vector<CLI::Option*> layout_flags = {
      world,
      plan->add_option("--language", options->language, "Name of the language (MoE) module")
          ->capture_default_str(),
      plan->add_option("--component", options->components,
                       "One module: NAME=tp=N[,pp=N,dp=N,cp=N,ep=N,etp=N,vpp=N,rank_offset=N] "
                       "(repeat per module)"),
      plan->add_option("--seed", options->seed, "Job seed")
          ->check(IntegerIn(0, kMaxSeed))
          ->capture_default_str(),
      plan->add_flag("--data-parallel-random-init", options->data_parallel_random_init,
                     "Give data-parallel replicas different initialisation seeds")};
  for (CLI::Option* flag : layout_flags) {
    spec->excludes(flag);
    if (flag != world) flag->needs(world);
  }
  plan->callback([options, exit_code, spec, world] {
    if (spec->count() == 0 && world->count() == 0) {
      throw CLI::RequiredError("SPEC or --world (with --component)");
    }
    *exit_code = RunPlan(*options);
  });
  plan->add_flag("--json", options->json, "Print JSON for programs instead of a table");
}

int RunPlan(const PlanOptions& options) {
  absl::StatusOr<parallel::RankPlan> plan =
      options.spec_path.empty() ? PlanFlags(options) : PlanSpecFile(options.spec_path);
  if (!plan.ok()) return PrintErrors(plan.status());
  if (options.json) {
    parallel::WritePlanJson(*plan, std::cout);
  } else {
    parallel::WritePlanTable(*plan, std::cout);
  }
  std::cout.flush();
  return std::cout.good() ? 0 : 1;
}

}  // namespace mimo::tools
