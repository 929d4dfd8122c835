#!/usr/bin/env python3
"""Glint beside llama.cpp, in one run on one machine, so that machine noise cancels.

What it does (everything cached under $GLINT_CACHE, default target/glint-cache):
1. fetches the default model (SmolLM2-135M-Instruct.Q4_1.gguf) with `glint-quantize fetch`;
2. builds llama.cpp's `llama-bench` and `llama-quantize` from the source that
   llama-cpp-python vendors (PyPI sdist, pinned and SHA-256 checked; needs a C++
   compiler, and cmake + ninja, which it pip-installs when missing);
3. requantizes the Q4_1 source to Q4_0 with llama.cpp's own quantizer
   (`--allow-requantize`: llama.cpp's fastest 4-bit CPU path, repacked for AVX-512);
4. imports both GGUFs into Glint, block for block: Q4_1 -> q4g32a, Q4_0 -> q4g32
   (the same weights, bit for bit);
5. runs rounds; each round runs llama-bench and `glint bench` on both models for every
   thread count, back to back, alternating which goes first.

It prints a table: per test the median over rounds of each engine's median tok/s, and the
median of the per-round ratios Glint / llama.cpp (same round): same weights (Q4_0 against
q4g32, Q4_1 against q4g32a), and Glint's default q4g32a against llama.cpp's Q4_0. Raw
results go to $GLINT_CACHE/vs-llamacpp.jsonl.

    python3 benches/vs_llamacpp.py                      # 5 rounds, t1 and t2, pp512 tg128
    python3 benches/vs_llamacpp.py --rounds 3 -p 0 -n 128 --threads 1

With --shapes NAME[,NAME...] it measures synthetic models instead (`glint-quantize synth`:
random weights at the real shape of smollm2-135m, smollm2-360m, qwen2.5-0.5b,
llama-3.2-1b; Q4_0 layers, Q8_0 embedding, imported into Glint as q4g32: the same bytes):
per shape pp, tg at each thread count, plus load time (process start to exit after the
first token of a 4-token prompt: `llama-simple -n 1` against `glint run -n 1`), their
peak RSS, and the weight bytes each decoded token streams. It also measures the machine's
read bandwidth in the same call (`cargo bench -p glint-runtime --bench kernels -- dram_read`:
1 and 2 threads summing 256 MiB, criterion's median) and merges a summary per shape and
thread count into a JSON file (`--json`, default $GLINT_CACHE/vs-llamacpp-shapes.json; a
later call replaces the entries it measured and keeps the others), which
`glint-quantize plot-bench` draws.

    python3 benches/vs_llamacpp.py --shapes smollm2-360m --rounds 3
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

LCP_VERSION = "0.3.36"
LCP_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
ROOT = Path(__file__).resolve().parent.parent


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    log("+ " + " ".join(str(c) for c in cmd))
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def out(cmd):
    return run(cmd, stdout=subprocess.PIPE, text=True).stdout


def sdist(cache: Path) -> Path:
    """llama-cpp-python's sdist, downloaded once and checked."""
    path = cache / f"llama_cpp_python-{LCP_VERSION}.tar.gz"
    if not path.exists():
        # Through pip, which follows the user's index and mirror configuration.
        tmp = cache / "sdist.part"
        shutil.rmtree(tmp, ignore_errors=True)
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
             "-d", tmp, f"llama-cpp-python=={LCP_VERSION}"])
        (got,) = tmp.glob("llama_cpp_python-*.tar.gz")
        got.rename(path)
        shutil.rmtree(tmp, ignore_errors=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != LCP_SHA256:
        sys.exit(f"{path}: SHA-256 {digest}, expected {LCP_SHA256}")
    return path


def llama_cpp(cache: Path) -> Path:
    """Directory holding llama-bench and llama-quantize, built once."""
    src = cache / f"llama.cpp-{LCP_VERSION}"
    bin_dir = src / "build" / "bin"
    targets = ["llama-bench", "llama-quantize", "llama-simple"]
    if all((bin_dir / t).exists() for t in targets):
        return bin_dir
    if not src.exists():
        prefix = f"llama_cpp_python-{LCP_VERSION}/vendor/llama.cpp/"
        tmp = cache / f"llama.cpp-{LCP_VERSION}.part"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(sdist(cache)) as tar:
            members = []
            for m in tar.getmembers():
                if m.name.startswith(prefix) and len(m.name) > len(prefix):
                    m.name = m.name[len(prefix):]
                    members.append(m)
            tar.extractall(tmp, members=members, filter="data")
        tmp.rename(src)
    if not (shutil.which("cmake") and shutil.which("ninja")):
        run([sys.executable, "-m", "pip", "install", "-q", "cmake", "ninja"])
    run(["cmake", "-S", src, "-B", src / "build", "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
         "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF"],
        stdout=subprocess.DEVNULL)
    run(["cmake", "--build", src / "build", "-j", str(os.cpu_count() or 2),
         "--target", *targets], stdout=subprocess.DEVNULL)
    return bin_dir


def llama_bench(bin_dir, gguf, threads, p, n, reps):
    """{"pp": tok/s, "tg": tok/s}, each the median of the repetitions."""
    res = {}
    for test, (np_, ng) in (("pp", (p, 0)), ("tg", (0, n))):
        if np_ == 0 and ng == 0:
            continue
        line = out([bin_dir / "llama-bench", "-m", gguf, "-t", threads, "-p", np_, "-n", ng,
                    "-r", reps, "-o", "jsonl"]).strip().splitlines()[-1]
        res[test] = statistics.median(json.loads(line)["samples_ts"])
    return res


def glint_bench(model, threads, p, n, reps, precision, binary=ROOT / "target/release/glint"):
    d = json.loads(out([binary, "bench", "-m", model, "-t", threads,
                        "-p", max(p, 1), "-n", n, "-r", reps, "--precision", precision,
                        "--json"]).strip().splitlines()[-1])
    res = {"tg": d["decode_tok_s"]}
    if p > 0:
        res["pp"] = d["prefill_tok_s"]
    return res


PROMPT = "The capital of France"  # 4 tokens with the default model's tokenizer


def timed(cmd):
    """(wall seconds, peak RSS bytes) of running `cmd` to its end, output discarded."""
    log("+ " + " ".join(str(c) for c in cmd))
    start = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed: {os.waitstatus_to_exitcode(status)}")
    return wall, usage.ru_maxrss * 1024


def synth_models(cache, quantize, shape):
    """(GGUF, .glint) of the synthetic model `shape`, written once."""
    d = cache / "synth"
    d.mkdir(exist_ok=True)
    gguf, glint = d / f"{shape}.Q4_0.gguf", d / f"{shape}.q4g32.glint"
    if not gguf.exists():
        run([quantize, "synth", "--shape", shape, "-o", gguf], stdout=subprocess.DEVNULL)
    if not glint.exists():
        run([quantize, "import", gguf, "-o", glint, "--scheme", "q4g32"], stdout=subprocess.DEVNULL)
    return gguf, glint


def read_bandwidth():
    """{threads: GB/s} of a plain streaming read (the `dram_read` criterion benchmark: each
    thread sums its share of 256 MiB on huge pages; criterion's median time per pass), the
    bandwidth floor decode is held to. Build the benchmark first (`cargo bench -p
    glint-runtime --bench kernels --no-run`) so that this call only runs it."""
    run(["cargo", "bench", "-q", "-p", "glint-runtime", "--bench", "kernels", "--", "dram_read"],
        cwd=ROOT, stdout=subprocess.DEVNULL)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    gb_s = {}
    for t in (1, 2):
        d = target / "criterion" / "dram_read" / "threads" / str(t) / "new"
        nbytes = json.loads((d / "benchmark.json").read_text())["throughput"]["Bytes"]
        ns = json.loads((d / "estimates.json").read_text())["median"]["point_estimate"]
        gb_s[t] = nbytes / ns
    log(f"read bandwidth: {gb_s} GB/s")
    return gb_s


def shapes_main(args, cache, current, quantize, bin_dir):
    threads = [int(t) for t in args.threads.split(",")]
    bandwidth = read_bandwidth()
    raw = open(cache / "vs-llamacpp-shapes.jsonl", "a")
    rows = []
    for shape in args.shapes.split(","):
        gguf, glint = synth_models(cache, quantize, shape)
        got = []  # per round: {"llama.cpp": {...}, "glint": {...}}
        for rnd in range(args.rounds):
            res = {"llama.cpp": {}, "glint": {}}
            engines = [
                ("llama.cpp", lambda t: llama_bench(bin_dir, gguf, t, args.p, args.n, args.r),
                 [bin_dir / "llama-simple", "-m", gguf, "-n", 1, PROMPT]),
                ("glint", lambda t: glint_bench(glint, t, args.p, args.n, args.r, args.precision, current),
                 [current, "run", "-m", glint, "-p", PROMPT, "-n", 1, "-c", 16, "--temp", 0, "-t", 2,
                  "--precision", args.precision]),
            ]
            if args.baseline:
                res["baseline"] = {}
                engines.append(
                    ("baseline", lambda t: glint_bench(glint, t, args.p, args.n, args.r, args.precision,
                                                       args.baseline),
                     [args.baseline, "run", "-m", glint, "-p", PROMPT, "-n", 1, "-c", 16, "--temp", 0,
                      "-t", 2, "--precision", args.precision]))
            if rnd % 2:
                engines.reverse()
            for name, _, load_cmd in engines:
                res[name]["load_s"], res[name]["rss"] = timed(load_cmd)
            for t in threads:
                for name, bench, _ in engines:
                    for test, v in bench(t).items():
                        res[name][f"{test}{t}"] = v
            got.append(res)
            raw.write(json.dumps({"shape": shape, "round": rnd, **res}) + "\n")
            raw.flush()
            log(f"{shape} round {rnd}: {res}")
        info = json.loads(out([current, "bench", "-m", glint, "-p", 1, "-n", 1, "-r", 1, "--json"])
                          .strip().splitlines()[-1])
        rows.append((shape, gguf.stat().st_size, info["weight_bytes_per_token"], got))
        write_summary(args, rows[-1], threads, bandwidth)  # now: a later shape may not finish

    print(f"\nSynthetic shapes, Glint ({args.precision}, q4g32) vs llama.cpp {LCP_VERSION} (Q4_0), "
          f"same GGUF bytes, {args.rounds} rounds; tok/s: median over rounds; ratio: median of "
          f"per-round Glint / llama.cpp\n")
    tests = [("pp", f"pp{args.p}")] * (args.p > 0) + [("tg", f"tg{args.n}")]
    base = " baseline tok/s | Glint / baseline |" if args.baseline else ""
    print(f"| shape | GGUF MB | test | threads | llama.cpp tok/s | Glint tok/s | Glint / llama.cpp |{base}")
    print("| --- " * (7 + 2 * bool(args.baseline)) + "|")
    for shape, size, _, got in rows:
        for test, label in tests:
            for t in threads:
                k = f"{test}{t}"
                cells = (f" {med(got, 'baseline', k):.1f} | {ratio(got, k, 'baseline'):.3f}x |"
                         if args.baseline else "")
                print(f"| {shape} | {size / 1e6:.0f} | {label} | {t} | {med(got, 'llama.cpp', k):.1f} | "
                      f"{med(got, 'glint', k):.1f} | {ratio(got, k):.2f}x |{cells}")
    print("\n| shape | load s, llama.cpp | load s, Glint | Glint / llama.cpp | peak RSS MiB, llama.cpp | "
          "peak RSS MiB, Glint | weight MB / token | decode GB/s t" + str(threads[0]) + ", llama.cpp / Glint |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for shape, size, per_token, got in rows:
        k = f"tg{threads[0]}"
        print(f"| {shape} | {med(got, 'llama.cpp', 'load_s'):.3f} | {med(got, 'glint', 'load_s'):.3f} | "
              f"{ratio(got, 'load_s'):.2f}x | {med(got, 'llama.cpp', 'rss') / 2**20:.0f} | "
              f"{med(got, 'glint', 'rss') / 2**20:.0f} | {per_token / 1e6:.1f} | "
              f"{med(got, 'llama.cpp', k) * per_token / 1e9:.1f} / {med(got, 'glint', k) * per_token / 1e9:.1f} |")


def med(got, engine, key):
    """Median over the rounds `got` of `engine`'s `key`."""
    return statistics.median(r[engine][key] for r in got)


def ratio(got, key, a="llama.cpp", b="glint"):
    """Median over the rounds `got` of the per-round ratio b / a of `key`."""
    return statistics.median(r[b][key] / r[a][key] for r in got)


def write_summary(args, row, threads, bandwidth):
    """Merges one shape's medians into the JSON summary `args.json` (per shape, per thread
    count: a later call replaces what it measured and keeps the rest)."""
    path = args.json
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary["about"] = (
        f"benches/vs_llamacpp.py --shapes: Glint vs llama.cpp {LCP_VERSION} on synthetic models (same "
        "GGUF bytes: Q4_0 -> q4g32). tok/s: median over rounds of each call's median; ratio: median "
        "of per-round Glint / llama.cpp; read_gb_s: the dram_read benchmark at that thread count, "
        "same call; weight_bytes_per_token: what each decoded token streams")
    shapes = summary.setdefault("shapes", {})
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    shape, size, per_token, got = row
    entry = shapes.setdefault(shape, {})
    entry.update({
        "gguf_bytes": size,
        "weight_bytes_per_token": per_token,
        "load_s": {e: med(got, e, "load_s") for e in ("llama.cpp", "glint")},
        "peak_rss_bytes": {e: med(got, e, "rss") for e in ("llama.cpp", "glint")},
    })
    for t in threads:
        cell = {"measured": when, "rounds": args.rounds, "repetitions": args.r,
                "precision": args.precision, "n_gen": args.n, "read_gb_s": bandwidth[t],
                "decode_tok_s": {e: med(got, e, f"tg{t}") for e in ("llama.cpp", "glint")},
                "decode_ratio": ratio(got, f"tg{t}")}
        if args.p > 0:
            cell.update({"n_prompt": args.p,
                         "prefill_tok_s": {e: med(got, e, f"pp{t}") for e in ("llama.cpp", "glint")},
                         "prefill_ratio": ratio(got, f"pp{t}")})
        entry.setdefault("threads", {})[str(t)] = cell
    path.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    log(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("-p", type=int, default=512, help="prompt tokens (0: no pp test)")
    ap.add_argument("-n", type=int, default=128, help="generated tokens")
    ap.add_argument("-r", type=int, default=3, help="repetitions per engine call")
    ap.add_argument("--precision", default="int8", help="Glint precision: int8 or exact")
    ap.add_argument("--glint", type=Path, help="the `glint` binary to measure (default: build "
                    "target/release/glint)")
    ap.add_argument("--baseline", type=Path, help="an earlier `glint` binary, run in the same rounds "
                    "(before/after comparisons of a change)")
    ap.add_argument("--shapes", help="comma-separated synthetic shapes to measure instead of the "
                    "default model (smollm2-135m, smollm2-360m, qwen2.5-0.5b, llama-3.2-1b)")
    ap.add_argument("--json", type=Path, help="with --shapes: the JSON summary to merge this call's "
                    "results into (default $GLINT_CACHE/vs-llamacpp-shapes.json)")
    args = ap.parse_args()

    cache = Path(os.environ.get("GLINT_CACHE", ROOT / "target/glint-cache"))
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["GLINT_CACHE"] = str(cache)
    args.json = args.json or cache / "vs-llamacpp-shapes.json"
    if not args.glint:
        run(["cargo", "build", "--release", "-p", "glint-runtime", "-p", "glint-quantize"], cwd=ROOT)
        if args.shapes:
            run(["cargo", "bench", "--no-run", "-p", "glint-runtime", "--bench", "kernels"], cwd=ROOT)
    current = args.glint or ROOT / "target/release/glint"
    quantize = ROOT / "target/release/glint-quantize"
    if args.shapes:
        return shapes_main(args, cache, current, quantize, llama_cpp(cache))
    # `fetch` leaves the GGUF in the cache and prints the q4g32a pack of it.
    q4_1_glint = Path(out([quantize, "fetch"]).strip().splitlines()[-1])
    q4_1 = cache / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bin_dir = llama_cpp(cache)
    q4_0 = cache / "SmolLM2-135M-Instruct.Q4_0.gguf"
    if not q4_0.exists():
        run([bin_dir / "llama-quantize", "--allow-requantize", q4_1, q4_0, "Q4_0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    q4_0_glint = cache / "SmolLM2-135M-Instruct.Q4_0.q4g32.glint"
    if not q4_0_glint.exists():
        run([quantize, "import", q4_0, "-o", q4_0_glint, "--scheme", "q4g32"], stdout=subprocess.DEVNULL)
    models = {"Q4_0": (q4_0, q4_0_glint), "Q4_1": (q4_1, q4_1_glint)}

    threads = [int(t) for t in args.threads.split(",")]
    raw = open(cache / "vs-llamacpp.jsonl", "a")
    got = {}  # (round, model, threads) -> {"llama.cpp": {test: tok/s}, "glint": {...}}
    for rnd in range(args.rounds):
        for t in threads:
            for name, (gguf, glint) in models.items():
                engines = [("llama.cpp", lambda: llama_bench(bin_dir, gguf, t, args.p, args.n, args.r)),
                           ("glint", lambda: glint_bench(glint, t, args.p, args.n, args.r, args.precision,
                                                         current))]
                if args.baseline:
                    engines.append(("baseline", lambda: glint_bench(glint, t, args.p, args.n, args.r,
                                                                    args.precision, args.baseline)))
                if rnd % 2:
                    engines.reverse()
                res = {e: f() for e, f in engines}
                got[rnd, name, t] = res
                raw.write(json.dumps({"round": rnd, "model": name, "threads": t, **res}) + "\n")
                raw.flush()
                log(f"round {rnd} {name} t{t}: {res}")

    print(f"\nGlint ({args.precision}) vs llama.cpp {LCP_VERSION} (llama-cpp-python's vendored build), "
          f"{args.rounds} rounds, tok/s: median over rounds of each call's median; ratio: median "
          f"of the per-round ratios\n")
    print("| test | threads | llama.cpp model | llama.cpp | Glint model | Glint | Glint / llama.cpp |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    # Same weights (Q4_0 = q4g32, Q4_1 = q4g32a), then Glint's default file against
    # llama.cpp's fastest path.
    pairs = (("Q4_0", "Q4_0"), ("Q4_1", "Q4_1"), ("Q4_0", "Q4_1"))
    glint_name = {"Q4_0": "q4g32 (from Q4_0)", "Q4_1": "q4g32a (from Q4_1)"}
    tests = [("pp", f"pp{args.p}")] * (args.p > 0) + [("tg", f"tg{args.n}")]
    for test, label in tests:
        for t in threads:
            for lm, gm in pairs:
                rounds = range(args.rounds)
                llama = [got[r, lm, t]["llama.cpp"][test] for r in rounds]
                ours = [got[r, gm, t]["glint"][test] for r in rounds]
                ratio = statistics.median(b / a for a, b in zip(llama, ours))
                print(f"| {label} | {t} | {lm} | {statistics.median(llama):.1f} | {glint_name[gm]} | "
                      f"{statistics.median(ours):.1f} | {ratio:.2f}x |")
    if not args.baseline:
        return
    print(f"\nThe same rounds, baseline {args.baseline}: its ratio to llama.cpp, and the current "
          f"build's to it (median of per-round ratios)\n")
    print("| test | threads | Glint model | baseline | baseline / llama.cpp | current / baseline |")
    print("| --- | --- | --- | --- | --- | --- |")
    for test, label in tests:
        for t in threads:
            for lm, gm in pairs[:2]:
                rounds = range(args.rounds)
                llama = [got[r, lm, t]["llama.cpp"][test] for r in rounds]
                base = [got[r, gm, t]["baseline"][test] for r in rounds]
                ours = [got[r, gm, t]["glint"][test] for r in rounds]
                vs_llama = statistics.median(b / a for a, b in zip(llama, base))
                vs_base = statistics.median(b / a for a, b in zip(base, ours))
                print(f"| {label} | {t} | {glint_name[gm]} | {statistics.median(base):.1f} | "
                      f"{vs_llama:.2f}x | {vs_base:.3f}x |")


if __name__ == "__main__":
    main()
