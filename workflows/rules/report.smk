# The report: Tables 1-4 beside the paper's numbers (Markdown, CSV, LaTeX) from the evaluations'
# metrics files, the figures, and reports/README.md; also logged to the invocation's MLflow parent run.
# Figures are not declared: which ones exist depends on the config (save_maps, auto-labelling).


rule report:
    input:
        metrics=expand(f"{RESULTS}/{{name}}/metrics.json", name=list(config["evaluate"])),
        train=expand(f"{RESULTS}/{{name}}/train.json", name=list(config["train"])),
        autolabel=[autolabel_manifest(n) for n in config.get("autolabel", {})],
    output:
        tables=[f"{REPORTS}/{t}.{ext}" for t in config["tables"] for ext in ("md", "csv", "tex")],
        # the paper's findings over seeds (hmsa/reporting/claims.py), when Table 1 or 2 is reproduced
        claims=[f"{REPORTS}/claims.{ext}" for ext in ("md", "csv") if {"table1", "table2"} & set(config["tables"])],
        # auto-labels and coarse labels against the truth, which only the embedded data has (hmsa/reporting/autolabel.py)
        autolabel=[f"{REPORTS}/autolabel.{ext}" for ext in ("md", "csv")
                   if config["data"].get("embedded") and config.get("autolabel")],
        index=f"{REPORTS}/README.md",
        # every table and figure on one self-contained page (hmsa/reporting/page.py)
        html=f"{REPORTS}/index.html",
    params:
        pipeline=from_workdir(workflow.configfiles[-1]),
        results=RESULTS,
        runs=RUNS,
        out=REPORTS,
    log:
        f"{LOGS}/report.log",
    shell:
        "hmsa report --pipeline-config {params.pipeline:q} --results {params.results:q} "
        "--runs {params.runs:q} --out {params.out:q} > {log:q} 2>&1"


# Per-class IoU of every row of each table, the data of dvc.yaml's one-heatmap-per-table plots.
rule per_class_plots:
    input:
        metrics=expand(f"{RESULTS}/{{name}}/metrics.json", name=list(config["evaluate"])),
    output:
        csv=per_class_plot_outputs(),
    params:
        pipeline=from_workdir(workflow.configfiles[-1]),
        results=RESULTS,
        out=f"{RESULTS}/per_class",
        versioning=versioning_mode(),
    log:
        f"{LOGS}/per_class_plots.log",
    shell:
        "hmsa plots --pipeline-config {params.pipeline:q} --results {params.results:q} --out-dir {params.out:q} "
        "> {log:q} 2>&1 && hmsa version add --mode {params.versioning:q} {output.csv:q} >> {log:q} 2>&1"
