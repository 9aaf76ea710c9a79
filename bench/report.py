#!/usr/bin/env python3
"""Helpers of bench/run.sh (standard library only, except the chart, which needs matplotlib).

    report.py tokens BASE USERS COUNT PASSWORD OUT   sign COUNT loaded accounts in, tokens to OUT
    report.py summary RESULTS_DIR OUT_JSON           gather a run's results, print the table
    report.py chart RESULTS_JSON OUT_PNG             draw the chart of docs/performance.md
    report.py cpu BEFORE AFTER                       shares of the machine from two cpu_samples
    report.py median RESULTS_DIR NAME                NAME.json from the median of NAME-rN.json
"""
import concurrent.futures
import glob
import json
import os
import platform
import sys
import time
import urllib.request


def sign_in(base, n, password):
    body = json.dumps({"email": f"user{n}@bench.example", "password": password}).encode()
    request = urllib.request.Request(
        f"{base}/api/v1/auth/login", data=body, headers={"content-type": "application/json"}
    )
    for attempt in range(20):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)["access_token"]
        except urllib.error.HTTPError as e:
            if e.code != 503:  # only a shed sign-in is retried
                raise
            time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"user{n} could not sign in")


def tokens(base, users, count, password, out):
    users, count = int(users), int(count)
    picked = [i * users // count for i in range(count)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda n: sign_in(base, n, password), picked))
    with open(out, "w") as f:
        f.write("\n".join(found) + "\n")
    print(f"{len(found)} users signed in for their tokens")


def cpu(before, after):
    """Shares of the whole machine (1.0 = every core) used between two samples of run.sh's
    cpu_sample: the measured process, MariaDB, Redis, and everything else (the load
    generator, mostly); idle is what was left."""
    b, a = before.split(), after.split()
    total = int(a[0]) - int(b[0])
    if total <= 0:
        print("{}")
        return
    shares = {"idle": (int(a[1]) - int(b[1])) / total}
    for name, x, y in zip(("service", "mariadb", "redis"), b[2:], a[2:]):
        shares[name] = max(0, int(y) - int(x)) / total
    shares["other"] = max(0.0, 1 - sum(shares.values()))
    print(json.dumps({k: round(v, 3) for k, v in shares.items()}))


def median(results, name):
    """Writes NAME.json (and NAME-cpu.json) from the round NAME-rN of median requests/s, with
    every round's requests/s under "rounds"."""
    rounds = []
    for path in glob.glob(os.path.join(results, f"{name}-r*.json")):
        stem = os.path.basename(path)[:-5]
        if stem.endswith("-cpu"):
            continue
        with open(path) as f:
            rounds.append((json.load(f), stem))
    rounds.sort(key=lambda r: r[0]["rps"])
    picked, stem = rounds[len(rounds) // 2]
    picked["rounds"] = [r["rps"] for r, _ in rounds]
    with open(os.path.join(results, f"{name}.json"), "w") as f:
        json.dump(picked, f)
    cpu_path = os.path.join(results, f"{stem}-cpu.json")
    if os.path.exists(cpu_path):
        with open(cpu_path) as src, open(os.path.join(results, f"{name}-cpu.json"), "w") as dst:
            dst.write(src.read())


def rss_series(path):
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                out.append((float(parts[0]), int(parts[1])))
    return out


def summary(results, out):
    data = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
            "runs": {}}
    for path in sorted(glob.glob(os.path.join(results, "*.json"))):
        name = os.path.basename(path)[:-5]
        with open(path) as f:
            found = json.load(f)
        if name.endswith("-cpu"):
            data["runs"].setdefault(name[:-4], {})["cpu"] = found
        else:
            data["runs"].setdefault(name, {}).update(found)
    for path in sorted(glob.glob(os.path.join(results, "*-rss.txt"))):
        series = rss_series(path)
        if series:
            start = series[0][0]
            data["runs"][os.path.basename(path)[:-4]] = {
                "samples": [[round(t - start, 1), kib] for t, kib in series],
                "peak_kib": max(k for _, k in series),
            }
    with open(out, "w") as f:
        json.dump(data, f, indent=1)
    print_table(data)


def mib(kib):
    return f"{kib / 1024:.0f} MiB"


def adjacent_hash_limit(runs, key):
    """The mean of the hash limits measured right before and right after a measurement."""
    found = [runs[f"hash-limit-{key}-{when}"]["limit_per_s"] for when in ("before", "after")
             if f"hash-limit-{key}-{when}" in runs]
    return sum(found) / len(found) if found else None


def print_table(data):
    runs = data["runs"]
    print()
    print(f"| measurement | requests/s | p50 | p99 | max | errors | 503 | RSS after |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        if "rps" not in r:
            continue
        shed = r.get("statuses", {}).get("503", 0)
        other = r["non_2xx"] - shed + r["socket_errors"] + r["timeouts"]
        print(f"| {name} | {r['rps']:,.1f} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms "
              f"| {r['max_ms']:.1f} ms | {other} | {shed} | |")
    print("\nshare of the machine (2 cores = 100 %) per measurement:")
    print("| measurement | service | MariaDB | Redis | other (wrk) | idle |")
    print("|---|---|---|---|---|---|")
    for name, r in runs.items():
        c = r.get("cpu")
        if c:
            print(f"| {name} | " + " | ".join(f"{c.get(k, 0):.0%}" for k in
                  ("service", "mariadb", "redis", "other", "idle")) + " |")
    hl = runs.get("hash_limit")
    if hl:
        print(f"\nhash limit: {hl['limit_per_s']:.1f} verifications/s "
              f"({hl['ms_per_verification']:.1f} ms each on {hl['threads']} threads)")
    for b in ("mariadb", "embedded"):
        if f"{b}-rss-idle" not in runs:
            continue
        line = f"{b}: RSS idle {mib(runs[f'{b}-rss-idle']['rss_kib'])}"
        if f"{b}-signin-rss" in runs:
            line += f", peak during sign-in {mib(runs[f'{b}-signin-rss']['peak_kib'])}"
        if f"{b}-rss-after-signin" in runs:
            line += f", 20 s after {mib(runs[f'{b}-rss-after-signin']['rss_kib'])}"
        if f"{b}-soak-rss" in runs:
            line += f", soak peak {mib(runs[f'{b}-soak-rss']['peak_kib'])}"
        print(line)
    print("\nratios:")
    def ratio(label, a, b):
        if a in runs and b in runs and "rps" in runs[a] and "rps" in runs[b]:
            print(f"  {label}: {runs[a]['rps'] / runs[b]['rps']:.1%}")
    ratio("read / ceiling (median rounds)", "mariadb-read", "ceiling-read")
    for r in ("mariadb-read", "ceiling-read"):
        if "rounds" in runs.get(r, {}):
            print(f"  {r} rounds: " + ", ".join(f"{x:,.0f}" for x in runs[r]["rounds"]))
    for b in ("mariadb", "embedded"):
        for what in ("signin", "register", "big-signin"):
            key = f"{b}-{what}"
            limit = adjacent_hash_limit(runs, key)
            if key in runs and limit:
                print(f"  {key} / hash limit right around it ({limit:.1f}/s): "
                      f"{runs[key]['rps'] / limit:.1%}")
    for b in ("mariadb", "embedded"):
        a = runs.get(f"{b}-read")
        for kind in ("storm", "flood"):
            s = runs.get(f"{b}-read-in-{kind}")
            if a and s:
                print(f"  {b} read p99 in {kind} / alone: {s['p99_ms'] / a['p99_ms']:.2f}x")
        big = runs.get(f"{b}-big-read")
        if a and big:
            print(f"  {b} read with BIG / USERS: {big['rps'] / a['rps']:.1%}")
        si, bsi = runs.get(f"{b}-signin"), runs.get(f"{b}-big-signin")
        if si and bsi:
            print(f"  {b} sign-in with BIG / USERS: {bsi['rps'] / si['rps']:.1%}")


def chart(results, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(results) as f:
        data = json.load(f)
    runs = data["runs"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    reads = [(label, runs[key]["rps"]) for key, label in [
        ("ceiling-read", "ceiling"), ("mariadb-read", "MariaDB\n+Redis"),
        ("mariadb-read-in-storm", "MariaDB\n+Redis,\nstorm"),
        ("mariadb-read-in-flood", "MariaDB\n+Redis,\nflood"),
        ("embedded-read", "embedded"), ("embedded-read-in-storm", "embedded,\nstorm"),
        ("embedded-read-in-flood", "embedded,\nflood")] if key in runs]
    left.bar([r[0] for r in reads], [r[1] for r in reads], color="#4878a8")
    left.set_title("GET /api/v1/users/current (requests/s, 64 connections)")
    for i, (_, v) in enumerate(reads):
        left.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    left.tick_params(axis="x", labelsize=7)
    for key, label, style in [("mariadb-signin-rss", "sign-in, MariaDB+Redis", "-"),
                              ("embedded-signin-rss", "sign-in, embedded (sessions in process)", "-"),
                              ("mariadb-soak-rss", "soak, MariaDB+Redis", "-"),
                              ("mariadb-soak-before-upkeep-rss", "soak, before the metrics upkeep", "--")]:
        if key in runs:
            s = runs[key]["samples"]
            right.plot([t for t, _ in s], [k / 1024 for _, k in s], style, label=label)
    right.set_title("server resident memory (MiB)")
    right.set_xlabel("seconds")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    fig.suptitle(f"dt-users load benchmark, {data['date']}, {data['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"chart: {out}")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"tokens": tokens, "summary": summary, "chart": chart, "cpu": cpu,
     "median": median}[command](*args)
