"""The Slurm cases, on the local cluster (../shared/slurm): `python benchmarks/slurm_mpi.py
[--runs 3] [--tasks 64] [CASE ...]`.

Outside an allocation it runs itself inside `salloc -N4 --exclusive --gpus-per-node=4`.
Each case runs `--runs` times; we print the median and its ratio to a baseline measured
in the same allocation. Cases (all: MPI hello tasks of 4 ranks on 2 nodes, 2 a node,
built with each MPI's mpicc; every rank of every task that succeeded checked: wired (size
4, an allreduce of the ranks) and on the node pilotfish placed it on; failures are counted
and shown):

  s3-srun.pmi2        64 MPICH tasks through `srun --mpi=pmi2` (launcher "srun.pmi2")
                      from a pilot's built-in partition on the allocation's nodes
  s3-mpiexec.openmpi  64 Open MPI tasks through Open MPI's `mpiexec` (mpirun)
  s3-mpiexec.mpich    64 MPICH tasks through MPICH's `mpiexec` (Hydra)
  s3-srun-backend     the s3-srun.pmi2 tasks on a partition of the srun backend

Not Open MPI under `srun --mpi=pmix`: on this cluster about one such run in 40 hangs in
MPI_Init, pilotfish or not (Slurm's PMIx plugin and several slurmds on one host: see
tests/integration/test_slurm_mpi.py).

Baseline: the same programs started from a plain script, 16 at a time (as many as fit
the allocation's 64 CPUs): `srun --overlap --mpi=... -N2 -n4 --ntasks-per-node=2` (Slurm
choosing the nodes: the first two), or `mpiexec` with the hosts of two nodes taken in
turn and SLURM_OVERLAP=1 (without it their daemons' steps run one at a time). Not
`srun --exact`: here such steps waited on one another ("Requested nodes are busy"), and
once for minutes. Tasks per second from submit (or the first start) to all done.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import time

import pilotfish as pf

TD = pf.TaskDescription
HELLO = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int rank, size, sum = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    const char *slurm = getenv("SLURMD_NODENAME"), *node = getenv("PILOTFISH_NODE");
    printf("%d %d %d %s %s\n", rank, size, sum, slurm ? slurm : "-", node ? node : "-");
    MPI_Finalize();
    return 0;
}
"""
FLAVOR = {"srun.pmix": "openmpi", "srun.pmi2": "mpich", "mpiexec.openmpi": "openmpi",
          "mpiexec.mpich": "mpich"}
ROOT_OK = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
AT_ONCE = 16  # 4-rank tasks the allocation's 4 x 16 CPUs hold at once


def build(where: str) -> dict[str, str]:
    with open(os.path.join(where, "hello.c"), "w") as f:
        f.write(HELLO)
    built = {}
    for flavor in ("openmpi", "mpich"):
        built[flavor] = os.path.join(where, f"hello_{flavor}")
        subprocess.run([f"mpicc.{flavor}", "-o", built[flavor], os.path.join(where, "hello.c")],
                       check=True)
    return built


def check(stdout: str, hosts: tuple[str, ...] | None) -> None:
    ranks = sorted(line.split() for line in stdout.splitlines())
    assert [int(r[0]) for r in ranks] == [0, 1, 2, 3], stdout
    assert all(r[1:3] == ["4", "6"] for r in ranks), stdout
    assert len({r[3] for r in ranks}) == 2, stdout
    if hosts is not None:
        assert all(hosts[int(r[4])] == r[3] for r in ranks), stdout


