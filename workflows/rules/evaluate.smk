# Evaluations (Tables 1-4): one named rule per entry of `evaluate:`, each scoring one model with
# one or more METHOD:SCALES[:flip] settings.

for _name, _ev in config["evaluate"].items():
    _exp = _ev.get("experiment", config["train"][_ev["model"]]["experiment"])  # else the model's own

    rule:
        name:
            _name
        input:
            prepared=prepared(_ev["dataset"]),
            model=model_file(_ev["model"]),
            experiment=experiment(_exp),
            bases=experiment_bases(_exp),
        output:
            metrics=f"{RESULTS}/{_name}/metrics.json",
            per_class=f"{RESULTS}/{_name}/per_class.csv",
            # mIoU (%) per setting and nothing else: what `dvc metrics show/diff` reads (dvc.yaml)
            dvc_metrics=f"{RESULTS}/{_name}/dvc_metrics.json",
        params:
            stage=_name,
            run_dir=f"{RUNS}/{_name}",
            out_dir=f"{RESULTS}/{_name}",
            cluster=CLUSTER,
            expect=expect_args,
            settings=[a for s in _ev["settings"] for a in ("--setting", s)],
            tags=[a for t in eval_tags(_name) for a in ("--tag", t)],
            overrides=[f"data.dataset={_ev['dataset']}", f"data.root={dataset_root(_ev['dataset'])}"]
            + ([f"eval.split={_ev['split']}"] if _ev.get("split") else []),
            predictions=["--save-predictions", f"{RESULTS}/{_name}/predictions"] if _ev.get("save_predictions") else [],
            versioning=versioning_mode(),
        resources:
            **stage_resources(_name, "evaluate"),
        threads:
            stage_threads(_name, "evaluate")
        log:
            f"{LOGS}/{_name}.log",
        shell:
            "hmsa submit --stage {params.stage:q} --kind evaluate --run-dir {params.run_dir:q} "
            "--cluster {params.cluster:q} {params.expect:q} {params.tags:q} -- evaluate --config {input.experiment:q} "
            "--model {input.model:q} --out-dir {params.out_dir:q} {params.settings:q} {params.predictions:q} "
            "{params.overrides:q} > {log:q} 2>&1 && "
            "hmsa version add --mode {params.versioning:q} {output.metrics:q} {output.per_class:q} "
            "{output.dvc_metrics:q} >> {log:q} 2>&1"
