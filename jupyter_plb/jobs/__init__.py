"""Hub jobs on batch schedulers: Slurm and PBS scripts, ``squeue``/``sbatch``, and adaptive scaling.

The scaling rule (:mod:`.adapt`) is a pure function; :mod:`.adapter` drives it from a client's view
of the queues.
"""
