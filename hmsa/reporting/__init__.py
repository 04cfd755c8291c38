"""The report and what it is made of: the paper's tables and claims (``report``, ``claims``,
``convergence``, ``autolabel``), their words (``text``), the figures (``figures`` gathers, ``plots``
draws, ``visualize`` colours label maps), the HTML page (``page``), ``hmsa compare`` (``compare``) and
the pipeline's closing lines (``run_summary``).

Nothing is imported here: the modules load pandas, numpy, torch or matplotlib, and ``hmsa`` starts
without them."""
