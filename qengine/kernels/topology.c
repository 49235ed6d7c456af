/* What the threads' placement costs: the time one cache line takes to go
 * from one thread of the kernels' OpenMP team to another and back.  On a
 * VM whose vCPUs sit at times on cores sharing a level-3 cache (a round trip
 * of ~80 ns on a Zen 5) and at times not (~370 ns), every line the threads
 * of one layer share costs that much more, and batch 1 on 2 threads can run
 * no faster than 1 thread (README, "Threads").  qbench prints it next to
 * every multi-thread figure. */
#define _POSIX_C_SOURCE 199309L
#include <stdatomic.h>
#include <time.h>
#include "qe_kernels.h"
#ifdef _OPENMP
#include <omp.h>


static double qe_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

double qe_core_round_trip_ns(double seconds)
{
    /* the line bounced: 0 = the first thread's turn, 1 = the second's, 2 = stop */
    static _Alignas(64) atomic_int flag;
    double result = -1.0;
    if (!(seconds > 0.0)) seconds = 0.05;
    atomic_store(&flag, 0);
    #pragma omp parallel num_threads(2)
    {
        if (omp_get_num_threads() == 2) {
            const double t0 = qe_now(), limit = t0 + seconds;
            if (omp_get_thread_num() == 0) {
                long trips = 0;
                int late = 0;
                double t = t0;
                while (!late && t < limit) {
                    for (int k = 0; k < 256 && !late; k++) {
                        atomic_store_explicit(&flag, 1, memory_order_release);
                        /* (both threads on one CPU: a turn takes a time slice;
                         * the clock is read every 4096 spins to stop in time) */
                        for (long spin = 1; atomic_load_explicit(&flag, memory_order_acquire) != 0;
                             spin++)
                            if (spin % 4096 == 0 && qe_now() > limit + 0.5) {
                                late = 1;
                                break;
                            }
                        trips += !late;
                    }
                    t = qe_now();
                }
                if (trips > 0 && !late) result = (t - t0) / (double)trips * 1e9;
                atomic_store_explicit(&flag, 2, memory_order_release);
            } else {
                for (long spin = 1;; spin++) {
                    const int v = atomic_load_explicit(&flag, memory_order_acquire);
                    if (v == 2) break;
                    if (v == 1) atomic_store_explicit(&flag, 0, memory_order_release);
                    else if (spin % 4096 == 0 && qe_now() > limit + 1.0) break;
                }
            }
        }
    }
    return result;
}
#else
double qe_core_round_trip_ns(double seconds)
{
    (void)seconds;
    return -1.0;   /* one thread: nothing to bounce */
}
#endif
