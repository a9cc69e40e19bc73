#!/bin/sh
# collatz.sh LO HI: prints the total number of Collatz steps the numbers in [LO, HI)
# take to reach 1 (n -> n/2 if even, 3n+1 if odd).
exec awk -v lo="$1" -v hi="$2" 'BEGIN {
    total = 0
    for (n = lo; n < hi; n++) {
        x = n
        while (x > 1) {
            if (x % 2) x = 3 * x + 1; else x = x / 2
            total++
        }
    }
    printf "%d\n", total
}'
