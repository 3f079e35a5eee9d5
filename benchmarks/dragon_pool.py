"""The baselines of cases d1 and d1-map: a plain script driving a Dragon pool directly.

Run as `dragon -s dragon_pool.py N WORKERS [MODE]`: N no-op calls through
`Pool(WORKERS)`, timed from the first call to the last result, without the runtime's
start. Prints the calls per second. MODE `apply` (the default): one `apply_async` per
call, each with a result of its own, as independent tasks are submitted; `map`:
`pool.map(noop, range(N))` with its default chunks (N / 4 WORKERS calls each), the
fastest way through a pool when every call is known up front.
"""

import multiprocessing as mp
import sys
import time

import dragon  # noqa: F401  (registers the "dragon" start method)


def noop(_: object = None) -> None:
    return None


def main(n: int, workers: int, mode: str) -> None:
    mp.set_start_method("dragon")
    with mp.Pool(workers) as pool:
        pool.apply_async(noop).get(60)  # the workers are up
        start = time.perf_counter()
        if mode == "map":
            pool.map(noop, range(n))
        else:
            results = [pool.apply_async(noop) for _ in range(n)]
            for result in results:
                result.get(600)
        print(n / (time.perf_counter() - start), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "apply")
