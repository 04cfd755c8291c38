# Auto-labelling (section 4): the teacher's hard-thresholded labels for the coarse images.

for _name, _st in config.get("autolabel", {}).items():

    rule:
        name:
            _name
        input:
            prepared=prepared("cityscapes"),
            experiment=experiment(_st["experiment"]),
            bases=experiment_bases(_st["experiment"]),
            teacher=model_file(_st["teacher"]),
        output:
            manifest=autolabel_manifest(_name),
        params:
            stage=_name,
            run_dir=f"{RUNS}/{_name}",
            labels=autolabel_dir(_name),
            cluster=CLUSTER,
            expect=expect_args,
            overrides=["data.dataset=cityscapes", f"data.root={dataset_root('cityscapes')}"],
            # the embedded dataset knows the true labels of the coarse images: measure label quality
            truth=(
                ["--truth", f"{config['data']['embedded_dir']}/truth/cityscapes"]
                if config["data"]["embedded"]
                else []
            ),
            versioning=versioning_mode(),
        resources:
            **stage_resources(_name, "autolabel"),
        threads:
            stage_threads(_name, "autolabel")
        priority:
            PRIORITY[_name]
        log:
            f"{LOGS}/{_name}.log",
        shell:
            "hmsa submit --stage {params.stage:q} --kind autolabel --run-dir {params.run_dir:q} "
            "--cluster {params.cluster:q} {params.expect:q} -- autolabel --config {input.experiment:q} "
            "--model {input.teacher:q} --out-dir {params.labels:q} --manifest {output.manifest:q} "
            "{params.truth:q} {params.overrides:q} > {log:q} 2>&1 && "
            "hmsa version add --mode {params.versioning:q} {params.labels:q} {output.manifest:q} >> {log:q} 2>&1"
