"""Run directories: a run's learner built, trained into its directory, loaded and evaluated (``directory``), the
inputs it records (``inputs``), cross-domain evaluation (``crossdomain``), what the figures read
(``inspection``) and the sinusoid demo (``demo``). Builds on ``training`` (the loop) and ``config``."""
