"""Latency and throughput of `fastadapt serve`'s classify API on the page's own workload.

Each request is what the page sends for a 5-way 1-shot episode: five drawn examples and one drawn query,
real Omniglot test characters drawn on the page's canvas (strokes traced from the images, the page's pen)
as PNGs with "drawn": true, so each request redraws six drawings, prepares them and runs the model. The
server is a real `fastadapt serve` process; the client times each request from sending it to reading the
whole answer, on one keep-alive connection (200 requests after 10 to warm up), then 8 clients at once.

    python benchmarks/serve_latency.py                  # an untrained Conv-4 ProtoNet (same arithmetic)
    python benchmarks/serve_latency.py RUN_DIR --data-root ~/data/omniglot --json serve.json
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from fastadapt.config.presets import load_preset
from fastadapt.runs.directory import train
from fastadapt.serve.model import omniglot_here
from fastadapt.serve.page import HeldOutCharacters, canvas_drawing, png_base64

#: Where the Omniglot archives are beside a checkout (the project's shared data), when nothing else says.
SHARED = Path("../shared/data/omniglot")


def episode_requests(omniglot_dir: str | Path, count: int, way: int = 5, seed: int = 0) -> list[bytes]:
    """``count`` request bodies, each a ``way``-way 1-shot episode of drawn test characters and one query."""
    characters, rng = HeldOutCharacters(omniglot_dir), np.random.default_rng(seed)
    bodies = []
    for _ in range(count):
        episode = characters.episode(rng, way)
        support = [{"label": f"c{i}", "image": png_base64(canvas_drawing(characters.image(name, s))), "drawn": True}
                   for i, (name, s, _) in enumerate(episode)]
        name, _, q = episode[int(rng.integers(way))]
        query = {"image": png_base64(canvas_drawing(characters.image(name, q))), "drawn": True}
        bodies.append(json.dumps({"support": support, "queries": [query], "invert": "auto"}).encode())
    return bodies


def untrained_protonet(omniglot_dir: str, folder: Path) -> Path:
    """A Conv-4 ProtoNet run with 0 training iterations: the network a trained run serves, with the same
    arithmetic per request (latency does not depend on the weights' values)."""
    cfg = load_preset("omniglot-protonet-cpu").replace(data_root=omniglot_dir, iterations=0, output_dir=str(folder))
    train(cfg, progress=False)
    return folder


class Client:
    """One keep-alive connection to the server."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def classify(self, body: bytes) -> tuple[float, dict]:
        start = time.perf_counter()
        self.connection.request("POST", "/api/classify", body=body, headers={"Content-Type": "application/json"})
        response = self.connection.getresponse()
        reply = json.loads(response.read())
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"the server answered {response.status}: {reply}")
        return elapsed, reply


def start_server(run_dir: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "fastadapt", "serve", str(run_dir), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"fastadapt serve exited: {server.stderr.read()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/api/model")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("fastadapt serve did not start within 180 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux), NaN where /proc is absent."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(port: int, bodies: list[bytes], requests: int, clients: int, server_pid: int, warmup: int = 10) -> dict:
    client = Client(port)
    for body in bodies[:warmup]:
        client.classify(body)
    latencies, server_ms = [], []
    cpu_before = cpu_seconds(server_pid)
    for i in range(requests):
        elapsed, reply = client.classify(bodies[i % len(bodies)])
        latencies.append(1000 * elapsed)
        server_ms.append(reply["milliseconds"])
    server_cpu_ms = 1000 * (cpu_seconds(server_pid) - cpu_before) / requests
    done: list[float] = []
    lock = threading.Lock()
    per_client = max(1, requests // clients)

    def load(index: int) -> None:
        own = Client(port)
        for i in range(per_client):
            elapsed, _ = own.classify(bodies[(index * per_client + i) % len(bodies)])
            with lock:
                done.append(1000 * elapsed)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {"requests": requests, "median_ms": float(np.median(latencies)),
            "p95_ms": float(np.percentile(latencies, 95)), "mean_ms": float(np.mean(latencies)),
            "server_median_ms": float(np.median(server_ms)),
            "server_cpu_ms_per_request": server_cpu_ms,
            "clients": clients, "concurrent_requests": len(done), "throughput_per_s": len(done) / wall,
            "concurrent_median_ms": float(np.median(done)), "concurrent_p95_ms": float(np.percentile(done, 95))}


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", help="the run to serve (default: an untrained Conv-4 ProtoNet)")
    parser.add_argument("--data-root", help="Omniglot's archives (default: $FASTADAPT_DATA, the cache, or "
                                            "../shared/data/omniglot)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests, one at a time (default: 200)")
    parser.add_argument("--clients", type=int, default=8, help="clients at once for the throughput (default: 8)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    data = omniglot_here(args.data_root) or (str(SHARED) if (SHARED / "images_evaluation.zip").is_file() else None)
    if data is None:
        parser.error("no Omniglot archives found: give --data-root DIR (a folder holding images_evaluation.zip)")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(args.run_dir) if args.run_dir else untrained_protonet(data, Path(scratch) / "protonet")
        bodies = episode_requests(data, 50)
        with socket.create_server(("127.0.0.1", 0)) as probe:
            port = probe.getsockname()[1]
        server = start_server(run_dir, port)
        try:
            figures = measure(port, bodies, args.requests, args.clients, server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    figures.update(run_dir=str(args.run_dir or "untrained Conv-4 ProtoNet"), cores=len(os.sched_getaffinity(0)),
                   load_average_before=load_before, load_average_after=os.getloadavg()[0])
    print(f"fastadapt serve, POST /api/classify, 5-way 1-shot drawn Omniglot test characters (6 canvas PNGs, "
          f"{np.mean([len(b) for b in bodies]) / 1024:.0f} KiB a request); {figures['run_dir']}; "
          f"{figures['cores']} cores, load average {load_before:.1f} before, {figures['load_average_after']:.1f} after")
    print(f"  one client, {args.requests} requests: median {figures['median_ms']:.1f} ms, "
          f"p95 {figures['p95_ms']:.1f} ms "
          f"(in the server: median {figures['server_median_ms']:.1f} ms; it used "
          f"{figures['server_cpu_ms_per_request']:.1f} ms of CPU per request)")
    print(f"  {args.clients} clients at once, {figures['concurrent_requests']} requests: "
          f"{figures['throughput_per_s']:.1f} requests/s (median {figures['concurrent_median_ms']:.1f} ms, "
          f"p95 {figures['concurrent_p95_ms']:.1f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0
