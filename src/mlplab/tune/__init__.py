"""``mlplab tune``: hyper-parameter search with Optuna, each trial an ordinary ``mlplab fit`` run.

- :mod:`mlplab.tune.command`: the command's options; it starts the trials' fork server first;
- :mod:`mlplab.tune.search`: the search (check the space, open the study, the objective, report);
- :mod:`mlplab.tune.study`: the Optuna study (sampler, pruner, create or join);
- :mod:`mlplab.tune.launch`: how a trial's process starts (forked warm, or new) and how Ctrl-C reaches the study;
- :mod:`mlplab.tune.space`: the search-space file;
- :mod:`mlplab.tune.storage`: the embedded SQLite default or a shared database URL;
- :mod:`mlplab.tune.trial`: the trial process and its pruning callback;
- :mod:`mlplab.tune.report`: checks before the first trial, tables and ``best.yaml`` after the last.
"""
