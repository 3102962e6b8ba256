#!/usr/bin/env python3
"""authgate side-by-side benchmark driver (run through bench/run.sh, which installs and builds).

Every target forwards to the same nginx upstream. The target under test and the upstream share
CPU 0; the load generator (wrk) has CPU 1 to itself, so the load generator is never the limit
and every proxy gets the same core and the same competition. Besides req/s, each timed run
reports the CPU time the target's processes used per request (utime + stime from /proc, over
the target's process tree). Each target is checked for correct answers before it is timed:
a 401 or 502 storm is not a result.
"""
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
RUN = os.environ["BENCH_RUN"]
SECRET = os.environ["BENCH_SECRET"]
AUTHGATE = os.path.join(ROOT, "target", "release", "authgate")
HYPER_MINIMAL = os.path.join(BENCH, "hyper-minimal", "target", "release", "hyper-minimal")
DURATION = int(os.environ.get("BENCH_DURATION", "10"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "3"))
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
FLOOD = int(os.environ.get("BENCH_FLOOD", "1000000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
# Only these targets when set (comma-separated names), for a quick look at one change.
ONLY = [t for t in os.environ.get("BENCH_ONLY", "").split(",") if t]
# A directory: each timed run is also recorded with `perf record -g` (the target's processes
# only) into PERF/<target>-<round>.data, for `perf report`. Costs some CPU; not for results.
PERF = os.environ.get("BENCH_PERF")
# Another authgate binary (an older build): adds the row `baseline-hs256`, `authgate-hs256`'s
# run with that binary, in the same rounds: an A/B of a change within one run.
BASELINE = os.environ.get("BENCH_BASELINE")
CURRENT = {"name": "", "round": 0}
TARGET_CPU = "0"
LOAD_CPU = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
REDIS_PORT = 16379
PASSWORD = "bench-password"  # test-only user of the refresh runs
TLS_CA = os.path.join(RUN, "tls.crt")  # self-signed, for 127.0.0.1, made by run.sh

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


def stop(p, sig=signal.SIGTERM):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def request(url, token=None, method="GET", body=None, headers=None, timeout=2):
    req = urllib.request.Request(url, method=method, data=body)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    context = ssl.create_default_context(cafile=TLS_CA) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def wait_ready(url, token=None, status=200, body=None, headers=None):
    deadline = time.time() + 20
    while time.time() < deadline:
        s, b = request(url, token, headers=headers)
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


def cpu_seconds(roots):
    """utime + stime of the processes in `roots` and all their descendants (nginx workers)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    after_name = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(after_name[1]), int(after_name[11]) + int(after_name[12]))
    wanted, total, grew = set(roots), 0, True
    while grew:
        grew = False
        for pid, (ppid, _) in stats.items():
            if ppid in wanted and pid not in wanted:
                wanted.add(pid)
                grew = True
    for pid in wanted:
        total += stats.get(pid, (0, 0))[1]
    return total / CLK_TCK


def wrk(url, pids, token=None, script=None, env=None, headers=(), cpu=LOAD_CPU, threads=1, duration=None,
        warmup=WARMUP):
    cmd = ["wrk", "-t%d" % threads, "-c%d" % CONNS, "--latency"]
    if token:
        cmd += ["-H", "Authorization: Bearer " + token]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", os.path.join(BENCH, script)]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu] + cmd
    run_env = {**os.environ, **(env or {})}
    if warmup:
        subprocess.run(cmd + ["-d%ds" % warmup, url], capture_output=True, env=run_env, check=True)
    recorder = perf_record(pids)
    before = cpu_seconds(pids)
    out = subprocess.run(cmd + ["-d%ds" % (duration or DURATION), url], capture_output=True, text=True, env=run_env, check=True).stdout
    used = cpu_seconds(pids) - before
    if recorder:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=30)
    result = parse_wrk(out)
    result["cpu_us_per_request"] = round(used * 1e6 / max(result["requests"], 1), 2)
    return result


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


# ---------------------------------------------------------------------------------------------
# authgate configurations: bench/authgate.yaml with its {{...}} filled in.

TLS = '  tls: { cert_file: "tls.crt", key_file: "tls.key" }\n'
REFRESH = '  refresh: { ttl: 30d, idle_ttl: 7d, reuse_grace: 10s }\n'
POOL = '{ servers: ["http://127.0.0.1:18080", "http://127.0.0.1:18082"] }'
FORWARD_AUTH = 'forward_auth:\n  path: /_authgate/verify\n  trusted_proxies: ["127.0.0.1/32"]\n'


def login_section(password_hash):
    return (
        "login:\n"
        "  users:\n"
        '    - { username: alice, password_hash: "%s", claims: { roles: [admin, dev] } }\n'
        "  rate_limit:\n"
        "    per_client: { requests: 1000000, per: 1m }\n"
        "    per_username: { requests: 1000000, per: 1m }\n" % password_hash
    )


def authgate_config(name, cache=100000, extra_routes="", store="memory:", tls="", refresh="",
                    upstream='"http://127.0.0.1:18080"', extra=""):
    """Writes an authgate config into the run directory (beside rs256.pem and tls.crt)."""
    with open(os.path.join(BENCH, "authgate.yaml")) as f:
        text = f.read()
    for key, value in [("CACHE", str(cache)), ("EXTRA_ROUTES", extra_routes), ("STORE", store),
                       ("TLS", tls), ("REFRESH", refresh), ("UPSTREAM", upstream), ("EXTRA", extra)]:
        text = text.replace("{{%s}}" % key, value)
    path = os.path.join(RUN, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def start_authgate(config, threads="1", cpu=TARGET_CPU, binary=AUTHGATE):
    env = {"BENCH_SECRET": SECRET, "TOKIO_WORKER_THREADS": threads}
    p = start([binary, "--log-level", "warn", "run", "--config", config], cpu=cpu, env=env)
    deadline = time.time() + 20
    while request("http://127.0.0.1:19003/healthz")[0] != 200:
        if p.poll() is not None or time.time() > deadline:
            raise SystemExit("authgate did not start with %s: see %s" % (config, RUN))
        time.sleep(0.05)
    return p


def start_redis():
    p = start(["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no"], cpu=TARGET_CPU)
    deadline = time.time() + 10
    while True:
        try:
            redis_info()
            return p
        except OSError:
            if time.time() > deadline:
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)


def redis_info():
    """Redis INFO stats as a dict (plain RESP over a socket; no client library needed)."""
    with socket.create_connection(("127.0.0.1", REDIS_PORT), timeout=2) as s:
        s.sendall(b"INFO stats\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("redis closed the connection")
            data += chunk
        head, _, rest = data.partition(b"\r\n")
        size = int(head[1:])
        while len(rest) < size:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("redis closed the connection")
            rest += chunk
    return dict(line.split(":", 1) for line in rest[:size].decode().splitlines() if ":" in line)


def hash_password():
    out = subprocess.run([AUTHGATE, "hash-password"], input=PASSWORD + "\n", capture_output=True, text=True, check=True)
    return out.stdout.strip()


def load_tokens():
    tokens = {}
    for name in ["hs256", "rs256", "bad"]:
        with open(os.path.join(RUN, name + ".txt")) as f:
            tokens[name] = f.read().strip()
    return tokens


# ---------------------------------------------------------------------------------------------
# Targets: each starts what it measures on TARGET_CPU, checks the answers, runs wrk, stops.

APP = "http://127.0.0.1:18003/app/x"
VERIFY_HEADERS = ["X-Original-Method: GET", "X-Original-URI: /app/x", "Host: app.bench"]


def nginx_target(conf, url, tokens=None, token=None):
    p = start(["nginx", "-c", render(conf)], cpu=TARGET_CPU)
    try:
        if token:
            wait_ready(url, token=token, body="user=alice")
            wait_ready(url, token=tokens["bad"], status=401)
        else:
            wait_ready(url, body="user=")
        return wrk(url, [p.pid], token=token)
    finally:
        stop(p)


def t_direct(tokens, extra):
    return nginx_target("direct-nginx.conf", "http://127.0.0.1:18081/app/x")


def t_nginx(tokens, extra):
    return nginx_target("proxy-nginx.conf", "http://127.0.0.1:18001/app/x")


def t_nginx_tls(tokens, extra):
    return nginx_target("tls-nginx.conf", "https://127.0.0.1:18005/app/x")


def t_haproxy(tokens, extra):
    p = start(["haproxy", "-f", render("haproxy-jwt.cfg")], cpu=TARGET_CPU)
    try:
        url = "http://127.0.0.1:18002/app/x"
        wait_ready(url, token=tokens["hs256"], body="user=alice")
        wait_ready(url, token=tokens["bad"], status=401)
        return wrk(url, [p.pid], token=tokens["hs256"])
    finally:
        stop(p)


def t_hyper_minimal(tokens, extra):
    p = start([HYPER_MINIMAL, "127.0.0.1:18006", "http://127.0.0.1:18080"], cpu=TARGET_CPU,
              env={"TOKIO_WORKER_THREADS": "1"})
    try:
        url = "http://127.0.0.1:18006/app/x"
        wait_ready(url, body="user=")
        return wrk(url, [p.pid])
    finally:
        stop(p)


def perf_record(pids):
    if not PERF:
        return None
    os.makedirs(PERF, exist_ok=True)
    out = os.path.join(PERF, "%s-%d.data" % (CURRENT["name"], CURRENT["round"]))
    graph = ["--call-graph", os.environ["BENCH_PERF_CALLGRAPH"]] if os.environ.get("BENCH_PERF_CALLGRAPH") else ["-g"]
    return subprocess.Popen(["perf", "record", "-q"] + graph + ["-F", "999", "-o", out, "-p",
                             ",".join(str(p) for p in pids)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def authgate_target(config, token, url=APP, body="user=alice", measure_rss=None, extra=None,
                    ready_headers=None, binary=AUTHGATE, **wrk_args):
    p = start_authgate(config, binary=binary)
    try:
        wait_ready(url, token=token, body=body, headers=ready_headers)
        idle = rss_kib(p.pid)[0]
        result = wrk(url, [p.pid], token=token, **wrk_args)
        if measure_rss:
            rss, peak = rss_kib(p.pid)
            extra.update({measure_rss + "_idle_kib": idle, measure_rss + "_after_load_kib": rss,
                          measure_rss + "_peak_kib": peak})
        return result
    finally:
        stop(p)


def t_hs256(tokens, extra):
    return authgate_target(authgate_config("authgate.yaml"), tokens["hs256"], measure_rss="rss", extra=extra)


def t_baseline_hs256(tokens, extra):
    return authgate_target(authgate_config("authgate.yaml"), tokens["hs256"], binary=BASELINE)


def t_rs256(tokens, extra):
    return authgate_target(authgate_config("authgate.yaml"), tokens["rs256"])


def t_401(tokens, extra):
    config = authgate_config("authgate.yaml")
    p = start_authgate(config)
    try:
        wait_ready(APP, token=tokens["bad"], status=401)
        refused = wrk(APP, [p.pid], token=tokens["bad"])
        # Every answer is meant to be a 401 here: only socket errors are errors.
        refused["errors"] = refused["socket_errors"]
        return refused
    finally:
        stop(p)


def t_rs256_distinct(tokens, extra):
    # Cache-miss path: every request a token the (small) cache does not hold.
    distinct = os.path.join(RUN, "rs256-distinct.txt")
    with open(distinct) as f:
        first = f.readline().strip()
    config = authgate_config("authgate-distinct.yaml", cache=1000)
    return authgate_target(config, None, script="tokens.lua", env={"BENCH_TOKENS": distinct},
                           ready_headers={"Authorization": "Bearer " + first})


def t_routes_10k(tokens, extra):
    # 10,000 routes, the matched one last in file order.
    routes = "".join(
        "  - { name: r%d, match: { path_prefix: /svc%d }, upstream: up }\n" % (i, i) for i in range(10000)
    )
    config = authgate_config("authgate-10k.yaml", extra_routes=routes)
    p = start_authgate(config)
    try:
        wait_ready(APP, token=tokens["hs256"], body="user=alice")
        extra["rss_10k_routes_kib"] = rss_kib(p.pid)[0]
        return wrk(APP, [p.pid], token=tokens["hs256"])
    finally:
        stop(p)


def t_sqlite(tokens, extra):
    path = os.path.join(RUN, "state.db")
    for suffix in ["", "-wal", "-shm"]:
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    return authgate_target(authgate_config("authgate-sqlite.yaml", store="sqlite:state.db"), tokens["hs256"])


def t_redis(tokens, extra):
    redis = start_redis()
    try:
        config = authgate_config("authgate-redis.yaml", store="redis://127.0.0.1:%d/0" % REDIS_PORT)
        p = start_authgate(config)
        try:
            wait_ready(APP, token=tokens["hs256"], body="user=alice")
            before = int(redis_info()["total_commands_processed"])
            result = wrk(APP, [p.pid, redis.pid], token=tokens["hs256"])
            # Minus the two INFO commands of this measurement.
            commands = int(redis_info()["total_commands_processed"]) - before - 1
            result["redis_commands"] = commands
            result["redis_commands_per_request"] = commands / max(result["requests"], 1)
            return result
        finally:
            stop(p)
    finally:
        stop(redis)


def t_pool2(tokens, extra):
    config = authgate_config("authgate-pool.yaml", upstream=POOL)
    return authgate_target(config, tokens["hs256"])


def t_tls(tokens, extra):
    config = authgate_config("authgate-tls.yaml", tls=TLS)
    return authgate_target(config, tokens["hs256"], url="https://127.0.0.1:18003/app/x")


def t_verify(tokens, extra):
    # The forward-auth verify endpoint alone, asked as nginx asks it (no upstream behind it).
    config = authgate_config("authgate-fa.yaml", extra=FORWARD_AUTH)
    url = "http://127.0.0.1:18003/_authgate/verify"
    return authgate_target(config, tokens["hs256"], url=url, body=None, headers=VERIFY_HEADERS,
                           ready_headers=dict(h.split(": ", 1) for h in VERIFY_HEADERS))


def t_nginx_auth_request(tokens, extra):
    # nginx auth_request -> authgate's verify endpoint, then nginx proxies to the upstream:
    # both processes share the target core, and both count in CPU per request.
    config = authgate_config("authgate-fa.yaml", extra=FORWARD_AUTH)
    gate = start_authgate(config)
    edge = start(["nginx", "-c", render("forward-nginx.conf")], cpu=TARGET_CPU)
    try:
        url = "http://127.0.0.1:18004/app/x"
        wait_ready(url, token=tokens["hs256"], body="user=alice")
        wait_ready(url, token=tokens["bad"], status=401)
        return wrk(url, [edge.pid, gate.pid], token=tokens["hs256"])
    finally:
        stop(edge)
        stop(gate)


TARGETS = [
    ("direct", t_direct),
    ("nginx", t_nginx),
    ("haproxy-jwt", t_haproxy),
    ("hyper-minimal", t_hyper_minimal),
    ("authgate-hs256", t_hs256),
    ("authgate-rs256", t_rs256),
    ("authgate-401", t_401),
    ("authgate-rs256-distinct", t_rs256_distinct),
    ("authgate-routes-10k", t_routes_10k),
    ("authgate-sqlite", t_sqlite),
    ("authgate-redis", t_redis),
    ("authgate-pool2", t_pool2),
    ("nginx-tls", t_nginx_tls),
    ("authgate-tls", t_tls),
    ("nginx-auth_request", t_nginx_auth_request),
    ("authgate-verify", t_verify),
]
if BASELINE:
    TARGETS.insert(TARGETS.index(("authgate-hs256", t_hs256)) + 1, ("baseline-hs256", t_baseline_hs256))


# ---------------------------------------------------------------------------------------------
# Measured once: start-up, scaling, memory flood, refresh throughput, handshakes, failover.

def more(tokens, extra):
    config = authgate_config("authgate.yaml")
    # Start-up time: spawn to a 200 from /healthz, best of 5.
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        p = start_authgate(config, cpu=None)
        times.append((time.perf_counter() - t0) * 1000)
        stop(p)
    extra["startup_ms_best_of_5"] = round(min(times), 1)

    # Scaling: 1 and 2 worker threads, nothing pinned (wrk with 2 threads shares the cores).
    scaling = {}
    for threads in ["1", "2"]:
        p = start_authgate(config, threads=threads, cpu=None)
        wait_ready(APP, token=tokens["hs256"], body="user=alice")
        scaling[threads] = wrk(APP, [p.pid], token=tokens["hs256"], cpu=None, threads=2)["rps"]
        stop(p)
    extra["scaling_rps_by_worker_threads_unpinned"] = scaling

    if not ONLY or "flood" in ONLY:
        extra["flood"] = flood()
    if not ONLY or "refresh" in ONLY:
        extra["refresh"] = {store: refresh_run(store) for store in ["memory", "sqlite", "redis"]}
    if not ONLY or "handshakes" in ONLY:
        extra["tls_handshakes"] = handshakes(tokens)
    if not ONLY or "failover" in ONLY:
        extra["redis_failover"] = failover(tokens)


def flood():
    """RSS under a flood of distinct valid tokens, against the cache bound: after the first 20%
    (the cache is full by then) and after all of them it must be about the same."""
    p = start_authgate(authgate_config("authgate-flood.yaml", cache=100000), threads="2", cpu=None)
    try:
        before, _ = rss_kib(p.pid)
        t0 = time.time()
        checkpoints = []
        sent = 0
        for share in [FLOOD // 5, FLOOD - FLOOD // 5]:
            out = subprocess.run(
                ["node", os.path.join(BENCH, "flood.js"), APP, SECRET, str(share), "64", str(sent)],
                capture_output=True, text=True, check=True,
            )
            sent += share
            failed = json.loads(out.stdout)["failed"]
            checkpoints.append({"tokens_sent": sent, "failed": failed, "rss_kib": rss_kib(p.pid)[0]})
        _, peak = rss_kib(p.pid)
        return {"distinct_tokens": FLOOD, "cache_max_entries": 100000, "seconds": round(time.time() - t0, 1),
                "rss_before_kib": before, "checkpoints": checkpoints, "rss_peak_kib": peak}
    finally:
        stop(p)


def login(n):
    """n JSON logins of alice: their refresh tokens."""
    body = json.dumps({"username": "alice", "password": PASSWORD}).encode()
    out = []
    for _ in range(n):
        status, text = request("http://127.0.0.1:18003/auth/login", method="POST", body=body,
                               headers={"Content-Type": "application/json"}, timeout=10)
        if status != 200:
            raise SystemExit("bench login failed: %s %s" % (status, text))
        out.append(json.loads(text)["refresh_token"])
    return out


def refresh_run(store):
    """POST /auth/refresh throughput: every request spends a refresh token and the next request
    of the connection uses its successor (bench/refresh.lua)."""
    redis = start_redis() if store == "redis" else None
    stores = {"memory": "memory:", "sqlite": "sqlite:refresh-%d.db" % time.time_ns(),
              "redis": "redis://127.0.0.1:%d/0" % REDIS_PORT}
    config = authgate_config("authgate-refresh-%s.yaml" % store, store=stores[store], refresh=REFRESH,
                             extra=login_section(hash_password()))
    p = start_authgate(config)
    try:
        tokens = login(2 * CONNS)
        path = os.path.join(RUN, "refresh-tokens.txt")
        with open(path, "w") as f:
            f.write("\n".join(tokens) + "\n")
        pids = [p.pid] + ([redis.pid] if redis else [])
        # No warm-up: it would spend the chains the timed run needs.
        return wrk("http://127.0.0.1:18003/auth/refresh", pids, script="refresh.lua",
                   env={"BENCH_REFRESH": path}, warmup=0)
    finally:
        stop(p)
        if redis:
            stop(redis)


def handshakes(tokens):
    """New TLS connections per second: one request per connection (Connection: close)."""
    out = {}
    for name in ["nginx-tls", "authgate-tls"]:
        if name == "nginx-tls":
            p = start(["nginx", "-c", render("tls-nginx.conf")], cpu=TARGET_CPU)
            url = "https://127.0.0.1:18005/app/x"
        else:
            p = start_authgate(authgate_config("authgate-tls.yaml", tls=TLS))
            url = "https://127.0.0.1:18003/app/x"
        try:
            wait_ready(url, token=tokens["hs256"], body="user=alice" if name != "nginx-tls" else "user=")
            r = wrk(url, [p.pid], token=tokens["hs256"], headers=["Connection: close"])
            out[name] = {"connections_per_s": r["rps"], "p99_ms": r["p99_ms"], "errors": r["errors"],
                         "cpu_us_per_connection": r["cpu_us_per_request"]}
        finally:
            stop(p)
    return out


def failover(tokens):
    """Redis killed and restarted under load: valid tokens keep passing (the mirror); logins
    answer 503 while it is down; how long until a login works and /readyz is 200 again."""
    redis = start_redis()
    config = authgate_config("authgate-failover.yaml", store="redis://127.0.0.1:%d/0" % REDIS_PORT,
                             extra=login_section(hash_password()))
    p = start_authgate(config)
    events = {}
    body = json.dumps({"username": "alice", "password": PASSWORD}).encode()

    def login_status():
        return request("http://127.0.0.1:18003/auth/login", method="POST", body=body,
                       headers={"Content-Type": "application/json"}, timeout=10)[0]

    def chaos():
        nonlocal redis
        time.sleep(3)
        stop(redis, signal.SIGKILL)
        t_kill = time.perf_counter()
        statuses = []
        while time.perf_counter() - t_kill < 4:
            statuses.append(login_status())
            time.sleep(0.2)
        events["login_statuses_while_down"] = sorted(set(statuses))
        events["readyz_while_down"] = request("http://127.0.0.1:19003/readyz")[0]
        redis = start_redis()
        t_up = time.perf_counter()
        while login_status() != 200 and time.perf_counter() - t_up < 30:
            time.sleep(0.02)
        events["login_ok_after_restart_ms"] = round((time.perf_counter() - t_up) * 1000)
        while request("http://127.0.0.1:19003/readyz")[0] != 200 and time.perf_counter() - t_up < 30:
            time.sleep(0.02)
        events["ready_after_restart_ms"] = round((time.perf_counter() - t_up) * 1000)

    try:
        wait_ready(APP, token=tokens["hs256"], body="user=alice")
        thread = threading.Thread(target=chaos)
        thread.start()
        r = wrk(APP, [p.pid], token=tokens["hs256"], duration=12)
        thread.join()
        return {"requests": r["requests"], "failed_valid_token_requests": r["errors"], "rps": r["rps"],
                "p99_ms": r["p99_ms"], **events}
    finally:
        stop(p)
        stop(redis)


# ---------------------------------------------------------------------------------------------

PORTS = [18001, 18002, 18003, 18004, 18005, 18006, 18080, 18081, 18082, 19003, REDIS_PORT]


def ports_free():
    """A leftover process on one of the bench's ports would answer for the target under test."""
    for port in PORTS:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                raise SystemExit("port %d is in use: stop whatever listens there first" % port)


def main():
    ports_free()
    tokens = load_tokens()
    upstream = start(["nginx", "-c", render("upstream-nginx.conf")], cpu=TARGET_CPU)
    wait_ready("http://127.0.0.1:18080/", body="user=")
    wait_ready("http://127.0.0.1:18082/", body="user=")
    # Targets run round-robin, ROUNDS times; each reports its median round (by req/s), so a
    # burst of noise on this shared machine cannot decide a comparison alone.
    targets = [(n, f) for n, f in TARGETS if not ONLY or n in ONLY]
    rounds = []
    extra = {}
    for i in range(ROUNDS):
        CURRENT["round"] = i
        timed = {}
        for name, run in targets:
            CURRENT["name"] = name
            timed[name] = run(tokens, extra)
        rounds.append(timed)
    results = {}
    for name, _ in targets:
        runs = sorted((r[name] for r in rounds), key=lambda r: r["rps"])
        median = dict(runs[len(runs) // 2])
        median["rps_all_rounds"] = [round(r["rps"]) for r in runs]
        # In round order: rows of one round ran back to back, so a round pairs them.
        median["cpu_us_by_round"] = [r[name]["cpu_us_per_request"] for r in rounds]
        results[name] = median
    CURRENT["name"] = "extras"
    more(tokens, extra)
    stop(upstream)

    table(results, extra)
    os.makedirs(os.path.join(BENCH, "results"), exist_ok=True)
    with open(os.path.join(BENCH, "results", "latest.json"), "w") as f:
        json.dump({"targets": results, "extra": extra, "settings": settings()}, f, indent=2)


def settings():
    return {
        "duration_s": DURATION,
        "warmup_s": WARMUP,
        "connections": CONNS,
        "rounds": ROUNDS,
        "cpus": os.cpu_count(),
        "pinning": "target and upstream on CPU %s; wrk on CPU %s" % (TARGET_CPU, LOAD_CPU),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def table(results, extra):
    base = {n: results[n]["rps"] for n in ["nginx", "hyper-minimal"] if n in results}
    rows = [("target", "req/s", "p50 ms", "p99 ms", "errors", "CPU us/req", "x nginx", "x hyper-minimal")]
    for name, r in results.items():
        rows.append((
            name, "%.0f" % r["rps"], "%.3f" % r["p50_ms"], "%.3f" % r["p99_ms"], str(r["errors"]),
            "%.1f" % r["cpu_us_per_request"],
            "%.2f" % (r["rps"] / base["nginx"]) if "nginx" in base else "-",
            "%.2f" % (r["rps"] / base["hyper-minimal"]) if "hyper-minimal" in base else "-",
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
