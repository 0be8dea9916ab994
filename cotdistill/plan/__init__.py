"""A study, planned: the study file (spec), its grid of cells (cells) and the DAG of jobs that
computes them (jobs). Nothing in this package runs a job."""

from cotdistill.plan.cells import NONE, Cell, SupervisionSpec, expand_cells, labels_of_released, short_name
from cotdistill.plan.jobs import EvalJob, Plan, Resources, TeachJob, TrainJob, build_plan, plan_lines
from cotdistill.plan.spec import ExecutorSettings, ResourceSpec, StudyConfig, expand_braces, load_study, parse_study

__all__ = ["NONE", "Cell", "SupervisionSpec", "expand_cells", "labels_of_released", "short_name", "EvalJob", "Plan",
           "Resources", "TeachJob", "TrainJob", "build_plan", "plan_lines", "ExecutorSettings", "ResourceSpec",
           "StudyConfig", "expand_braces", "load_study", "parse_study"]
