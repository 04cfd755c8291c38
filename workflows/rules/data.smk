# Data preparation (section 5.1): generate the embedded dataset, or verify the real one.

if config["data"]["embedded"]:

    rule embedded_data:
        output:
            f"{config['data']['embedded_dir']}/SYNTH_COMPLETE.json",
        params:
            out=config["data"]["embedded_dir"],
            seed=config["data"]["seed"],
            counts=[
                a
                for k, v in config["data"].get("synth", {}).items()
                for a in (f"--{k}", ",".join(f"{s}={n}" for s, n in v.items()) if isinstance(v, dict) else v)
            ],
        log:
            "logs/embedded_data.log",
        shell:
            "hmsa data synth --out {params.out:q} --seed {params.seed:q} {params.counts:q} > {log:q} 2>&1"


for _ds in ("cityscapes", "mapillary"):

    rule:
        name:
            f"prepare_{_ds}"
        input:
            [f"{config['data']['embedded_dir']}/SYNTH_COMPLETE.json"] if config["data"]["embedded"] else [],
        output:
            prepared(_ds),
        params:
            stage=f"prepare_{_ds}",
            dataset=_ds,
            root=dataset_root(_ds),
            run_dir=f"{RUNS}/prepare_{_ds}",
            cluster=CLUSTER,
            real=[] if config["data"]["embedded"] else ["--real-counts"],
        resources:
            **stage_resources(f"prepare_{_ds}", "prepare"),
        log:
            f"logs/prepare_{_ds}.log",
        shell:
            "hmsa submit --stage {params.stage:q} --kind prepare --run-dir {params.run_dir:q} "
            "--cluster {params.cluster:q} -- data prepare --dataset {params.dataset:q} "
            "--root {params.root:q} --out {output:q} {params.real:q} > {log:q} 2>&1"
