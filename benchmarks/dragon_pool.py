"""The baseline of case d1: a plain script driving a Dragon pool directly.

Run as `dragon -s dragon_pool.py N WORKERS`: N no-op calls through `Pool(WORKERS)`
(`apply_async`, as the executor does), timed from the first call to the last result,
without the runtime's start. Prints the calls per second.
"""

import multiprocessing as mp
import sys
import time

import dragon  # noqa: F401  (registers the "dragon" start method)


def noop() -> None:
    return None


def main(n: int, workers: int) -> None:
    mp.set_start_method("dragon")
    with mp.Pool(workers) as pool:
        pool.apply_async(noop).get(60)  # the workers are up
        start = time.perf_counter()
        results = [pool.apply_async(noop) for _ in range(n)]
        for result in results:
            result.get(600)
        print(n / (time.perf_counter() - start), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
