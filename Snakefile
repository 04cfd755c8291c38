# hmsa — the paper's DAG (Tao et al. 2020). This file only wires; the rules are in workflows/rules/,
# every compute rule calls `hmsa submit`, and the logic lives in the hmsa package.
#   snakemake --profile workflows/profiles/default                      # embedded default, CPU
#   snakemake --profile workflows/profiles/slurm --configfile configs/pipeline/paper.yaml
import os

from snakemake.utils import min_version, validate

from hmsa.orchestration.pipeline import check, expand_seeds  # one-line errors naming the file and the key

min_version("9.0")


# The embedded default only when no --configfile is given: Snakemake would otherwise merge the two
# and run the union of their stages.
if not workflow.configfiles:

    configfile: os.path.join(workflow.basedir, "configs/pipeline/embedded.yaml")


check(config, os.path.join(workflow.basedir, "workflows/schemas/pipeline.schema.yaml"), workflow.configfiles)
validate(config, "workflows/schemas/pipeline.schema.yaml")
# One training stage per seed (`seeds:`), with the auto-labels and evaluations that depend on it.
_expanded = expand_seeds(config)
config.clear()
config.update(_expanded)


include: "workflows/rules/common.smk"
include: "workflows/rules/data.smk"
include: "workflows/rules/train.smk"
include: "workflows/rules/autolabel.smk"
include: "workflows/rules/evaluate.smk"
include: "workflows/rules/report.smk"


rule all:
    default_target: True
    input:
        report_outputs(),
        per_class_plot_outputs(),
