#!/usr/bin/env python3
"""Measures bytes on the wire per replicated change between two real nodes.

Starts two `meridian` nodes on loopback with fresh certificates, measures
the UDP bytes node A sends to node B while idle (heartbeats only), then while
it applies N small field updates, and reports

    (bytes during load - idle rate x load duration) / N

against the automerge change's own encoded size (from meridian_log_bytes /
meridian_log_entries on A). Usage:

    cargo build --release -p meridian-server
    python3 scripts/wire-bytes.py [--binary target/release/meridian] [--writes 2000]
"""
import argparse, http.client, json, os, shutil, subprocess, sys, tempfile, time


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    reply = conn.getresponse()
    data = reply.read()
    conn.close()
    return reply.status, data


def udp_sent_to_peer(port):
    status = json.loads(request(port, "GET", "/v1/cluster")[1])
    return sum(m.get("udp_bytes_sent") or 0 for m in status["members"])


def metric(port, name):
    text = request(port, "GET", "/metrics")[1].decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default="target/release/meridian")
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--idle-seconds", type=float, default=4.0)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="meridian-wire-")
    procs = []
    try:
        subprocess.run([args.binary, "certs", "init", "--dir", f"{work}/certs"], check=True, capture_output=True)
        for region in ("a", "b"):
            subprocess.run([args.binary, "certs", "issue", "--dir", f"{work}/certs", "--node", region], check=True, capture_output=True)
        common = ["--certs", f"{work}/certs", "--checkpoint-interval-ms", "60000"]
        procs.append(subprocess.Popen([args.binary, "serve", "--region", "a", "--data-dir", f"{work}/a", "--listen-http", "127.0.0.1:17070",
                                       "--listen-peer", "127.0.0.1:17170", *common], stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([args.binary, "serve", "--region", "b", "--data-dir", f"{work}/b", "--listen-http", "127.0.0.1:17071",
                                       "--listen-peer", "127.0.0.1:17171", "--peer", "127.0.0.1:17170", *common], stderr=subprocess.DEVNULL))
        time.sleep(2.0)
        request(17070, "PUT", "/v1/docs/warm", b'{"x":0}', {"content-type": "application/json"})
        time.sleep(1.0)
        idle_start = udp_sent_to_peer(17070)
        time.sleep(args.idle_seconds)
        idle_rate = (udp_sent_to_peer(17070) - idle_start) / args.idle_seconds
        entries0, bytes0 = metric(17070, "meridian_log_entries"), metric(17070, "meridian_log_bytes")
        start_bytes = udp_sent_to_peer(17070)
        started = time.time()
        conn = http.client.HTTPConnection("127.0.0.1", 17070, timeout=10)
        for i in range(args.writes):
            body = json.dumps({"count": i, "name": f"user-{i % 50}"}).encode()
            conn.request("PATCH", f"/v1/docs/users/{i % 200}", body=body, headers={"content-type": "application/merge-patch+json"})
            reply = conn.getresponse()
            reply.read()
            assert reply.status in (200, 201), reply.status
        duration = time.time() - started
        time.sleep(1.0)  # let the last batch and its acknowledgements cross
        total = udp_sent_to_peer(17070) - start_bytes
        load_bytes = total - idle_rate * (duration + 1.0)
        change_size = (metric(17070, "meridian_log_bytes") - bytes0) / max(1.0, metric(17070, "meridian_log_entries") - entries0)
        per_change = load_bytes / args.writes
        print(json.dumps({
            "writes": args.writes,
            "writes_per_second": round(args.writes / duration),
            "idle_heartbeat_bytes_per_second": round(idle_rate),
            "wire_bytes_per_change": round(per_change, 1),
            "automerge_change_bytes": round(change_size, 1),
            "ratio": round(per_change / change_size, 2),
        }, indent=2))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
