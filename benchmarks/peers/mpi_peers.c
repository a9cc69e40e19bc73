/* The MPI peer of pool-bench's scenario 12: the same three workloads as peers.py, in C
 * with Open MPI, timed the same way (data made before the clock starts; the clock
 * stops when the combined result is back at rank 0).
 *
 *   mpicc -O3 -o mpi_peers mpi_peers.c
 *   mpirun -np 2 ./mpi_peers loop     both ranks compute half of the loop
 *   mpirun -np 3 ./mpi_peers tiny     rank 0 hands 10,000 empty tasks to 2 workers
 *   mpirun -np 3 ./mpi_peers ship     rank 0 sends each worker half of 512 MiB
 *
 * Prints one JSON line at rank 0: {"seconds": ..., "result": "..."}. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOOP_ITERATIONS (1ULL << 31)
#define TINY_TASKS 10000
#define SHIP_ELEMENTS (64ULL << 20)
#define TAG_TASK 1
#define TAG_STOP 2

static inline uint64_t splitmix64(uint64_t x) {
    uint64_t z = x + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void report(double seconds, uint64_t result) {
    printf("{\"seconds\": %.9f, \"result\": \"%llu\"}\n", seconds, (unsigned long long)result);
}

static void loop(int rank, int size) {
    uint64_t lo = LOOP_ITERATIONS / size * rank;
    uint64_t hi = rank == size - 1 ? LOOP_ITERATIONS : LOOP_ITERATIONS / size * (rank + 1);
    MPI_Barrier(MPI_COMM_WORLD);
    double started = MPI_Wtime();
    uint64_t sum = 0, total = 0;
    for (uint64_t i = lo; i < hi; i++) sum += splitmix64(i);
    MPI_Reduce(&sum, &total, 1, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) report(MPI_Wtime() - started, total);
}

static void tiny(int rank, int size) {
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        double started = MPI_Wtime();
        int sent = 0, done = 0, task, answer;
        for (int w = 1; w < size && sent < TINY_TASKS; w++, sent++)
            MPI_Send(&sent, 1, MPI_INT, w, TAG_TASK, MPI_COMM_WORLD);
        while (done < TINY_TASKS) {
            MPI_Status status;
            MPI_Recv(&answer, 1, MPI_INT, MPI_ANY_SOURCE, TAG_TASK, MPI_COMM_WORLD, &status);
            done++;
            if (sent < TINY_TASKS) {
                MPI_Send(&sent, 1, MPI_INT, status.MPI_SOURCE, TAG_TASK, MPI_COMM_WORLD);
                sent++;
            }
        }
        for (int w = 1; w < size; w++) MPI_Send(&task, 0, MPI_INT, w, TAG_STOP, MPI_COMM_WORLD);
        report(MPI_Wtime() - started, 0);
    } else {
        for (;;) {
            int task, nothing = 0;
            MPI_Status status;
            MPI_Recv(&task, 1, MPI_INT, 0, MPI_ANY_TAG, MPI_COMM_WORLD, &status);
            if (status.MPI_TAG == TAG_STOP) break;
            MPI_Send(&nothing, 1, MPI_INT, 0, TAG_TASK, MPI_COMM_WORLD);
        }
    }
}

static void ship(int rank, int size) {
    uint64_t workers = (uint64_t)size - 1, share = SHIP_ELEMENTS / workers;
    if (rank == 0) {
        int64_t *data = malloc(SHIP_ELEMENTS * sizeof *data);
        for (uint64_t k = 0; k < SHIP_ELEMENTS; k++) data[k] = (int64_t)splitmix64(k);
        MPI_Barrier(MPI_COMM_WORLD);
        double started = MPI_Wtime();
        for (uint64_t w = 0; w < workers; w++)
            MPI_Send(data + w * share, (int)share, MPI_INT64_T, (int)w + 1, TAG_TASK, MPI_COMM_WORLD);
        uint64_t total = 0, part;
        for (uint64_t w = 0; w < workers; w++) {
            MPI_Recv(&part, 1, MPI_UINT64_T, MPI_ANY_SOURCE, TAG_TASK, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            total += part;
        }
        report(MPI_Wtime() - started, total);
        free(data);
    } else {
        uint64_t *half = malloc(share * sizeof *half), sum = 0;
        memset(half, 0, share * sizeof *half); /* pages touched before the clock starts */
        MPI_Barrier(MPI_COMM_WORLD);
        MPI_Recv(half, (int)share, MPI_UINT64_T, 0, TAG_TASK, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        for (uint64_t k = 0; k < share; k++) sum += half[k];
        MPI_Send(&sum, 1, MPI_UINT64_T, 0, TAG_TASK, MPI_COMM_WORLD);
        free(half);
    }
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const char *workload = argc > 1 ? argv[1] : "";
    if (strcmp(workload, "loop") == 0) loop(rank, size);
    else if (strcmp(workload, "tiny") == 0 && size >= 2) tiny(rank, size);
    else if (strcmp(workload, "ship") == 0 && size >= 2) ship(rank, size);
    else if (rank == 0) fprintf(stderr, "usage: mpirun -np N mpi_peers loop|tiny|ship (tiny and ship need N >= 2)\n");
    MPI_Finalize();
    return 0;
}
