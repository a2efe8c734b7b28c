/* MPI ping-pong with data checks and an allreduce: run by tests/e2e_mpi.rs
 * with Open MPI over UCX over fv0. Exit 0 only if every byte and the sum
 * are right. MPI_PINGPONG_ITERS: round trips per size (default 200). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size; MPI_Comm_rank(MPI_COMM_WORLD, &rank); MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 2) { if (!rank) fprintf(stderr, "needs 2 ranks\n"); MPI_Abort(MPI_COMM_WORLD, 2); }
    int sizes[] = {8, 4096, 65536, 1 << 20};
    const char *env_iters = getenv("MPI_PINGPONG_ITERS");
    int iters = env_iters ? atoi(env_iters) : 200;
    if (iters < 1) iters = 1;
    for (int s = 0; s < 4; s++) {
        int n = sizes[s];
        unsigned char *buf = malloc(n);
        double t0 = MPI_Wtime();
        for (int i = 0; i < iters; i++) {
            if (rank == 0) {
                for (int j = 0; j < n; j++) buf[j] = (unsigned char)(i + j);
                MPI_Send(buf, n, MPI_BYTE, 1, i, MPI_COMM_WORLD);
                MPI_Recv(buf, n, MPI_BYTE, 1, i, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                for (int j = 0; j < n; j++) if (buf[j] != (unsigned char)(i + j + 1)) { fprintf(stderr, "bad data size %d iter %d byte %d\n", n, i, j); MPI_Abort(MPI_COMM_WORLD, 3); }
            } else {
                MPI_Recv(buf, n, MPI_BYTE, 0, i, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                for (int j = 0; j < n; j++) buf[j]++;
                MPI_Send(buf, n, MPI_BYTE, 0, i, MPI_COMM_WORLD);
            }
        }
        double t = MPI_Wtime() - t0;
        if (!rank) printf("size %d: %.2f us round trip, %.1f MB/s\n", n, t / iters * 1e6, 2.0 * n * iters / t / 1e6);
        free(buf);
    }
    double x = rank + 1, sum = 0;
    MPI_Allreduce(&x, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    if (!rank) printf("allreduce %.0f\n", sum);
    MPI_Finalize();
    return sum == 3.0 ? 0 : 4;
}
