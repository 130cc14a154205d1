// `mimoctl plan`: validates a layout offline and prints its rank plan.
#include "tools/mimoctl/plan_command.h"

#include <iostream>
#include <memory>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "parallel/component_spec.h"
#include "parallel/plan_format.h"
#include "parallel/rank_plan.h"

namespace mimo::tools {
namespace {

int PrintErrors(const absl::Status& status) {
  for (absl::string_view line : absl::StrSplit(status.message(), '\n')) {
    std::cerr << "error: " << line << '\n';
  }
  return 1;
}

}  // namespace

void AddPlanCommand(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<PlanOptions>();
  CLI::App* plan = app.add_subcommand(
      "plan", "Validate a layout offline and print every rank's module, coordinates and seeds");
  plan->add_option("--world", options->world_size, "Total number of ranks")->required();
  plan->add_option("--language", options->language, "Name of the language (MoE) module")
      ->capture_default_str();
  plan->add_option("--component", options->components,
                   "One module: NAME=tp=N[,pp=N,dp=N,cp=N,ep=N,etp=N,rank_offset=N] "
                   "(repeat per module)");
  plan->add_option("--seed", options->seed, "Job seed")->capture_default_str();
  plan->add_flag("--data-parallel-random-init", options->data_parallel_random_init,
                 "Give data-parallel replicas different initialisation seeds");
  plan->add_flag("--json", options->json, "Print JSON for programs instead of a table");
  plan->callback([options, exit_code] { *exit_code = RunPlan(*options); });
}

int RunPlan(const PlanOptions& options) {
  absl::StatusOr<std::vector<parallel::ModuleParallelism>> modules =
      parallel::ParseComponents(options.components);
  if (!modules.ok()) return PrintErrors(modules.status());
  parallel::LayoutSpec spec;
  spec.world_size = options.world_size;
  spec.language = options.language;
  spec.modules = *std::move(modules);
  spec.seed = options.seed;
  spec.data_parallel_random_init = options.data_parallel_random_init;
  absl::StatusOr<parallel::RankPlan> plan = parallel::BuildRankPlan(spec);
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
