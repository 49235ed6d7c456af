#!/usr/bin/env bash
# Throughput estimate of the fast convolution's inner loops with llvm-mca's
# Zen 4 model (Debian llvm-16), for comparing loop variants on machines
# without AVX-512.  Relative figures only: the model is not the CPU.
#   tools/mca.sh [znver4|znver3]
set -euo pipefail
cd "$(dirname "$0")/../qengine/kernels"
CPU="${1:-znver4}"
MCA="${MCA:-llvm-mca-16}"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
flags="-O3 -std=c11 -fno-math-errno -ffp-contract=fast -fopenmp -Wno-psabi -S"
gcc $flags -o "$tmp/avx512.s" isa_avx512.c
gcc $flags -o "$tmp/avx2.s" isa_avx2.c
# each inner loop: the basic block from its label to the backward branch, found
# by the lookup instruction it holds
loop() {  # file, pattern the loop holds, pattern it must not hold, times it holds it (or
          # more, at most), a second pattern and the exact times it holds that one
    # the first backward branch whose span (its target label to it, labels inside
    # dropped: a loop may be entered in its middle) holds the patterns so often
    awk -v pat="$2" -v bad="${3:-^$}" -v least="${4:-1}" -v most="${5:-1000000}" \
        -v pat2="${6:-^$}" -v times2="${7:-0}" '
        { line[N++] = $0 }
        /^\.L[0-9]+:/ { pos[substr($1, 1, length($1) - 1)] = N - 1 }
        /^\tj[a-z]+\t\.L[0-9]+/ && ($2 in pos) && !done {
            has = 0; nope = 0; has2 = 0
            for (i = pos[$2] + 1; i < N; i++) {
                if (line[i] ~ pat) has++
                if (line[i] ~ bad) nope = 1
                if (line[i] ~ pat2) has2++
            }
            if (has >= least && has <= most && !nope && has2 == times2) {
                for (i = pos[$2] + 1; i < N; i++) if (line[i] !~ /^\.L[0-9]+:/) print line[i]
                done = 1
            }
        }' "$1"
}
report() {  # name, file, pattern, lookups (16-bit) per iteration, excluded pattern,
            # least and most times the loop holds the pattern, second pattern, its count
    loop "$2" "$3" "${5:-}" "${6:-1}" "${7:-1000000}" "${8:-^$}" "${9:-0}" > "$tmp/l.s"
    if [ ! -s "$tmp/l.s" ]; then echo "$1: loop not found"; return; fi
    c=$( ("$MCA" -mcpu="$CPU" -iterations=500 "$tmp/l.s" 2>/dev/null || true) | awk '/Total Cycles/ {t=$3} /Iterations/ {i=$2} END {printf "%.2f", t/i}')
    echo "$1: $c cycles/iteration, $4 lookups (or multiply-adds)/iteration -> $(echo "$4 / $c" | bc -l | cut -c1-5) per cycle ($CPU)"
}
report "avx512 K<=128 (vpermi2b, 4 positions x 64 channels)" "$tmp/avx512.s" "vperm[it]2b" 256
report "avx512 K<=16  (four taps per zmm: vpermb + vpdpbusd, 2 positions x 64 channels x 4 taps)" "$tmp/avx512.s" "vpdpbusd" 512
report "avx512 K<=16  (one tap per zmm: vpshufb, 4 positions x 64 channels)" "$tmp/avx512.s" "vpshufb\t%zmm" 256
report "avx2   K<=16  (vpshufb, 2 positions x 32 channels)" "$tmp/avx2.s" "vbroadcasti128" 64 "vpblendvb"
report "avx2   K<=32  (vpshufb x2 + blend, 2 positions x 32 channels)" "$tmp/avx2.s" "vpblendvb" 64
# fast mode's int16 dense convolution (qe_i16.h): multiply-adds per cycle,
# (llvm-mca 16 prices a zmm vpdpwssd at about 2.5 cycles; only a Zen 4 can tell)
# (told apart from the Winograd loop, which also holds 24 vpdpwssd, by its 6
# weight broadcasts against Winograd's 12)
report "avx512 int16 dense (vpdpwssd, 6 channels x 64 positions x 2 taps)" "$tmp/avx512.s" "vpdpwssd" 768 "^$" 24 24 "vpbroadcastd" 6
report "avx2   int16 dense (vpmaddwd, 6 channels x 16 positions x 2 taps)" "$tmp/avx2.s" "vpmaddwd" 192 "^$" 12 12
# Winograd F(2x2, 3x3) products (qe_wino.h): 12 tiles x 32 channels x 2 input
# channels per iteration (24 vpdpwssd), 2.25 direct multiply-adds each
report "avx512 Winograd (vpdpwssd, 12 tiles x 32 channels x 2)" "$tmp/avx512.s" "vpdpwssd" 768 "^$" 24 24 "vpbroadcastd" 12
# (the AVX2 Winograd loop holds 12 vpmaddwd like the int16 one: not told apart here)
# fast mode's float pointwise convolution (qe_pw.h): 8 channels x 3 vectors of
# 16 positions per input channel (24 zmm FMAs, 8 weight broadcasts); AVX2 4 x 3
# of 8 (12 ymm FMAs, 4 broadcasts)
report "avx512 pointwise float (vfmadd zmm, 8 channels x 48 positions)" "$tmp/avx512.s" "vfmadd...ps\t.*%zmm" 384 "^$" 24 24 "vbroadcastss" 8
report "avx2   pointwise float (vfmadd ymm, 4 channels x 24 positions)" "$tmp/avx2.s" "vfmadd...ps\t.*%ymm" 96 "^$" 12 12 "vbroadcastss" 4
