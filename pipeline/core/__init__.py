"""Cross-cutting helpers every stage and entry point shares, each in one place.

- ``errors``: ``DataError``, the one-line error for bad input (exit 2 in every command).
- ``home``: where a run writes (``--home``, else ``$FLOWGMM_HOME``, else ``~/.flowgmm``).
- ``atomic``: files and whole directories written to a unique temporary path, then renamed into place.
- ``raycluster``: connecting to Ray (a local instance with its dashboard on 127.0.0.1, or a cluster).
- ``cli``: the command-line options that ``run``, ``sweep``, ``score`` and ``compare`` share.
- ``version``: the code version recorded with every data set and run.

Never imports the stages (``pipeline.data``, ``pipeline.train``, ``pipeline.results``) or Tune.
"""
