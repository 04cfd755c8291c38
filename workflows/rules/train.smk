# Training stages (Mapillary pre-training, Table 1 models, teacher, student, Table 2 baselines):
# one named rule per entry of `train:` in the pipeline config.


def train_overrides(stage):
    st = config["train"][stage]
    out = [f"data.dataset={st['dataset']}", f"data.root={dataset_root(st['dataset'])}", f"seed={st['seed']}"]
    if st.get("init"):
        out.append(f"model.init={model_file(st['init'])}")
    if st.get("autolabels"):
        out += ["data.extra_pool=autolabel", f"data.extra_pool_root={autolabel_dir(st['autolabels'])}"]
    return out


for _name, _st in config["train"].items():

    rule:
        name:
            _name
        input:
            prepared=prepared(_st["dataset"]),
            experiment=experiment(_st["experiment"]),
            bases=experiment_bases(_st["experiment"]),
            init=[model_file(_st["init"])] if _st.get("init") else [],
            autolabels=[autolabel_manifest(_st["autolabels"])] if _st.get("autolabels") else [],
        output:
            model=f"{RESULTS}/{_name}/model.pt",
            metrics=f"{RESULTS}/{_name}/train.json",
            curves=f"{RESULTS}/{_name}/curves.csv",
        params:
            stage=_name,
            run_dir=f"{RUNS}/{_name}",
            cluster=CLUSTER,
            expect=expect_args,
            overrides=train_overrides(_name),
            versioning=versioning_mode(),
        resources:
            **stage_resources(_name, "train"),
        threads:
            stage_threads(_name, "train")
        priority:
            PRIORITY[_name]
        log:
            f"{LOGS}/{_name}.log",
        shell:
            "hmsa submit --stage {params.stage:q} --kind train --run-dir {params.run_dir:q} "
            "--cluster {params.cluster:q} {params.expect:q} -- train --config {input.experiment:q} "
            "--run-dir {params.run_dir:q} --out-model {output.model:q} --out-metrics {output.metrics:q} "
            "{params.overrides:q} > {log:q} 2>&1 && "
            "hmsa version add --mode {params.versioning:q} {output.model:q} {output.metrics:q} {output.curves:q} "
            ">> {log:q} 2>&1"
