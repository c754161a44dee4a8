"""Submit a Snakemake job script: the example 'scheduler' of the cluster-generic profile.

Called as ``hemaflow-local-submit --rule R --gpus N --threads T JOBSCRIPT``; prints a job id on
stdout, as a scheduler's submit command does. This one starts the job on this machine in
the background and appends (time, job id, rule, gpus, threads, job script) to
``$HEMAFLOW_STATE_DIR/submissions.tsv`` (default ``.hemaflow-state``). To use a real
scheduler, replace ``start`` with its submit command, passing ``--gpus`` on."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def start(jobscript: str, gpus: int, threads: int) -> str:
    # a real site: subprocess.run(["sbatch", f"--gpus={gpus}", f"--cpus-per-task={threads}",
    #                              "--parsable", jobscript], ...).stdout.strip()
    log_dir = Path(os.environ.get("HEMAFLOW_STATE_DIR", ".hemaflow-state")) / "submit-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    name = Path(jobscript).name
    with open(log_dir / f"{name}.out", "w") as out:
        process = subprocess.Popen(
            ["/bin/bash", jobscript],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives this submit command, like a batch job
        )
    return str(process.pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", required=True)
    parser.add_argument("--gpus", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("jobscript")
    args = parser.parse_args()
    job_id = start(args.jobscript, args.gpus, args.threads)
    state = Path(os.environ.get("HEMAFLOW_STATE_DIR", ".hemaflow-state"))
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "submissions.tsv", "a") as handle:
        handle.write(
            f"{time.time():.3f}\t{job_id}\t{args.rule}\t{args.gpus}\t{args.threads}\t"
            f"{args.jobscript}\n"
        )
    print(job_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
