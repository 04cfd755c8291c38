"""From the DAG to compute and back: the pipeline config's checks (``pipeline``), the cluster files
(``cluster``), ``hmsa submit`` (``launch``, with the job record in ``jobs``), one process per run dir
(``runlock``), ``hmsa estimate`` (``estimate``) and DVC (``versioning`` records outputs,
``dvc_outputs`` writes what ``dvc metrics`` / ``dvc plots`` read).

Nothing is imported here: ``hmsa submit`` and the Snakefile import only what they use (submitit, torch
and DVC load lazily, ``estimate`` imports torch)."""
