#!/usr/bin/env python3
"""`glint bench` decode on a shared CPU: alone, beside a busy loop, and two side by side.

Scenarios, each for every thread count and every binary given (alternating their order
round by round, so machine noise falls on all alike):
  quiet   one `glint bench` alone;
  busy    the same while a busy loop, pinned with `taskset` to one core (the last one
          this process may run on), competes for that core;
  pair    two identical `glint bench` processes started together; both rates are kept.
The table gives medians over rounds of tok/s (each call: the median of its repetitions),
and per scenario the ratio to `quiet` of the same binary, thread count and round.

    python3 benches/contention.py --glint target/release/glint
    python3 benches/contention.py --glint AFTER --baseline BEFORE --rounds 3 -n 64
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def bench_cmd(binary, model, threads, n, reps, precision):
    cmd = [str(binary), "bench", "-t", str(threads), "-p", "1", "-n", str(n), "-r", str(reps),
           "--precision", precision, "--json"]
    return cmd + (["-m", str(model)] if model else [])


def decode_rate(proc):
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"glint bench failed ({proc.returncode}):\n{err}")
    return json.loads(out.strip().splitlines()[-1])["decode_tok_s"]


def start(cmd):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def scenario(kind, cmd, busy_core):
    """Decode tok/s of each `glint bench` of the scenario."""
    if kind == "quiet":
        return [decode_rate(start(cmd))]
    if kind == "busy":
        loop = subprocess.Popen(["taskset", "-c", str(busy_core), "sh", "-c", "while :; do :; done"])
        try:
            return [decode_rate(start(cmd))]
        finally:
            loop.kill()
            loop.wait()
    procs = [start(cmd), start(cmd)]
    return [decode_rate(p) for p in procs]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--glint", type=Path, default=ROOT / "target/release/glint")
    ap.add_argument("--baseline", type=Path, help="an earlier `glint`, run in the same rounds")
    ap.add_argument("-m", "--model", type=Path, help="model file (default: glint's default model)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("-n", type=int, default=64, help="generated tokens per repetition")
    ap.add_argument("-r", type=int, default=2, help="repetitions per call (after a warm-up)")
    ap.add_argument("--precision", default="int8")
    args = ap.parse_args()

    busy_core = sorted(os.sched_getaffinity(0))[-1]
    binaries = {"after": args.glint}
    if args.baseline:
        binaries = {"before": args.baseline, **binaries}
    threads = [int(t) for t in args.threads.split(",")]
    kinds = ("quiet", "busy", "pair")
    got = {}  # (round, binary, threads, kind) -> [tok/s, ...]
    for rnd in range(args.rounds):
        order = list(binaries.items())
        if rnd % 2:
            order.reverse()
        for t in threads:
            for name, binary in order:
                cmd = bench_cmd(binary, args.model, t, args.n, args.r, args.precision)
                for kind in kinds:
                    got[rnd, name, t, kind] = scenario(kind, cmd, busy_core)
                    log(f"round {rnd} {name} t{t} {kind}: {got[rnd, name, t, kind]}")

    print(f"\nDecode (tg{args.n}, {args.precision}) on a shared CPU, {args.rounds} rounds: median "
          f"tok/s; in brackets the median over rounds of the ratio to `quiet` (same binary, "
          f"threads and round); busy loop on core {busy_core}; `pair`: each of two processes\n")
    print("| binary | threads | quiet | one busy core | two processes (each) |")
    print("| --- | --- | --- | --- | --- |")
    for name in binaries:
        for t in threads:
            rounds = range(args.rounds)
            quiet = [got[r, name, t, "quiet"][0] for r in rounds]
            cells = [f"{statistics.median(quiet):.1f}"]
            for kind in kinds[1:]:
                rates = [x for r in rounds for x in got[r, name, t, kind]]
                ratios = [x / got[r, name, t, "quiet"][0] for r in rounds for x in got[r, name, t, kind]]
                cells.append(f"{statistics.median(rates):.1f} ({statistics.median(ratios):.2f})")
            print(f"| {name} | {t} | " + " | ".join(cells) + " |")
    print("\nSame round: `-t 2` over `-t 1` decode with the busy loop (median of per-round ratios)\n")
    if 1 in threads and 2 in threads:
        for name in binaries:
            r = [got[k, name, 2, "busy"][0] / got[k, name, 1, "busy"][0] for k in range(args.rounds)]
            print(f"- {name}: {statistics.median(r):.2f} (rounds: {', '.join(f'{x:.2f}' for x in r)})")


if __name__ == "__main__":
    main()
