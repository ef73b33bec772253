#!/usr/bin/env bash
# Instructions per client handshake and per bare transitions trigger, counted by
# callgrind: repeatable whatever else the machine is doing (wall-clock is not).
# Usage: bench/engine_instructions.sh   (needs valgrind; takes about 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
count() { valgrind --tool=callgrind --callgrind-out-file=/dev/null "$py" -c "$1" 2>&1 | grep -oP 'Collected : \K[0-9]+'; }
setup='import sys; sys.path.insert(0, "bench"); import bench_engine as b; b.handshake(); run = b.bare_trigger_factory()'
h0=$(count "$setup")
h1=$(count "$setup"$'\nfor _ in range(300): b.handshake()')
t1=$(count "$setup"$'\nfor _ in range(3000): run()')
per_handshake=$(( (h1 - h0) / 300 ))
per_trigger=$(( (t1 - h0) / 3000 ))
inputs=$("$py" -c 'import sys; sys.path.insert(0, "bench"); import bench_engine as b; print(len(b.HANDSHAKE))')
echo "| instructions per handshake | $per_handshake |"
echo "| instructions per bare transitions trigger | $per_trigger |"
echo "| per input / bare trigger (instructions) | $(python3 -c "print(f'{$per_handshake / $inputs / $per_trigger:.2f}x')") |"
