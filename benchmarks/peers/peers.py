"""The peers of pool-bench's scenario 12, in Python: the same three workloads run by
multiprocessing, Dask and Ray, each with 2 workers, timed the same way (data made
before the clock starts; the clock stops when the combined result is back).

    python peers.py FRAMEWORK WORKLOAD

FRAMEWORK is multiprocessing, dask or ray; WORKLOAD is
  loop    the wrapping sum of splitmix64(i) for i in [0, 2^31), in 2 halves,
          each computed with numpy in blocks of 2^16 elements, whose arrays stay in
          the cache (3.3 times faster here than blocks of 2^22; Python's own loop
          would be about 100 times slower and measure the interpreter, not the
          framework);
  tiny    10,000 tasks that do nothing, each its own task, results gathered;
  ship    a 512 MiB array of int64 (element k is splitmix64(k) as int64, the
          matrix-sum job's generated matrix with seed 0) shipped to the 2 workers in
          halves, each summing its half (wrapping mod 2^64).

Prints one JSON line: {"seconds": ..., "result": "..."} (the result as an unsigned
64-bit number, for pool-bench to check against pool's).
"""

import json
import sys
import time

import numpy as np

LOOP_ITERATIONS = 1 << 31
TINY_TASKS = 10_000
SHIP_ELEMENTS = 64 << 20  # 512 MiB of int64
BLOCK = 1 << 16
MASK = (1 << 64) - 1


def splitmix64(x):
    """splitmix64 of a uint64 array, wrapping as the Rust and C kernels do."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def loop_range(lo, hi):
    total = 0
    for start in range(lo, hi, BLOCK):
        x = np.arange(start, min(hi, start + BLOCK), dtype=np.uint64)
        total = (total + int(splitmix64(x).sum(dtype=np.uint64))) & MASK
    return total


def nothing(_):
    return 0


def sum_half(half):
    return int(half.view(np.uint64).sum(dtype=np.uint64))


def halves_of_loop():
    mid = LOOP_ITERATIONS // 2
    return [(0, mid), (mid, LOOP_ITERATIONS)]


def ship_data():
    data = splitmix64(np.arange(SHIP_ELEMENTS, dtype=np.uint64)).view(np.int64)
    mid = SHIP_ELEMENTS // 2
    return [data[:mid].copy(), data[mid:].copy()]


def with_multiprocessing(workload):
    import multiprocessing as mp

    with mp.get_context("fork").Pool(2) as pool:
        pool.map(nothing, range(2))  # the workers are up before the clock starts
        if workload == "loop":
            started = time.perf_counter()
            parts = pool.starmap(loop_range, halves_of_loop(), chunksize=1)
        elif workload == "tiny":
            started = time.perf_counter()
            parts = pool.map(nothing, range(TINY_TASKS), chunksize=1)
        else:
            halves = ship_data()
            started = time.perf_counter()
            parts = pool.map(sum_half, halves, chunksize=1)
        return time.perf_counter() - started, parts


def with_dask(workload):
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.gather(client.map(nothing, range(2), pure=False))
        if workload == "loop":
            started = time.perf_counter()
            futures = [client.submit(loop_range, lo, hi, pure=False)
                       for lo, hi in halves_of_loop()]
            parts = client.gather(futures)
        elif workload == "tiny":
            started = time.perf_counter()
            parts = client.gather(client.map(nothing, range(TINY_TASKS), pure=False))
        else:
            halves = ship_data()
            started = time.perf_counter()
            scattered = client.scatter(halves)
            parts = client.gather([client.submit(sum_half, h, pure=False) for h in scattered])
        return time.perf_counter() - started, parts


def with_ray(workload):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        remote_nothing = ray.remote(nothing)
        remote_loop = ray.remote(loop_range)
        remote_sum = ray.remote(sum_half)
        ray.get([remote_nothing.remote(i) for i in range(2)])
        if workload == "loop":
            started = time.perf_counter()
            parts = ray.get([remote_loop.remote(lo, hi) for lo, hi in halves_of_loop()])
        elif workload == "tiny":
            started = time.perf_counter()
            parts = ray.get([remote_nothing.remote(i) for i in range(TINY_TASKS)])
        else:
            halves = ship_data()
            started = time.perf_counter()
            parts = ray.get([remote_sum.remote(ray.put(h)) for h in halves])
        return time.perf_counter() - started, parts
    finally:
        ray.shutdown()


FRAMEWORKS = {"multiprocessing": with_multiprocessing, "dask": with_dask, "ray": with_ray}


def main():
    framework, workload = sys.argv[1], sys.argv[2]
    if framework not in FRAMEWORKS or workload not in ("loop", "tiny", "ship"):
        sys.exit(__doc__)
    seconds, parts = FRAMEWORKS[framework](workload)
    result = sum(parts) & MASK
    print(json.dumps({"seconds": seconds, "result": str(result)}))


if __name__ == "__main__":
    main()
