#!/bin/sh
# CMake compiler launcher for kb_cuda: runs the compiler command given after LOGDIR and keeps its stderr
# (the ptxas -v resource report) in LOGDIR/<object name>.log, while still showing it in the build output.
# Usage: ptxas_log.sh LOGDIR compiler args... (the object file follows -o).
logdir=$1
shift
out=compile
prev=
for a in "$@"; do
  [ "$prev" = "-o" ] && out=$(basename "$a")
  prev=$a
done
mkdir -p "$logdir"
log="$logdir/$out.log"
"$@" 2>"$log"
rc=$?
cat "$log" >&2
exit $rc
