#!/usr/bin/env python3
"""authgate side-by-side benchmark driver (run through bench/run.sh, which installs and builds).

Every target forwards to the same nginx upstream. The target under test is pinned to CPU 0;
the load generator (wrk) and the upstream share CPU 1, so each proxy gets exactly one core
and the same competition. Each target is checked for correct answers before it is timed:
a 401 or 502 storm is not a result.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
RUN = os.environ["BENCH_RUN"]
SECRET = os.environ["BENCH_SECRET"]
AUTHGATE = os.path.join(ROOT, "target", "release", "authgate")
DURATION = int(os.environ.get("BENCH_DURATION", "10"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "3"))
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
FLOOD = int(os.environ.get("BENCH_FLOOD", "1000000"))
PROXY_CPU = "0"
LOAD_CPU = "1"

procs = []


def render(name):
    with open(os.path.join(BENCH, name)) as f:
        text = f.read().replace("{{RUN}}", RUN).replace("{{SECRET}}", SECRET)
    out = os.path.join(RUN, name)
    with open(out, "w") as f:
        f.write(text)
    return out


def start(cmd, cpu=None, env=None):
    if cpu is not None:
        cmd = ["taskset", "-c", cpu] + cmd
    log = open(os.path.join(RUN, "proc-%d.log" % len(procs)), "w")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    procs.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def get(url, token=None, timeout=2):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def wait_ready(url, token=None, status=200, body=None):
    deadline = time.time() + 20
    while time.time() < deadline:
        s, b = get(url, token)
        if s == status and (body is None or b.strip() == body):
            return
        time.sleep(0.05)
    raise SystemExit("target at %s never answered %s %r (last: %s %r)" % (url, status, body, s, b))


def rss_kib(pid):
    fields = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def wrk(url, token=None, script=None, env=None, cpu=LOAD_CPU, threads=1):
    cmd = ["wrk", "-t%d" % threads, "-c%d" % CONNS, "--latency"]
    if token:
        cmd += ["-H", "Authorization: Bearer " + token]
    if script:
        cmd += ["-s", script]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu] + cmd
    subprocess.run(cmd + ["-d%ds" % WARMUP, url], capture_output=True, env={**os.environ, **(env or {})}, check=True)
    out = subprocess.run(cmd + ["-d%ds" % DURATION, url], capture_output=True, text=True, env={**os.environ, **(env or {})}, check=True).stdout
    return parse_wrk(out)


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(x) for x in sock.groups()) if sock else 0
    non_2xx = int(non2xx.group(1)) if non2xx else 0
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": non_2xx + socket_errors,
            "non_2xx": non_2xx, "socket_errors": socket_errors, "requests": requests}


def authgate_config(name, cache=100000, extra_routes=""):
    """Writes an authgate config into the run directory (beside rs256.pem)."""
    with open(os.path.join(BENCH, "authgate.yaml")) as f:
        text = f.read().replace("{{CACHE}}", str(cache)).replace("{{EXTRA_ROUTES}}", extra_routes)
    path = os.path.join(RUN, name)
    with open(path, "w") as f:
        f.write(text)
    return path, {"BENCH_SECRET": SECRET}


def start_authgate(config, env, threads="1", cpu=PROXY_CPU):
    p = start([AUTHGATE, "--log-level", "warn", "run", "--config", config], cpu=cpu, env={**env, "TOKIO_WORKER_THREADS": threads})
    wait_ready("http://127.0.0.1:19003/healthz")
    return p


ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def load_tokens():
    tokens = {}
    for name in ["hs256", "rs256", "bad"]:
        with open(os.path.join(RUN, name + ".txt")) as f:
            tokens[name] = f.read().strip()
    return tokens


def main():
    tokens = load_tokens()
    upstream = start(["nginx", "-c", render("upstream-nginx.conf")], cpu=LOAD_CPU)
    wait_ready("http://127.0.0.1:18080/", body="user=")
    # Targets run round-robin, ROUNDS times; each reports its median round (by req/s), so a
    # burst of noise on this shared machine cannot decide a comparison alone.
    rounds = []
    extra = {}
    for _ in range(ROUNDS):
        rounds.append(one_round(tokens, extra))
    results = {}
    for name in rounds[0]:
        runs = sorted((r[name] for r in rounds), key=lambda r: r["rps"])
        median = dict(runs[len(runs) // 2])
        median["rps_all_rounds"] = [round(r["rps"]) for r in runs]
        results[name] = median
    more(tokens, extra)
    stop(upstream)

    table(results, extra)
    os.makedirs(os.path.join(BENCH, "results"), exist_ok=True)
    with open(os.path.join(BENCH, "results", "latest.json"), "w") as f:
        json.dump({"targets": results, "extra": extra, "settings": settings()}, f, indent=2)


def one_round(tokens, extra):
    distinct = os.path.join(RUN, "rs256-distinct.txt")
    results = {}

    # direct: the upstream itself on the measured core.
    p = start(["nginx", "-c", render("direct-nginx.conf")], cpu=PROXY_CPU)
    wait_ready("http://127.0.0.1:18081/app/x", body="user=")
    results["direct"] = wrk("http://127.0.0.1:18081/app/x")
    stop(p)

    p = start(["nginx", "-c", render("proxy-nginx.conf")], cpu=PROXY_CPU)
    wait_ready("http://127.0.0.1:18001/app/x", body="user=")
    results["nginx"] = wrk("http://127.0.0.1:18001/app/x")
    stop(p)

    p = start(["haproxy", "-f", render("haproxy-jwt.cfg")], cpu=PROXY_CPU)
    wait_ready("http://127.0.0.1:18002/app/x", token=tokens["hs256"], body="user=alice")
    wait_ready("http://127.0.0.1:18002/app/x", token=tokens["bad"], status=401)
    results["haproxy-jwt"] = wrk("http://127.0.0.1:18002/app/x", token=tokens["hs256"])
    stop(p)

    config, env = authgate_config("authgate.yaml")
    p = start_authgate(config, env)
    url = "http://127.0.0.1:18003/app/x"
    wait_ready(url, token=tokens["hs256"], body="user=alice")
    idle_rss, _ = rss_kib(p.pid)
    results["authgate-hs256"] = wrk(url, token=tokens["hs256"])
    rss, hwm = rss_kib(p.pid)
    extra["rss_idle_kib"] = idle_rss
    extra["rss_after_64_conn_load_kib"] = rss
    extra["rss_peak_kib"] = hwm
    wait_ready(url, token=tokens["rs256"], body="user=alice")
    results["authgate-rs256"] = wrk(url, token=tokens["rs256"])
    wait_ready(url, token=tokens["bad"], status=401)
    refused = wrk(url, token=tokens["bad"])
    # Every answer is meant to be a 401 here: only socket errors are errors.
    refused["errors"] = refused["socket_errors"]
    results["authgate-401"] = refused
    stop(p)

    # Cache-miss path: every request a token the (small) cache does not hold.
    config, env = authgate_config("authgate-distinct.yaml", cache=1000)
    p = start_authgate(config, env)
    with open(distinct) as f:
        first = f.readline().strip()
    wait_ready(url, token=first, body="user=alice")
    results["authgate-rs256-distinct"] = wrk(url, script=os.path.join(BENCH, "tokens.lua"), env={"BENCH_TOKENS": distinct})
    stop(p)

    # 10,000 routes, the matched one last in file order.
    routes = "".join(
        "  - { name: r%d, match: { path_prefix: /svc%d }, upstream: up }\n" % (i, i) for i in range(10000)
    )
    config, env = authgate_config("authgate-10k.yaml", extra_routes=routes)
    p = start_authgate(config, env)
    wait_ready(url, token=tokens["hs256"], body="user=alice")
    results["authgate-routes-10k"] = wrk(url, token=tokens["hs256"])
    extra["rss_10k_routes_kib"] = rss_kib(p.pid)[0]
    stop(p)
    return results


def more(tokens, extra):
    """Start-up, scaling and the memory flood: measured once."""
    url = "http://127.0.0.1:18003/app/x"

    # Start-up time: spawn to a 200 from /healthz, best of 5.
    config, env = authgate_config("authgate.yaml")
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        p = start([AUTHGATE, "--log-level", "warn", "run", "--config", config], env=env)
        wait_ready("http://127.0.0.1:19003/healthz")
        times.append((time.perf_counter() - t0) * 1000)
        stop(p)
    extra["startup_ms_best_of_5"] = round(min(times), 1)

    # Scaling: 1 and 2 worker threads, nothing pinned (wrk with 2 threads shares the cores).
    scaling = {}
    for threads in ["1", "2"]:
        p = start_authgate(config, env, threads=threads, cpu=None)
        wait_ready(url, token=tokens["hs256"], body="user=alice")
        scaling[threads] = wrk(url, token=tokens["hs256"], cpu=None, threads=2)["rps"]
        stop(p)
    extra["scaling_rps_by_worker_threads_unpinned"] = scaling

    # Memory under a flood of distinct valid tokens, against the cache bound: RSS after the
    # first 20% (the cache is full by then) and after all of them must be about the same.
    config, env = authgate_config("authgate-flood.yaml", cache=100000)
    p = start_authgate(config, env, threads="2", cpu=None)
    before, _ = rss_kib(p.pid)
    t0 = time.time()
    checkpoints = []
    sent = 0
    for share in [FLOOD // 5, FLOOD - FLOOD // 5]:
        out = subprocess.run(
            ["node", os.path.join(BENCH, "flood.js"), url, SECRET, str(share), "64", str(sent)],
            capture_output=True, text=True, check=True,
        )
        sent += share
        failed = json.loads(out.stdout)["failed"]
        checkpoints.append({"tokens_sent": sent, "failed": failed, "rss_kib": rss_kib(p.pid)[0]})
    _, peak = rss_kib(p.pid)
    extra["flood"] = {
        "distinct_tokens": FLOOD,
        "cache_max_entries": 100000,
        "seconds": round(time.time() - t0, 1),
        "rss_before_kib": before,
        "checkpoints": checkpoints,
        "rss_peak_kib": peak,
    }
    stop(p)


def settings():
    return {
        "duration_s": DURATION,
        "warmup_s": WARMUP,
        "connections": CONNS,
        "rounds": ROUNDS,
        "cpus": os.cpu_count(),
        "pinning": "target on CPU %s; wrk and the upstream on CPU %s" % (PROXY_CPU, LOAD_CPU),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def table(results, extra):
    direct, nginx = results["direct"]["rps"], results["nginx"]["rps"]
    rows = [("target", "req/s", "p50 ms", "p99 ms", "errors", "x direct", "x nginx")]
    for name, r in results.items():
        rows.append((
            name, "%.0f" % r["rps"], "%.3f" % r["p50_ms"], "%.3f" % r["p99_ms"], str(r["errors"]),
            "%.2f" % (r["rps"] / direct), "%.2f" % (r["rps"] / nginx),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print()
    print(json.dumps(extra, indent=2))


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in procs:
            stop(p)
