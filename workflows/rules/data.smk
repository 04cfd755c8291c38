# Data preparation (section 5.1): generate the embedded dataset, or verify the real one.


def versioning_mode():
    """`hmsa version add --mode` for the stages whose outputs DVC records (pipeline config `versioning:`).
    Defined here, the first rules file that needs it; train.smk and autolabel.smk use it too."""
    v = config.get("versioning") or {}
    if not v.get("enabled", True):
        return "off"
    return "push" if v.get("push", True) else "record"


def versioned_dataset_root(dataset):
    """The real dataset root, when `versioning.datasets` asks DVC to record it at prepare_* (the
    embedded dataset is recorded whole by `embedded_data`)."""
    if config["data"]["embedded"] or not (config.get("versioning") or {}).get("datasets", False):
        return []
    return [dataset_root(dataset)]


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
            versioning=versioning_mode(),
        log:
            f"{LOGS}/embedded_data.log",
        shell:
            "hmsa data synth --out {params.out:q} --seed {params.seed:q} {params.counts:q} > {log:q} 2>&1 && "
            "hmsa version add --mode {params.versioning:q} {params.out:q} >> {log:q} 2>&1"


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
            root=config["data"][_ds],
            # Mapillary: resize once into the root that later stages read (embedded images are tiny: keep)
            prepared=[] if _ds != "mapillary" else ["--prepared", dataset_root(_ds), "--long-edge",
                                                    "0" if config["data"]["embedded"] else "2177"],
            run_dir=f"{RUNS}/prepare_{_ds}",
            cluster=CLUSTER,
            expect=expect_args,
            real=[] if config["data"]["embedded"] else ["--real-counts"],
            versioning=versioning_mode(),
            versioned_root=versioned_dataset_root(_ds),
        resources:
            **stage_resources(f"prepare_{_ds}", "prepare"),
        threads:
            stage_threads(f"prepare_{_ds}", "prepare")
        log:
            f"{LOGS}/prepare_{_ds}.log",
        shell:
            "hmsa submit --stage {params.stage:q} --kind prepare --run-dir {params.run_dir:q} "
            "--cluster {params.cluster:q} {params.expect:q} -- data prepare --dataset {params.dataset:q} "
            "--root {params.root:q} --out {output:q} {params.real:q} {params.prepared:q} > {log:q} 2>&1 && "
            "hmsa version add --mode {params.versioning:q} {output:q} {params.versioned_root:q} >> {log:q} 2>&1"
