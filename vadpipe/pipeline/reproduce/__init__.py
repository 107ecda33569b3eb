"""``vadpipe reproduce METHOD DATASET``: a paper's table row from one command.

:mod:`~vadpipe.pipeline.reproduce.protocols` spells out each row's protocol (features,
lists, GT convention, schedule, selection rule, the paper's number);
:mod:`~vadpipe.pipeline.reproduce.run` imports the lists, trains over seeds, evaluates
and writes the results folder.
"""
