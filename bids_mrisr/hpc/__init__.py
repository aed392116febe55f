"""Running the app on a cluster: job scripts for a scheduler (``slurm``), rendered from plain
values so that ``cli/slurm.py`` only parses arguments and writes files."""