def ours(tmp: str, programs: dict[str, str], launcher: str, n: int,
         backend: str) -> tuple[float, list[str]]:
    """Tasks per second, and the errors of those that failed (the others are checked)."""
    with pf.Session(path=tmp) as session:
        pilot = session.start_pilot(pf.PilotDescription(platform="slurm-local",
                                                        backend=backend))
        program = programs[FLAVOR[launcher]]
        start = time.perf_counter()
        tasks = session.submit([TD(executable=program, ranks=4, ranks_per_node=2,
                                   launcher=launcher, environment=ROOT_OK)
                                for _ in range(n)])
        assert session.wait(timeout=600)
        rate = n / (time.perf_counter() - start)
        failed = [f"{t.error}: {(t.stderr or '').strip()[:300]}" for t in tasks
                  if t.state is not pf.TaskState.DONE]
        for t in tasks:
            if t.state is pf.TaskState.DONE:
                check(t.stdout or "", pilot.description.hosts)
    return rate, failed


def baseline(programs: dict[str, str], launcher: str, n: int,
             hosts: list[str]) -> tuple[float, list[str]]:
    """As `ours`, for the same programs started by a plain script."""
    program = programs[FLAVOR[launcher]]
    env = {**os.environ, **ROOT_OK}
    if launcher.startswith("mpiexec"):
        env["SLURM_OVERLAP"] = "1"

    def command(i: int) -> list[str]:
        if launcher.startswith("srun"):
            return ["srun", "--overlap", f"--mpi={launcher.split('.')[1]}", "-N2", "-n4",
                    "--ntasks-per-node=2", program]
        pair = [hosts[(2 * i) % len(hosts)], hosts[(2 * i + 1) % len(hosts)]]
        option = "--host" if launcher == "mpiexec.openmpi" else "-hosts"
        return [launcher, "-n", "4", option, f"{pair[0]}:2,{pair[1]}:2", program]

    def one(i: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command(i), env=env, capture_output=True, text=True,
                              timeout=60)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(AT_ONCE) as pool:
        outputs = list(pool.map(one, range(n)))
    rate = n / (time.perf_counter() - start)
    for done in outputs:
        if done.returncode == 0:
            check(done.stdout, None)
    return rate, [f"exit code {d.returncode}: {d.stderr.strip()[:300]}" for d in outputs
                  if d.returncode != 0]


CASES = {"s3-srun.pmi2": ("srun.pmi2", "builtin"),
         "s3-mpiexec.openmpi": ("mpiexec.openmpi", "builtin"),
         "s3-mpiexec.mpich": ("mpiexec.mpich", "builtin"),
         "s3-srun-backend": ("srun.pmi2", "srun")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", choices=[[], *CASES], default=[])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=64)
    args = parser.parse_args()
    if "SLURM_JOB_ID" not in os.environ:
        os.execvp("salloc", ["salloc", "-N4", "--exclusive", "--gpus-per-node=4",
                             sys.executable, *sys.argv])
    hosts = subprocess.run(["scontrol", "show", "hostnames"], capture_output=True,
                           text=True, check=True).stdout.split()
    with tempfile.TemporaryDirectory(prefix="pf-slurm-bench-") as where:
        programs = build(where)
        for name in args.cases or list(CASES):
            launcher, backend = CASES[name]
            runs = []
            for i in range(args.runs):
                rate, failed = ours(os.path.join(where, f"{name}-{i}"), programs, launcher,
                                    args.tasks, backend)
                base, base_failed = baseline(programs, launcher, args.tasks, hosts)
                runs.append((rate, base))
                print(f"{name} run {i + 1}: {rate:,.1f} tasks/s ({len(failed)} failed), "
                      f"baseline {base:,.1f} tasks/s ({len(base_failed)} failed), "
                      f"ratio {rate / base:.2f}", flush=True)
                for error in (failed + base_failed)[:2]:
                    print(f"  a failure: {error}", flush=True)
            rate = statistics.median(r for r, _ in runs)
            base = statistics.median(b for _, b in runs)
            ratio = statistics.median(r / b for r, b in runs)
            print(f"{name}: median {rate:,.1f} tasks/s, baseline {base:,.1f} tasks/s, "
                  f"ratio {ratio:.2f}", flush=True)


if __name__ == "__main__":
    main()
