# The report: Tables 1-4 beside the paper's numbers, from the evaluations' metrics files.


rule report:
    input:
        metrics=expand(f"{RESULTS}/{{name}}/metrics.json", name=list(config["evaluate"])),
        train=expand(f"{RESULTS}/{{name}}/train.json", name=list(config["train"])),
        autolabel=[autolabel_manifest(n) for n in config.get("autolabel", {})],
    output:
        report_outputs(),
    params:
        pipeline=workflow.configfiles[-1],
        results=RESULTS,
        out=REPORTS,
    log:
        "logs/report.log",
    shell:
        "hmsa report --pipeline-config {params.pipeline:q} --results {params.results:q} "
        "--out {params.out:q} > {log:q} 2>&1"
